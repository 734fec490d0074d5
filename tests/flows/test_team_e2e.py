"""Two teammates share one stage cache on a real S3-compatible server (moto, 127.0.0.1).

Teammate A runs the tiny pipeline (with fine-tuning) with ``--cache``. Teammate B has the
dataset at another path, a fresh work root and another extraction batch size, and the
cache in ``BANKFLOW_CACHE``: B's run computes nothing (every stage is pulled), B's forced
re-training gives A's head bit for bit. Then ``store ls``, ``pull`` with its upstream
closure, ``gc`` dry run vs ``--apply``, and no credential in anything written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from stages.framework.remote_cache import StageCache
from stages.pipeline import iter_runs
from tests.flows.cache_worker import publish_blob

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "tiny.yaml"
FINETUNE = ["finetune.epochs=1", "finetune.batch_keyframes=2", "finetune.max_keyframes=4",
            "world=null"]  # fmt: skip


def bankflow(*args: str, cwd: Path, env: dict[str, str] | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=900,
    )  # fmt: skip


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def team(tiny_world: Path, s3_server, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("team")
    cache = f"s3://{s3_server.new_bucket()}/cache"
    shutil.copytree(tiny_world, tmp / "alice" / "data" / "world")
    shutil.copytree(tiny_world, tmp / "bob" / "elsewhere" / "ava")
    a_args = ["--config", str(TINY), "--work-root", str(tmp / "alice" / "work"),
              *sets(*FINETUNE, f"dataset.root={tmp / 'alice' / 'data' / 'world'}")]  # fmt: skip
    b_args = ["--config", str(TINY), "--work-root", str(tmp / "bob" / "work"),
              *sets(*FINETUNE, f"dataset.root={tmp / 'bob' / 'elsewhere' / 'ava'}",
                    "extract.batch_size=3")]  # fmt: skip
    out = {"tmp": tmp, "cache": cache, "a_args": a_args, "b_args": b_args}
    out["a"] = bankflow("run", *a_args, "--cache", cache, cwd=tmp / "alice")
    assert out["a"].returncode == 0, out["a"].stderr[-3000:]
    out["b"] = bankflow("run", *b_args, cwd=tmp / "bob", env={"BANKFLOW_CACHE": cache})
    assert out["b"].returncode == 0, out["b"].stderr[-3000:]
    out["b_summary"] = json.loads((tmp / "bob" / "work" / "summary.json").read_text())
    out["b_train"] = bankflow("stage", "train", "--force", *b_args, cwd=tmp / "bob",
                              env={"BANKFLOW_CACHE": cache})  # fmt: skip
    assert out["b_train"].returncode == 0, out["b_train"].stderr[-3000:]
    out["b_train_summary"] = json.loads((tmp / "bob" / "work" / "summary.json").read_text())
    out["a_summary"] = json.loads((tmp / "alice" / "work" / "summary.json").read_text())
    print("\n--- teammate A\n" + out["a"].stdout + "\n--- teammate B\n" + out["b"].stdout
          + "\n--- teammate B: stage train --force\n" + out["b_train"].stdout)  # fmt: skip
    return out


@pytest.mark.slow
def test_teammate_b_computes_nothing_that_a_pushed(team):
    a = dict(iter_runs(team["a_summary"]))
    b = dict(iter_runs(team["b_summary"]))
    assert list(b) == list(a) and "finetune" in b and "extract" in b
    for name, rec in a.items():
        assert rec["source"] == "computed" and rec["bytes_pushed"] > 0, name
    for name, rec in b.items():
        assert rec["key"] == a[name]["key"], name  # other path, batch size: same keys
        assert rec["source"] == "pulled" and rec["bytes_pulled"] > 0, name
        assert rec["bytes_pulled"] == a[name]["bytes_pushed"], name
    assert team["b_summary"]["cache"]["bytes_pushed"] == 0
    assert "pulled" in team["b"].stdout
    # What B's summary names is in B's work root, never in A's.
    assert "alice" not in json.dumps(team["b_summary"])


@pytest.mark.slow
def test_teammate_b_trains_a_head_bitwise_equal_to_a(team):
    runs = dict(iter_runs(team["b_train_summary"]))
    assert runs["train:linear"]["source"] == "computed"
    for upstream in ("detect", "track", "finetune", "extract"):
        assert runs[upstream]["source"] in ("local", "remote", "skipped"), upstream
        assert runs[upstream]["source"] != "computed"
    key = runs["train:linear"]["key"]
    head_a = team["tmp"] / "alice" / "work" / "train" / key / "head.pt"
    head_b = team["tmp"] / "bob" / "work" / "train" / key / "head.pt"
    assert head_a.read_bytes() == head_b.read_bytes()


@pytest.mark.slow
def test_store_ls_pull_closure_and_gc(team):
    tmp, cache_url = team["tmp"], team["cache"]
    listed = bankflow("store", "ls", cache_url, cwd=tmp)
    assert listed.returncode == 0, listed.stderr
    extract_key = team["a_summary"]["stages"]["extract"]["key"]
    line = next(x for x in listed.stdout.splitlines() if x.startswith("extract"))
    assert extract_key in line and "complete" in line and "backbone slowfast_tiny" in line
    assert "splits train,val" in line and "videos 4" in line
    # store info on the store read in place names its stage key, extraction and dataset.
    store = f"{StageCache(cache_url).data_url('extract', extract_key)}/features/val.zarr"
    info = bankflow("store", "info", store, cwd=tmp)
    assert info.returncode == 0, info.stderr
    fingerprint = json.loads(
        (tmp / "alice" / "work" / "extract" / extract_key / "provenance.json").read_text()
    )["config"]["dataset_fingerprint"]
    assert f"stage key  extract {extract_key}" in info.stdout
    assert (
        f"fingerprint {fingerprint}" in info.stdout and '"backbone": "slowfast_tiny"' in info.stdout
    )
    # status of an empty work root: every stage a pull away.
    status = bankflow("status", *team["b_args"][:2], "--work-root", str(tmp / "dave"),
                      *team["b_args"][4:], "--cache", cache_url, cwd=tmp)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("in cache") == len(list(iter_runs(team["a_summary"])))
    # A pull of one key brings everything upstream of it.
    carol = tmp / "carol"
    pulled = bankflow("pull", f"extract/{extract_key}", "--cache", cache_url,
                      "--work-root", str(carol), cwd=tmp)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    for stage in ("detect", "track", "finetune", "extract"):
        key = team["a_summary"]["stages"][stage]["key"]
        assert (carol / stage / key / "COMPLETE.json").is_file(), stage
    assert not (carol / "train").exists()
    assert "MB/s" in pulled.stdout

    # gc of B's work root: the train output that --force replaced goes, nothing else.
    work_b = tmp / "bob" / "work"
    [replaced] = list((work_b / "train" / ".replaced").iterdir())
    dry = bankflow("gc", str(work_b), cwd=tmp)
    assert dry.returncode == 0 and "would remove" in dry.stdout and replaced.is_dir()
    done = bankflow("gc", str(work_b), "--apply", cwd=tmp)
    assert done.returncode == 0 and not replaced.exists()
    assert (
        work_b / "train" / team["a_summary"]["stages"]["train"]["key"] / "COMPLETE.json"
    ).is_file()

    # gc of the cache keeping the config: an output no kept config reaches goes.
    cache = StageCache(cache_url)
    stray = publish_blob(tmp / "stray", files=2)
    cache.push(tmp / "stray", "blob", stray.key)
    keep = ["--keep", str(TINY), *team["a_args"][4:]]
    dry = bankflow("gc", cache_url, *keep, cwd=tmp)
    assert dry.returncode == 0, dry.stderr
    assert f"blob        {stray.key}" in dry.stdout and extract_key not in dry.stdout
    assert cache.has("blob", stray.key)
    done = bankflow("gc", cache_url, *keep, "--apply", cwd=tmp)
    assert done.returncode == 0, done.stderr
    assert not cache.has("blob", stray.key)
    for name, rec in iter_runs(team["a_summary"]):
        assert cache.has(name.split(":")[0], rec["key"]), name


@pytest.mark.slow
def test_no_credential_is_written_anywhere(team, s3_server):
    secret = s3_server.env["AWS_SECRET_ACCESS_KEY"].encode()
    key_id = s3_server.env["AWS_ACCESS_KEY_ID"].encode()
    for result in (team["a"], team["b"], team["b_train"]):
        assert secret.decode() not in result.stdout + result.stderr
    files = [p for p in team["tmp"].rglob("*") if p.is_file()]
    assert len(files) > 50
    for path in files:  # outputs, provenance, summaries, Prefect's database and logs
        data = path.read_bytes()
        assert secret not in data and key_id not in data, path
    fs = fsspec.filesystem("s3")
    bucket = team["cache"].removeprefix("s3://")
    objects = fs.find(bucket)
    assert objects
    for obj in objects:
        assert secret not in fs.cat_file(obj), obj
