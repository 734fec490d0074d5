# ruff: noqa: F811
"""A work root is self-contained: copied, moved, mounted elsewhere or sharing a results
store, every run uses the outputs of its own work root (issue 23).

Runs go through a REAL Prefect server (the ``server`` fixture of ``test_server``, started
once for this module): ``bankflow run`` processes with ``PREFECT_API_URL`` pointing at it,
and process workers running the ``stage-track/cpu`` deployment. Only the cheap stages
(detect from proposals, track) run, on the tiny world.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.pipeline import iter_runs

# The module's real server: test_server's fixture (tests take it as the ``server`` argument).
from tests.flows.test_server import TINY, Worker, _params, _timed_run, server  # noqa: F401

pytestmark = pytest.mark.slow


def bankflow(server, work_root: Path, until: str, **env: str) -> subprocess.CompletedProcess:
    """``bankflow run --until`` in a new process, against the module's Prefect server."""
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(TINY),
         "--work-root", str(work_root), "--until", until,
         "--set", f"dataset.root={server.root / 'world'}"],
        cwd=server.root, env={**server.env, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def summary_of(work_root: Path) -> dict:
    return json.loads((work_root / "summary.json").read_text())


def assert_self_contained(work_root: Path, *elsewhere: Path) -> None:
    """summary.json names outputs relative to the root; no record, summary or provenance
    names a path of the root or of the ``elsewhere`` roots."""
    summary = summary_of(work_root)
    for name, rec in iter_runs(summary):
        assert rec["uri"] == f"{name.split(':')[0]}/{rec['key']}", rec["uri"]
        assert (work_root / rec["uri"] / "COMPLETE.json").is_file()
    texts = [work_root / "summary.json", *work_root.glob("*/*/provenance.json")]
    # A cache record's result (what bankflow stores; Prefect's metadata around it names
    # the record file itself, which bankflow never reads back).
    results = work_root / ".prefect" / "results"
    records = [json.loads(p.read_text())["result"] for p in results.glob("*-*")]
    assert records, f"no cache records in {results}"
    for root in (work_root, *elsewhere):
        for text in [*(p.read_text() for p in texts), *records]:
            assert str(root) not in text


def only_key(work_root: Path, stage: str) -> Path:
    (out,) = [p for p in (work_root / stage).iterdir() if not p.name.startswith(".")]
    return out


def test_copied_moved_deleted_and_tampered_work_roots(server, tmp_path: Path) -> None:
    a, b, c = server.root / "wr-a", server.root / "wr-b", server.root / "wr-c"
    bankflow(server, a, "detect")
    detect_a = only_key(a, "detect")

    # Copy, the original still there: the copy's own files are opened. The original's
    # persons table is damaged (same size, so its manifest still matches): any read of it
    # would fail the track stage, which reads the detect output.
    shutil.copytree(a, b)
    persons = detect_a / "persons.parquet"
    persons.write_bytes(b"\0" * persons.stat().st_size)
    out = bankflow(server, b, "track")
    summary = summary_of(b)
    assert summary["stages"]["detect"]["cached"] is True  # from the copied cache record
    assert summary["stages"]["track"]["cached"] is False
    assert str(a) not in out.stdout and str(b / "detect") in out.stdout
    track = json.loads((only_key(b, "track") / "provenance.json").read_text())
    assert track["inputs"]["detect"]["uri"] == f"detect/{detect_a.name}"
    assert_self_contained(b, a)

    # Move it: every stage is found where the root now is (the track output removed,
    # so the track stage reads the moved detect output; its record is dropped, once).
    b.rename(c)
    shutil.rmtree(only_key(c, "track"))
    out = bankflow(server, c, "track")
    summary = summary_of(c)
    assert summary["stages"]["detect"]["cached"] is True
    assert summary["stages"]["track"]["cached"] is False
    dropped = [line for line in out.stderr.splitlines() if "cache record" in line]
    assert len(dropped) == 1 and "track-" in dropped[0] and "no output" in dropped[0], dropped
    assert str(b) not in out.stdout + out.stderr.replace(str(c), "")
    assert_self_contained(c, a, b)

    # A tampered output (a file grown after publication) is recomputed, never used; the
    # tampered one is kept aside in detect/.replaced/.
    detect_c = only_key(c, "detect")
    with open(detect_c / "persons.parquet", "ab") as f:
        f.write(b"tampered")
    out = bankflow(server, c, "track")
    summary = summary_of(c)
    assert summary["stages"]["detect"]["cached"] is False
    assert summary["stages"]["track"]["cached"] is True
    (aside,) = (c / "detect" / ".replaced").iterdir()
    assert (aside / "persons.parquet").read_bytes().endswith(b"tampered")
    assert not (detect_c / "persons.parquet").read_bytes().endswith(b"tampered")
    assert_self_contained(c, a, b)


def test_a_results_store_shared_by_two_work_roots(server) -> None:
    shared = str(server.root / "shared-results")
    x, y = server.root / "wr-x", server.root / "wr-y"
    bankflow(server, x, "detect", BANKFLOW_RESULTS=shared)
    # Y has nothing yet: X's record must not hand it X's output.
    bankflow(server, y, "detect", BANKFLOW_RESULTS=shared)
    rec_x, rec_y = summary_of(x)["stages"]["detect"], summary_of(y)["stages"]["detect"]
    assert rec_y["key"] == rec_x["key"] and rec_y["cached"] is False
    assert (y / rec_y["uri"] / "COMPLETE.json").is_file()
    # And X, whose output the record now matches again, is served from cache.
    bankflow(server, x, "detect", BANKFLOW_RESULTS=shared)
    assert summary_of(x)["stages"]["detect"]["cached"] is True
    records = [json.loads(p.read_text())["result"] for p in Path(shared).glob("detect-*")]
    assert records and all(str(x) not in r and str(y) not in r for r in records)


def test_work_root_mounted_at_another_path_on_a_second_worker(server) -> None:
    first_path, disk, second_path = (server.root / n for n in ("mnt-1", "disk", "mnt-2"))
    first = Worker(server, "mount-1")
    try:
        _timed_run(server, "stage-track/cpu", _params(server, "mnt-1"))
    finally:
        first.stop()
    # The same directory seen at another path (a mount on another machine); the first
    # path is gone, so nothing can be read through it.
    first_path.rename(disk)
    os.symlink(disk, second_path)
    second = Worker(server, "mount-2")
    try:
        run_id, _, _ = _timed_run(server, "stage-track/cpu", _params(server, "mnt-2"))
    finally:
        second.stop()
    states = {tr.name.split("-")[0]: tr.state_name for tr in server.task_runs(run_id)}
    assert states == {"detect": "Cached", "track": "Cached"}
    summary = summary_of(second_path)
    assert [rec["cached"] for _, rec in iter_runs(summary)] == [True, True]
    assert_self_contained(second_path, first_path)
    assert not any(str(first_path) in m for m in server.logs(run_id))
