"""The team stage cache against a real S3-compatible server (moto on 127.0.0.1): push and
pull bit for bit, a SIGKILLed push, two racing pushes, gc, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from flows.team import gc_plan, list_root
from stages.framework import read_output
from stages.framework.remote_cache import CacheError, StageCache
from tests.flows.cache_worker import publish_blob

ROOT = Path(__file__).resolve().parents[2]


def python(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


def bankflow(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """The CLI in a new process; ``env`` values of None remove the variable."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    merged = {**base, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, capture_output=True, text=True,
        env={k: v for k, v in merged.items() if v is not None}, timeout=300,
    )  # fmt: skip


@pytest.fixture
def cache_url(s3_server) -> str:
    return f"s3://{s3_server.new_bucket()}/cache"


def output_bytes(work: Path, key: str) -> int:
    """Bytes of a published blob output (its files and provenance, as its manifest says)."""
    marker = json.loads((work / "blob" / key / "COMPLETE.json").read_text())
    return sum(size for _, size, *_ in marker["manifest"])


def uploads(cache: StageCache, stage: str, key: str) -> list[str]:
    return sorted(
        p.rsplit("/", 1)[-1]
        for p in cache.fs.ls(f"{cache.root}/{stage}/{key}", detail=False, refresh=True)
        if not p.endswith("COMPLETE.json")
    )


def test_push_then_pull_is_bitwise_and_listed(tmp_path, cache_url):
    ref = publish_blob(tmp_path / "a", files=8)
    cache = StageCache(cache_url)
    cache.check()
    assert not cache.has("blob", ref.key)
    sent = cache.push(tmp_path / "a", "blob", ref.key)
    assert sent == output_bytes(tmp_path / "a", ref.key) > 8 * (64 << 10)
    assert cache.push(tmp_path / "a", "blob", ref.key) == 0  # already there
    assert cache.pull(tmp_path / "b", "blob", ref.key) == sent
    pulled = read_output(tmp_path / "b", "blob", ref.key)  # verifies the manifest
    assert pulled is not None and pulled.digest == ref.digest
    for src in sorted((tmp_path / "a" / "blob" / ref.key / "parts").rglob("*.bin")):
        rel = src.relative_to(tmp_path / "a" / "blob" / ref.key)
        assert (pulled.path / rel).read_bytes() == src.read_bytes()
    [entry] = list_root(cache_url)
    assert (entry.stage, entry.key, entry.state, entry.bytes) == ("blob", ref.key, "complete", sent)
    assert cache.pull(tmp_path / "b", "blob", ref.key) == 0  # local already


@pytest.mark.slow
def test_sigkilled_push_leaves_nothing_complete_and_a_rerun_completes(tmp_path, cache_url):
    work = tmp_path / "a"
    ref = publish_blob(work, files=300)
    cache = StageCache(cache_url)
    proc = python("-m", "tests.flows.cache_worker", str(work), cache_url, "300")
    prefix = f"{cache.root}/blob/{ref.key}"
    deadline = time.time() + 120
    while time.time() < deadline:
        found = cache.fs.find(prefix) if cache.fs.exists(prefix) else []
        if len(found) >= 30:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(found) >= 30, "the push never started uploading"
    cache.fs.invalidate_cache()
    assert not cache.has("blob", ref.key), "the push finished before it was killed"
    [orphan] = list_root(cache_url)
    assert orphan.state == "staging" and 0 < orphan.bytes < 300 * (64 << 10)
    with pytest.raises(CacheError, match="not in the cache"):
        cache.pull(tmp_path / "b", "blob", ref.key)
    assert read_output(tmp_path / "b", "blob", ref.key) is None
    # Its pusher is dead: gc may collect the orphan (and nothing else).
    [(_entry, reason)] = gc_plan([orphan], keep=None, older_than_days=None, lock_dirs=[])
    assert reason is None

    assert cache.push(work, "blob", ref.key) == output_bytes(work, ref.key)  # the re-run completes
    assert cache.pull(tmp_path / "b", "blob", ref.key) > 0
    assert read_output(tmp_path / "b", "blob", ref.key).digest == ref.digest

    dry = bankflow("gc", cache_url)
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and orphan.location.rsplit("/", 1)[-1] in dry.stdout
    assert len(uploads(cache, "blob", ref.key)) == 2  # the dry run deleted nothing
    done = bankflow("gc", cache_url, "--apply")
    assert done.returncode == 0, done.stderr
    cache.fs.invalidate_cache()
    assert uploads(cache, "blob", ref.key) == [cache.record("blob", ref.key)["upload"]]
    assert cache.pull(tmp_path / "c", "blob", ref.key) > 0


@pytest.mark.slow
def test_two_concurrent_pushes_of_one_key_leave_one_complete_copy(tmp_path, cache_url):
    work = tmp_path / "a"
    ref = publish_blob(work, files=120)
    gate = tmp_path / "go"
    procs = [
        python("-m", "tests.flows.cache_worker", str(work), cache_url, "120", str(gate))
        for _ in range(2)
    ]
    time.sleep(3.0)  # both processes imported and waiting at the gate
    gate.touch()
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    sent = sorted(int(o.split()[-1]) for o, _ in outs)
    assert sent == [0, output_bytes(work, ref.key)]
    cache = StageCache(cache_url)
    record = cache.record("blob", ref.key)
    assert uploads(cache, "blob", ref.key) == [record["upload"]]  # the loser cleaned up
    assert cache.pull(tmp_path / "b", "blob", ref.key) == output_bytes(work, ref.key)
    assert read_output(tmp_path / "b", "blob", ref.key).digest == ref.digest


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bankflow: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_bad_cache_urls_are_one_line_errors(tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    missing = f"s3://{bucket}-missing/cache"
    _one_line_error(bankflow("store", "ls", missing), missing, "bucket does not exist")
    _one_line_error(
        bankflow("pull", "extract/0123456789abcdef", "--cache", missing, "--work-root",
                 str(tmp_path / "w")),
        missing, "bucket does not exist",
    )  # fmt: skip
    with socket_port() as port:
        unreachable = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}
        _one_line_error(
            bankflow("store", "ls", f"s3://{bucket}/cache", env=unreachable),
            f"s3://{bucket}/cache", "cannot reach", "AWS_ENDPOINT_URL_S3",
        )  # fmt: skip
    anonymous = {
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip
    line = _one_line_error(
        bankflow("store", "ls", f"s3://{bucket}/cache", env=anonymous),
        f"s3://{bucket}/cache", "no credentials",
    )  # fmt: skip
    assert s3_server.env["AWS_SECRET_ACCESS_KEY"] not in line
    fs = fsspec.filesystem("s3")
    fs.pipe_file(f"{bucket}/junk/readme.txt", b"not a cache")
    _one_line_error(bankflow("store", "ls", f"s3://{bucket}/junk"), f"s3://{bucket}/junk",
                    "no bankflow stage outputs")  # fmt: skip
    fs.pipe_file(f"{bucket}/odd/extract/0123456789abcdef/COMPLETE.json", b"hello")
    _one_line_error(
        bankflow("pull", "extract/0123456789abcdef", "--cache", f"s3://{bucket}/odd",
                 "--work-root", str(tmp_path / "w")),
        f"s3://{bucket}/odd/extract/0123456789abcdef", "not a bankflow cache record",
    )  # fmt: skip
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _one_line_error(bankflow("store", "ls", str(a_file)), str(a_file))


class socket_port:
    """A port nothing listens on (bound, never accepting, for the duration)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_gc_spares_locked_young_and_kept_outputs(tmp_path, cache_url):
    from flows.locks import ExpiringLockManager

    work = tmp_path / "a"
    kept, stray = publish_blob(work, files=2), publish_blob(work, files=2, seed=1)
    cache = StageCache(cache_url)
    for ref in (kept, stray):
        cache.push(work, "blob", ref.key)
    for root in (str(work), cache_url):
        entries = [e for e in list_root(root) if e.state == "complete"]
        assert {e.key for e in entries} == {kept.key, stray.key}
        keep = {("blob", kept.key)}
        plan = {e.key: reason for e, reason in gc_plan(entries, keep=keep, older_than_days=None,
                                                        lock_dirs=[])}  # fmt: skip
        assert plan == {stray.key: None}  # the kept one is not even considered
        young = gc_plan(entries, keep=keep, older_than_days=1.0, lock_dirs=[])
        assert [reason for _, reason in young] == ["younger than 1 days"]
        # A running stage holds the key's lock: never touched.
        locks = ExpiringLockManager(tmp_path / "locks")
        assert locks.acquire_lock(f"blob-{stray.key}", "runner", acquire_timeout=0)
        try:
            [(_, reason)] = gc_plan(entries, keep=keep, older_than_days=None,
                                    lock_dirs=[str(tmp_path / "locks")])  # fmt: skip
            assert reason is not None and reason.startswith("locked by runner")
        finally:
            locks.release_lock(f"blob-{stray.key}", "runner")


@pytest.mark.slow
def test_push_and_pull_commands_move_given_keys(tmp_path, cache_url):
    ref = publish_blob(tmp_path / "a", files=4)
    pushed = bankflow("push", f"blob/{ref.key}", "--cache", cache_url,
                      "--work-root", str(tmp_path / "a"))  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert f"blob        {ref.key}  pushed" in pushed.stdout and "MB/s" in pushed.stdout
    pulled = bankflow("pull", f"blob/{ref.key}", "--work-root", str(tmp_path / "b"),
                      env={"BANKFLOW_CACHE": cache_url})  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert f"blob        {ref.key}  pulled" in pulled.stdout
    assert read_output(tmp_path / "b", "blob", ref.key).digest == ref.digest
    bad = bankflow("pull", "no-slash", "--cache", cache_url, "--work-root", str(tmp_path / "b"))
    _one_line_error(bad, "no-slash", "STAGE/KEY")
