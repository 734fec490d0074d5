"""``bankflow serve``: a Prefect server, work pool, deployments and workers in one command.

Starts ``prefect server start`` on loopback (state in ``PREFECT_HOME``: the CLI defaults it
to ``<work_root>/.prefect``; port ``BANKFLOW_PORT`` or 4200), waits until its API answers,
creates the process work pool, gives the ``gpu`` task tag a concurrency limit equal to the
GPUs (``--gpus``; default this machine's CUDA devices), deploys ``prefect.yaml`` and starts
the process workers. It stays in the foreground; Ctrl-C (or SIGTERM) stops the workers
first, then the server. Everything it starts runs in its own process group, so stopping
one also stops the flow runs it launched.

A server start takes ~20-40 s on a small machine (docs/design.md §7). With
``PREFECT_SERVER_API_AUTH_STRING`` set, the server requires it (basic auth) and every
client started here gets it as ``PREFECT_API_AUTH_STRING``. Whoever reaches the API can
start flow runs, i.e. run code on the workers: a host other than loopback is refused
without an auth string, unless ``--insecure`` (then a warning at start and every hour).

A worker that dies with its machine (SIGKILL, power loss) cannot report its flow runs:
Prefect would show them ``Running`` forever. serve gives the pool's flow runs heartbeats
(``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the pool's job template, so every worker of the
pool passes it on) and keeps one automation on the server: a flow run whose heartbeat
stops for ``--crash-after`` seconds is set ``Crashed`` (docs/design.md §7). Its stages'
locks are released by their holder's death (flows/locks.py), so the next run resumes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 4200
DEFAULT_POOL = "bankflow"
SERVER_START_TIMEOUT_S = 240.0
INSECURE_WARNING_EVERY_S = 3600.0
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
MIN_HEARTBEAT_S = 30  # Prefect's floor for flow-run heartbeats
DEFAULT_HEARTBEAT_S = 30
DEFAULT_CRASH_AFTER_S = 90  # three heartbeats missed
CRASH_AUTOMATION = "bankflow: crash flow runs without heartbeat"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    pool: str = DEFAULT_POOL
    workers: int = 1
    gpus: int | None = None  # None: count this machine's CUDA devices
    limit: int | None = None  # flow runs per worker; default max(1, GPUs per worker)
    prefect_file: Path = PROJECT_DIR / "prefect.yaml"
    deploy: bool = True
    insecure: bool = False  # listen beyond loopback without an auth string
    heartbeat_s: int = DEFAULT_HEARTBEAT_S  # flow-run heartbeat period
    crash_after_s: int = DEFAULT_CRASH_AFTER_S  # no heartbeat this long: Crashed (0: never)


@dataclass
class Started:
    """What serve started, newest last (stopped in reverse order)."""

    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def add(self, name: str, proc: subprocess.Popen) -> subprocess.Popen:
        self.processes.append((name, proc))
        return proc

    def stop(self, timeout_s: float = 20.0) -> None:
        for name, proc in reversed(self.processes):
            # A process worker starts each flow run in a new session: find them first.
            children = descendants(proc.pid)
            if proc.poll() is None:
                print(f"bankflow serve: stopping {name} (pid {proc.pid})", flush=True)
                _signal_group(proc, signal.SIGINT)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
            _signal_group(proc, signal.SIGKILL)
            for pid in children:  # flow runs must not outlive their worker
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.processes.clear()


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (from /proc; empty where there is none)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def default_port() -> int:
    raw = os.environ.get("BANKFLOW_PORT", str(DEFAULT_PORT))
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"bankflow serve: BANKFLOW_PORT={raw!r} is not a port number") from None


def count_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def exposure_problem(options: ServeOptions, env: dict[str, str]) -> str | None:
    """Why serving on ``options.host`` is refused (None: loopback, auth set, or --insecure)."""
    if options.insecure or env.get("PREFECT_SERVER_API_AUTH_STRING") or is_loopback(options.host):
        return None
    return (
        f"refusing to serve on {options.host}:{options.port} without "
        "PREFECT_SERVER_API_AUTH_STRING: anyone who reaches the port could start flow runs "
        "(run code on the workers); set it (e.g. PREFECT_SERVER_API_AUTH_STRING=user:secret), "
        "use --host 127.0.0.1, or pass --insecure on a trusted network"
    )


def insecure_warning(options: ServeOptions) -> str:
    return (
        f"bankflow serve: WARNING: the Prefect API on {options.host}:{options.port} has no "
        "authentication (--insecure): anyone who reaches it can run code on the workers"
    )


def _auth_header() -> dict[str, str]:
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def wait_for_api(api_url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll ``<api>/health`` until it answers; fail early if the server process exits."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{api_url}/health", headers=_auth_header())
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-3000:] if log_path.is_file() else ""
            raise RuntimeError(
                f"the Prefect server exited ({proc.returncode}); {log_path}:\n{tail}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(request, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not answer at {api_url} within {timeout_s:.0f} s")


def heartbeat_problem(options: ServeOptions) -> str | None:
    """Why ``--heartbeat``/``--crash-after`` cannot work together (None: they can)."""
    if options.heartbeat_s < MIN_HEARTBEAT_S:
        return f"--heartbeat {options.heartbeat_s}: Prefect's minimum is {MIN_HEARTBEAT_S} s"
    if options.crash_after_s and options.crash_after_s <= options.heartbeat_s:
        return (
            f"--crash-after {options.crash_after_s} must exceed --heartbeat "
            f"{options.heartbeat_s} (or be 0: never mark silent flow runs Crashed)"
        )
    return None


def with_heartbeat(template: dict, heartbeat_s: int) -> dict:
    """The process job template with ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in its default
    ``env`` (a deployment that sets its own ``env`` must add it there)."""
    import copy

    template = copy.deepcopy(template)
    props = template.setdefault("variables", {}).setdefault("properties", {})
    env = props.setdefault("env", {"type": "object", "title": "Environment Variables"})
    env["default"] = {**(env.get("default") or {}), HEARTBEAT_ENV: str(heartbeat_s)}
    return template


def ensure_pool(pool: str, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> None:
    """Create the process work pool; an existing one keeps its template except the
    heartbeat variable, set to ``heartbeat_s``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            existing = None
        if existing is None:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type="process",
                    base_job_template=with_heartbeat(
                        ProcessWorker.get_default_base_job_template(), heartbeat_s
                    ),
                    description="bankflow: flow runs as processes on the worker's machine",
                )
            )
            return
        wanted = with_heartbeat(existing.base_job_template, heartbeat_s)
        if wanted != existing.base_job_template:
            client.update_work_pool(pool, WorkPoolUpdate(base_job_template=wanted))


def crash_automation(crash_after_s: int):
    """The automation that sets a flow run ``Crashed`` when, after a heartbeat, neither
    another heartbeat nor a final state arrives within ``crash_after_s`` seconds (the
    proactive trigger of Prefect's "detect zombie flows" recipe)."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=f"bankflow serve: no flow-run heartbeat for {crash_after_s} s -> Crashed",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {crash_after_s} s: its worker or machine died",
            )
        ],
    )


def ensure_crash_automation(crash_after_s: int) -> None:
    """Exactly one bankflow crash automation with this timeout (none for 0): an existing one
    that matches is kept, others of that name are replaced."""
    from prefect.client.orchestration import get_client

    wanted = crash_automation(crash_after_s) if crash_after_s else None
    keep = None
    with get_client(sync_client=True) as client:
        for found in client.read_automations_by_name(CRASH_AUTOMATION):
            same = (
                wanted is not None
                and keep is None
                and (
                    found.enabled
                    and found.trigger == wanted.trigger
                    and found.actions == wanted.actions
                )
            )
            if same:
                keep = found
            else:
                client.delete_automation(found.id)
        if wanted is not None and keep is None:
            client.create_automation(wanted)


def set_gpu_limit(gpus: int) -> None:
    """Limit concurrent ``gpu``-tagged task runs to ``gpus`` (no limit on a CPU-only cluster)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.tasks import GPU_TAG

    with get_client(sync_client=True) as client:
        if gpus > 0:
            client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=gpus)
        else:
            with contextlib.suppress(ObjectNotFound):
                client.delete_concurrency_limit_by_tag(GPU_TAG)


def deploy(prefect_file: Path, pool: str, env: dict[str, str]) -> None:
    """``prefect deploy --all`` from the project directory (the flows' working directory)."""
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "--no-prompt",
        "deploy",
        "--all",
        "--prefect-file",
        str(prefect_file),
        "--pool",
        pool,
    ]
    out = subprocess.run(
        cmd, cwd=prefect_file.parent, env=env, capture_output=True, text=True, timeout=900
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"prefect deploy failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )


def worker_command(pool: str, name: str, limit: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name,
        "--limit",
        str(limit),
    ]


def split_gpus(gpus: int, workers: int) -> list[list[str]]:
    """GPU ids per worker: ``gpus`` devices dealt round-robin to ``workers`` workers."""
    return [[str(g) for g in range(gpus) if g % workers == w] for w in range(workers)]


def serve(options: ServeOptions) -> int:
    refused = exposure_problem(options, dict(os.environ)) or heartbeat_problem(options)
    if refused:
        print(f"bankflow serve: {refused}", file=sys.stderr)
        return 2
    prefect_home = Path(os.environ["PREFECT_HOME"])
    prefect_home.mkdir(parents=True, exist_ok=True)
    if _port_in_use(options.host, options.port):
        print(
            f"bankflow serve: {options.host}:{options.port} is in use (set BANKFLOW_PORT)",
            file=sys.stderr,
        )
        return 2
    api_url = f"http://{options.host}:{options.port}/api"
    env = dict(os.environ)
    env.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if env.get("PREFECT_SERVER_API_AUTH_STRING"):
        env.setdefault("PREFECT_API_AUTH_STRING", env["PREFECT_SERVER_API_AUTH_STRING"])
    os.environ.update(env)  # this process's Prefect client talks to the same server
    started = Started()
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log_path = prefect_home / "server.log"
    exposed = options.insecure and not (
        env.get("PREFECT_SERVER_API_AUTH_STRING") or is_loopback(options.host)
    )
    next_warning = time.monotonic()
    try:
        with open(log_path, "ab") as server_log:
            server = started.add(
                "server",
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "prefect",
                        "server",
                        "start",
                        "--host",
                        options.host,
                        "--port",
                        str(options.port),
                    ],
                    env=env,
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
            )
        print(
            f"bankflow serve: starting the Prefect server (PREFECT_HOME={prefect_home}, "
            f"log {log_path})",
            flush=True,
        )
        if exposed:
            print(insecure_warning(options), file=sys.stderr, flush=True)
            next_warning = time.monotonic() + INSECURE_WARNING_EVERY_S
        wait_for_api(api_url, server, log_path, SERVER_START_TIMEOUT_S)
        ensure_pool(options.pool, options.heartbeat_s)
        ensure_crash_automation(options.crash_after_s)
        gpus = count_gpus() if options.gpus is None else options.gpus
        set_gpu_limit(gpus)
        if options.deploy and not stopping:
            deploy(options.prefect_file, options.pool, env)
        if stopping:
            return 0
        per_worker = split_gpus(gpus, options.workers) if options.workers else []
        host = socket.gethostname()
        for i, devices in enumerate(per_worker):
            limit = options.limit or max(1, len(devices))
            worker_env = {**env, "BANKFLOW_GPU_SLOTS": ",".join(devices)}
            started.add(
                f"worker {i}",
                subprocess.Popen(
                    worker_command(options.pool, f"bankflow-{host}-{i}", limit),
                    env=worker_env,
                    cwd=PROJECT_DIR,
                    start_new_session=True,
                ),
            )
        print(
            f"bankflow serve: ready. UI http://{options.host}:{options.port}  "
            f"PREFECT_API_URL={api_url}  pool {options.pool!r}  GPUs {gpus}  "
            f"workers {options.workers}; silent flow runs Crashed after "
            f"{options.crash_after_s or 'never'} s. Ctrl-C stops.",
            flush=True,
        )
        while not stopping:
            if exposed and time.monotonic() >= next_warning:
                print(insecure_warning(options), file=sys.stderr, flush=True)
                next_warning = time.monotonic() + INSECURE_WARNING_EVERY_S
            for name, proc in started.processes:
                if proc.poll() is not None:
                    print(f"bankflow serve: {name} exited ({proc.returncode})", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except RuntimeError as exc:
        print(f"bankflow serve: {exc}", file=sys.stderr)
        return 1
    finally:
        started.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("bankflow serve: stopped", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port", type=int, default=None, help="server port (default BANKFLOW_PORT or 4200)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address (default loopback; any other needs PREFECT_SERVER_API_AUTH_STRING)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback host without an auth string (warns at start and hourly)",
    )
    p.add_argument("--pool", default=DEFAULT_POOL, help="process work pool to create and serve")
    p.add_argument("--workers", type=int, default=1, help="process workers to start (0: none)")
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs for the 'gpu' tag limit and worker slots (default: CUDA devices)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="flow runs per worker at once (default: its GPUs, at least 1)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=DEFAULT_HEARTBEAT_S,
        metavar="S",
        help=f"flow-run heartbeat period, s (default {DEFAULT_HEARTBEAT_S}, minimum "
        f"{MIN_HEARTBEAT_S})",
    )
    p.add_argument(
        "--crash-after",
        type=int,
        default=DEFAULT_CRASH_AFTER_S,
        metavar="S",
        help=f"a flow run with no heartbeat for S seconds (its worker died) is set Crashed "
        f"(default {DEFAULT_CRASH_AFTER_S}; 0: never)",
    )
    p.add_argument("--prefect-file", type=Path, default=PROJECT_DIR / "prefect.yaml")
    p.add_argument(
        "--no-deploy", dest="deploy", action="store_false", help="do not deploy prefect.yaml"
    )


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        host=args.host,
        port=args.port or default_port(),
        pool=args.pool,
        workers=args.workers,
        gpus=args.gpus,
        limit=args.limit,
        prefect_file=args.prefect_file.resolve(),
        deploy=args.deploy,
        insecure=args.insecure,
        heartbeat_s=args.heartbeat,
        crash_after_s=args.crash_after,
    )
