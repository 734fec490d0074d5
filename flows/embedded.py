"""The Prefect server of one ``bankflow run``: started here, dies with its run, never orphaned.

Prefect's own ephemeral server (``SubprocessASGIServer``) is a plain child process: when
``bankflow run`` is SIGKILLed it keeps running, orphaned (~200 MB), indefinitely. This
module starts the same server (uvicorn on ``prefect.server.api.server:create_app``,
loopback, a free port, state in ``PREFECT_HOME``) itself, so that:

- on Linux it gets ``PR_SET_PDEATHSIG`` (SIGTERM when the run dies, however it dies) and
  its own process group;
- it is recorded in ``<PREFECT_HOME>/embedded/<pid>.json`` (server pid and start time,
  owner pid and start time, port); a run that starts finds servers whose owner is gone
  (a run killed on a system without the parent-death signal, or before it was set) and
  stops them. Servers of live runs (two runs on one work root) are left alone.

Its output goes to ``<PREFECT_HOME>/embedded-server.log``. A user who sets
``PREFECT_API_URL`` uses that server instead and nothing is started.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("bankflow.server")

PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 10.0


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot; /proc), None if it does not exist.

    Recorded with every pid so that a pid reused by an unrelated process is not mistaken
    for the server or its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start_time: int | None) -> bool:
    now = _start_time(pid)
    if now is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 0)
            return start_time is None  # no /proc: trust the pid alone
        return False
    return start_time is None or now == start_time


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child SIGTERM when this process dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    parent = os.getpid()

    def preexec() -> None:
        os.setsid()  # its own group: a Ctrl-C meant for the run does not reach it first
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_command(port: int) -> list[str]:
    # Located, not imported: Prefect must read PREFECT_API_URL only once it is set.
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None, "prefect is a dependency"
    app_dir = str(Path(spec.origin).parent.parent)
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        app_dir,
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def stop_process(pid: int, start_time: int | None, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM ``pid`` (if it is still the process recorded), SIGKILL after ``timeout_s``."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        if not _alive(pid, start_time):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid, start_time):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            time.sleep(0.05)


def stop_stale_servers(prefect_home: Path) -> list[dict]:
    """Stop the recorded servers whose owning run is gone; drop records of dead servers.

    Returns the records of the servers stopped."""
    stopped = []
    for record_path in sorted((prefect_home / "embedded").glob("*.json")):
        try:
            rec = json.loads(record_path.read_text())
            pid, owner = int(rec["pid"]), int(rec["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            record_path.unlink(missing_ok=True)  # unreadable: written by a run killed mid-write
            continue
        if _alive(pid, rec.get("start_time")):
            if _alive(owner, rec.get("owner_start_time")):
                continue  # another run's server, in use
            log.warning(
                "stopping a Prefect server left by a killed run: pid %d, port %s, run pid %d",
                pid,
                rec.get("port"),
                owner,
            )
            stop_process(pid, rec.get("start_time"))
            stopped.append(rec)
        record_path.unlink(missing_ok=True)
    return stopped


def _wait_healthy(api_url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the embedded Prefect server exited ({proc.returncode}); see {log_path}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{api_url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the embedded Prefect server did not answer within {timeout_s:.0f} s")


def _drain_prefect_clients() -> None:
    """Send the logs and events Prefect still queues while the server is up (it would
    otherwise send them at interpreter exit, to a stopped server, and print an error)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort: the run's result is decided
            service.drain_all(timeout=5)


@contextlib.contextmanager
def embedded_server(prefect_home: Path) -> Iterator[str | None]:
    """Run a Prefect server for this process; yields its API URL (None: PREFECT_API_URL set).

    Sets ``PREFECT_API_URL`` for this process (call before Prefect reads its settings).
    """
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    stop_stale_servers(prefect_home)
    records = prefect_home / "embedded"
    records.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    log_path = prefect_home / "embedded-server.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            _server_command(port),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
    record = records / f"{proc.pid}.json"
    rec = {
        "pid": proc.pid,
        "start_time": _start_time(proc.pid),
        "port": port,
        "owner": os.getpid(),
        "owner_start_time": _start_time(os.getpid()),
    }
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, record)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))
        _wait_healthy(api_url, proc, log_path, timeout)
        os.environ["PREFECT_API_URL"] = api_url
        yield api_url
    finally:
        _drain_prefect_clients()
        os.environ.pop("PREFECT_API_URL", None)
        stop_process(proc.pid, rec["start_time"])
        proc.poll()
        record.unlink(missing_ok=True)
