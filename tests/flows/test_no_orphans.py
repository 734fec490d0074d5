"""No orphaned Prefect server (issue 20, defect 9): the server a ``bankflow run`` starts
dies with it on SIGKILL, and a stale one (its run gone) is stopped by the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.embedded import _alive, _start_time, embedded_server, stop_stale_servers

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "tiny.yaml"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _wait_record(home: Path, proc: subprocess.Popen, timeout: float = 300) -> dict:
    """The server record of ``proc``'s run, once its server answers (PREFECT_API_URL is set
    only then; the run's log says so when the pipeline starts)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list((home / "embedded").glob("*.json"))
        if records:
            rec = json.loads(records[0].read_text())
            if _port_open(rec["port"]):
                return rec
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no embedded server came up"
        time.sleep(0.2)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_gone(pid: int, start_time: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid, start_time):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_server_dies_with_a_killed_run(tmp_path: Path) -> None:
    work = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(TINY), "--work-root",
         str(work), "--set", f"dataset.root={tmp_path / 'world'}"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        rec = _wait_record(work / ".prefect", proc)
        assert rec["owner"] == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _wait_gone(rec["pid"], rec["start_time"]), f"server {rec['pid']} orphaned"
        assert not _port_open(rec["port"])
    finally:
        proc.kill()
        proc.communicate()


ORPHAN = """
import os, sys
from pathlib import Path
import flows.embedded as e
e._die_with_parent = lambda: os.setsid  # what a run without the parent-death signal does
with e.embedded_server(Path(sys.argv[1])) as url:
    print(url, flush=True)
    os.kill(os.getpid(), 9)
"""


@pytest.mark.slow
def test_stale_server_of_a_killed_run_is_stopped_by_the_next(tmp_path: Path) -> None:
    """A server whose run died without taking it along (no parent-death signal: another OS,
    or an older bankflow) is found by the next run on the work root and stopped."""
    home = tmp_path / "home"
    killed = subprocess.run([sys.executable, "-c", ORPHAN, str(home)], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (record,) = (home / "embedded").glob("*.json")
    rec = json.loads(record.read_text())
    assert _alive(rec["pid"], rec["start_time"]) and _port_open(rec["port"])  # orphaned
    try:
        # A live run's server is left alone; then this process's next run stops the stale one.
        os.environ.pop("PREFECT_API_URL", None)
        mine = {"pid": os.getpid(), "start_time": _start_time(os.getpid()), "port": 1,
                "owner": os.getpid(), "owner_start_time": _start_time(os.getpid())}  # fmt: skip
        (home / "embedded" / "live.json").write_text(json.dumps(mine))
        with embedded_server(home) as url:
            assert url and not _alive(rec["pid"], rec["start_time"])
            assert not record.exists() and (home / "embedded" / "live.json").exists()
            assert len(list((home / "embedded").glob("*.json"))) == 2  # live + ours
        assert [p.name for p in (home / "embedded").glob("*.json")] == ["live.json"]
        assert "PREFECT_API_URL" not in os.environ
    finally:
        stop_stale_servers(home)  # never leave the orphan behind, even on failure
        if _alive(rec["pid"], rec["start_time"]):
            os.kill(rec["pid"], signal.SIGKILL)
