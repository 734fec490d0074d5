"""``bankflow serve`` beyond loopback (issue 20, defect 1): refused without an auth string,
``--insecure`` warns at start and every hour, and with ``PREFECT_SERVER_API_AUTH_STRING``
a real server on 0.0.0.0 answers only authenticated requests."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flows.cli import main as bankflow
from flows.serve import ServeOptions, exposure_problem, is_loopback

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "no-such-host.invalid"])
def test_other_hosts_need_auth_or_insecure(host: str) -> None:
    assert not is_loopback(host)
    problem = exposure_problem(ServeOptions(host=host, port=4321), {})
    assert problem and f"{host}:4321" in problem and "PREFECT_SERVER_API_AUTH_STRING" in problem
    auth = {"PREFECT_SERVER_API_AUTH_STRING": "admin:s3cret"}
    assert exposure_problem(ServeOptions(host=host), auth) is None
    assert exposure_problem(ServeOptions(host=host, insecure=True), {}) is None


def test_serve_on_all_interfaces_without_auth_is_refused(tmp_path: Path, monkeypatch, capsys):
    """One line, exit 2, and nothing started: no server log, no PREFECT_HOME written."""
    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    home = tmp_path / "home"
    for key, value in {"PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(key, value)
    code = bankflow(["serve", "--host", "0.0.0.0", "--workers", "0", "--no-deploy",
                     "--work-root", str(tmp_path / "w")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "refusing to serve on 0.0.0.0:" in err, err
    assert not (home / "server.log").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str, auth: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _serve(tmp_path: Path, env: dict[str, str], *args: str, warn_every_s: float = 3600):
    """A real ``bankflow serve --workers 0 --no-deploy`` (warning interval patched)."""
    code = (
        "import sys, flows.serve as s; s.INSECURE_WARNING_EVERY_S = float(sys.argv[1]); "
        "from flows.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    out = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed by the caller's wait)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(warn_every_s), "serve", "--workers", "0",
         "--no-deploy", "--work-root", str(tmp_path / "w"), *args],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**base, "PYTHONPATH": str(ROOT), "BANKFLOW_PORT": str(port),
            "PREFECT_HOME": str(tmp_path / "home"), **extra}  # fmt: skip


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while "bankflow serve: ready" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(90) == 0


@pytest.mark.slow
def test_real_server_on_all_interfaces(tmp_path: Path) -> None:
    """With an auth string: the API refuses anonymous requests (401) and answers the
    credential; then ``--insecure`` without one: warned at start and again on schedule."""
    port = _free_port()
    secure = _serve(tmp_path, _env(tmp_path, port, PREFECT_SERVER_API_AUTH_STRING="admin:s3cret"),
                    "--host", "0.0.0.0")  # fmt: skip
    try:
        _wait_ready(secure, tmp_path / "serve.log")
        # /health answers anyone (probes); every other route needs the credential.
        version = f"http://127.0.0.1:{port}/api/admin/version"
        assert _status(version) == 401
        assert _status(version, "admin:wrong") == 401
        assert _status(version, "admin:s3cret") == 200
        assert "WARNING" not in (tmp_path / "serve.log").read_text()
    finally:
        _stop(secure)
    port = _free_port()
    insecure = _serve(tmp_path, _env(tmp_path, port), "--host", "0.0.0.0", "--insecure",
                      warn_every_s=2)  # fmt: skip
    try:
        _wait_ready(insecure, tmp_path / "serve.log")
        assert _status(f"http://127.0.0.1:{port}/api/admin/version") == 200
        time.sleep(5)
    finally:
        _stop(insecure)
    log = (tmp_path / "serve.log").read_text()
    warnings = log.count(f"WARNING: the Prefect API on 0.0.0.0:{port} has no authentication")
    assert warnings >= 3, log[-3000:]  # at start, then every 2 s while serving
