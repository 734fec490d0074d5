"""bankflow against a REAL Prefect server on loopback: deployments, workers, caching, restarts.

One module-scoped ``bankflow serve --workers 0`` (server + pool + deployments; a temporary
PREFECT_HOME, a free port) is shared by every test; the tests start and kill their own
process workers. Measured wall times are printed (``-s``) and written to
``<tmp>/timings.json``.

(a)-(c) run ``prefect deployment run 'bankflow-pipeline/demo'`` (finetune, extract, a
stage-1 head, an LFB bank, the stage-2 head reading it), (c) with a stage-2 head parameter
changed; (d) SIGKILLs a worker (and its flow run) during extraction and resumes with a new
worker; (e) two workers split one extraction. All use a 12-video world with a wider
backbone, so that the first run does real work and extraction lasts long enough to be
killed and shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from flows.serve import descendants
from stages.catalog import STAGES
from stages.pipeline import iter_runs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "tiny.yaml"
POOL = "bankflow"
# (d), (e): 12 videos, 1-3 s of extraction each on this machine: together longer than the
# spread of two flow runs' start-up (a few seconds), so that two workers meet in one
# extraction, and a kill after the first video leaves most of it to resume.
BIGGER = ["world.n_train_videos=8", "world.n_val_videos=4", "extract.backbone_kwargs.width=64"]
N_BIGGER = 12
# (d), (e): the same world and a wider backbone, so that extraction (~2 s a video here)
# outlasts the spread of two flow runs' start-up and a kill lands in the middle of it.
SLOW_EXTRACT = [*BIGGER, "extract.backbone_kwargs.width=128"]
# (a)-(c): the same world with every kind of stage: a fine-tuned backbone, a stage-1 head,
# an LFB bank dumped from it and the stage-2 head reading it: about 2 min of stage work on
# 2 cores (fine-tuning most of it), against which a cached run's fixed Prefect costs
# (~0.4 s of task-run bookkeeping per stage with a real server) are weighed.
PIPELINE = [
    *BIGGER,
    "finetune={epochs: 10, batch_keyframes: 8}",
    "dump.banks={lfb: {from: linear, kind: lfb}}",
    "train_bank.runs={lfb: {head: lfb, bank: lfb, head_kwargs: {fbo: nl, hidden_dim: 16,"
    " num_layers: 1}, window: {before: 6, after: 0}, optim: {epochs: 2, batch_keyframes: 8}}}",
]
FINAL = {"Completed", "Cached", "Failed", "Crashed", "Cancelled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    api: str
    root: Path  # temporary directory of this module
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    serve_pid: int = 0  # the ``bankflow serve`` process (its descendants: the server)

    @contextlib.contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}), get_client(sync_client=True) as c:
            yield c

    def run(self, deployment: str, params: dict) -> uuid.UUID:
        """``prefect deployment run`` (no watch); returns the flow run id."""
        out = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", deployment,
             "--params", json.dumps(params)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        match = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
        assert match, out.stdout
        return uuid.UUID(match.group(1))

    def wait(self, run_id: uuid.UUID, timeout: float = 600):
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                run = c.read_flow_run(run_id)
                if run.state_name in FINAL:
                    return run
                assert time.monotonic() < deadline, f"flow run {run_id} still {run.state_name}"
                time.sleep(0.25)

    def task_runs(self, run_id: uuid.UUID) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self.client() as c:
            return c.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )

    def logs(self, run_id: uuid.UUID, timeout: float = 60) -> list[str]:
        """The flow run's log messages, once its last one ("Finished in state …") arrived:
        a run's logs reach the server in batches, after its final state."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                found: list = []
                while True:
                    page = c.read_logs(
                        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                        limit=200, offset=len(found),
                    )  # fmt: skip
                    found.extend(page)
                    if len(page) < 200:
                        break
                if time.monotonic() > deadline or any(
                    log.task_run_id is None and log.message.startswith("Finished in state")
                    for log in found
                ):
                    return [log.message for log in found]
                time.sleep(0.5)


class Worker:
    """A ``prefect worker start`` process (limit 1) in its own session."""

    def __init__(self, server: Server, name: str, limit: int = 1) -> None:
        self.log = server.root / f"worker-{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                 "--type", "process", "--limit", str(limit), "--name", name],
                cwd=ROOT, env=server.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_started(self, timeout: float = 120) -> None:
        """Until the worker polls the pool (its "started" line)."""
        deadline = time.monotonic() + timeout
        while "started!" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"worker not started: {self.log}"
            time.sleep(0.2)

    def kill(self) -> list[int]:
        """SIGKILL the worker and every flow run it started (a machine going away)."""
        victims = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        return victims

    def stop(self) -> None:
        children = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(root: Path, *serve_args: str):
    """``bankflow serve --workers 0 --gpus 2 *serve_args`` on a free port, PREFECT_HOME under
    ``root``, until ready; stopped (and its port checked closed) on exit."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = {
        **base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "BANKFLOW_PORT": str(port),
        "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
    }  # fmt: skip
    serve_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    log = root / "serve.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--work-root", str(root / "w"),
             "--workers", "0", "--gpus", "2", *serve_args],
            cwd=ROOT, env=serve_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 420
        while "bankflow serve: ready" not in log.read_text():
            assert proc.poll() is None, f"bankflow serve exited:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"serve not ready:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        srv = Server(api=env["PREFECT_API_URL"], root=root, env=env, serve_pid=proc.pid)
        srv.timings["serve_ready_s"] = round(time.monotonic() - t0, 1)
        yield srv
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(90) == 0, log.read_text()[-4000:]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the server still listens after serve"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    with serving(root) as srv:
        yield srv
    (root / "timings.json").write_text(json.dumps(srv.timings, indent=2))
    print("\nserver test timings (s):", json.dumps(srv.timings))


def _params(server: Server, work: str, *overrides: str, world: str = "world") -> dict:
    return {
        "config": str(TINY),
        "work_root": str(server.root / work),
        "overrides": [f"dataset.root={server.root / world}", *overrides],
    }


def _timed_run(server: Server, deployment: str, params: dict) -> tuple:
    t0 = time.monotonic()
    run_id = server.run(deployment, params)
    run = server.wait(run_id)
    wall = time.monotonic() - t0
    assert run.state_name == "Completed", (run.state, server.logs(run_id)[-30:])
    duration = (run.end_time - run.start_time).total_seconds()
    return run_id, wall, duration


def _task_seconds(task_runs: list, *, from_created: bool = False) -> float:
    """Summed wall time of stage task runs: Running -> final state (the stage's work or
    its cache lookup), or from creation (adds Prefect's per-task bookkeeping)."""
    return sum(
        (tr.end_time - (tr.created if from_created else tr.start_time or tr.created))
        .total_seconds()
        for tr in task_runs
    )  # fmt: skip


@dataclass
class PipelineRuns:
    first: uuid.UUID
    cached: uuid.UUID
    changed: uuid.UUID
    single: uuid.UUID
    summaries: dict[str, dict]


@pytest.fixture(scope="module")
def pipeline_runs(server):
    """(a) first run, (b) identical run, (c) one head parameter changed, (c') the
    ``stage-train/gpu`` deployment with another value — one worker, then stopped."""
    worker = Worker(server, "pipeline")
    summaries = {}
    try:
        runs = {}
        for label, deployment, extra in (
            ("first", "bankflow-pipeline/demo", []),
            ("cached", "bankflow-pipeline/demo", []),
            ("changed", "bankflow-pipeline/demo", ["train_bank.runs.lfb.optim.lr=0.01"]),
            ("single", "stage-train/gpu", ["train.runs.linear.optim.lr=0.02"]),
        ):
            params = _params(server, "wa", *PIPELINE, *extra, world="world2")
            run_id, wall, duration = _timed_run(server, deployment, params)
            runs[label] = run_id
            server.timings[f"{label}_wall_s"] = round(wall, 2)
            server.timings[f"{label}_flow_run_s"] = round(duration, 2)
            task_runs = server.task_runs(run_id)
            server.timings[f"{label}_tasks_s"] = round(_task_seconds(task_runs), 2)
            server.timings[f"{label}_tasks_created_s"] = round(
                _task_seconds(task_runs, from_created=True), 2
            )
            if label == "cached":  # where a cached run's time goes, task by task
                server.timings["cached_task_runs"] = [
                    [tr.name.split("-")[0], round((tr.start_time - tr.created).total_seconds(), 2),
                     round((tr.end_time - tr.start_time).total_seconds(), 2)]
                    for tr in sorted(task_runs, key=lambda tr: tr.created)
                ]  # fmt: skip
            summaries[label] = json.loads((server.root / "wa" / "summary.json").read_text())
    finally:
        worker.stop()
    return PipelineRuns(**runs, summaries=summaries)


def _by_cache_key(task_runs: list) -> dict[str, str]:
    """State per task run, by its name: ``<stage>-<stage key>`` (= its cache key)."""
    return {tr.name: tr.state_name for tr in task_runs}


def _expected_keys(summary: dict) -> dict[str, str]:
    return {f"{name.split(':')[0]}-{rec['key']}": name for name, rec in iter_runs(summary)}


def test_a_worker_runs_the_pipeline_deployment_with_outputs(server, pipeline_runs):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.tasks import GPU_STAGES, GPU_TAG

    summary = pipeline_runs.summaries["first"]
    stages = [name.split(":")[0] for name, _ in iter_runs(summary)]
    assert stages[:4] == ["detect", "track", "finetune", "extract"]
    assert {"train", "dump", "train_bank", "evaluate"} <= set(stages)
    work_root = server.root / "wa"  # summary.json names outputs relative to it
    for _name, rec in iter_runs(summary):
        assert rec["cached"] is False and (work_root / rec["uri"] / "COMPLETE.json").is_file()
    task_runs = server.task_runs(pipeline_runs.first)
    states = _by_cache_key(task_runs)
    assert set(states) == set(_expected_keys(summary))  # one task run per stage run
    assert set(states.values()) == {"Completed"}
    for tr in task_runs:
        stage = tr.name.split("-")[0]
        assert (GPU_TAG in tr.tags) == (stage in GPU_STAGES), (stage, tr.tags)
    with server.client() as c:
        assert c.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit == 2
        progress = c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["extract-progress"]))
        )
        tables = c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bankflow-stages"]))
        )
    extract_run = next(tr for tr in task_runs if tr.name.startswith("extract-"))
    mine = [a for a in progress if a.task_run_id == extract_run.id]
    assert len(mine) == 1 and mine[0].type == "progress" and float(mine[0].data) == 100.0
    assert any(a.flow_run_id == pipeline_runs.first for a in tables)
    features = work_root / summary["stages"]["extract"]["uri"] / "features"
    stored = {v for store in features.glob("*.zarr") for v in FeatureStore.open(store).videos()}
    assert len(stored) == N_BIGGER and _extracted_by(server, pipeline_runs.first) == stored
    logged = {m.split()[-2] for m in server.logs(pipeline_runs.first)
              if re.search(r"extract \S+: \S+ \(\d+/\d+\)$", m)}  # fmt: skip
    server.timings["first_videos_in_server_log"] = f"{len(logged)}/{len(stored)}"
    # The stage's own progress lines reach the task run's log on the server.
    assert any(re.search(r"extract train: \S+ \(\d+/\d+\)", m)
               for m in server.logs(pipeline_runs.first))  # fmt: skip


def test_b_identical_run_is_all_cached_and_fast(server, pipeline_runs):
    first = pipeline_runs.summaries["first"]
    states = _by_cache_key(server.task_runs(pipeline_runs.cached))
    assert set(states) == set(_expected_keys(first))
    assert set(states.values()) == {"Cached"}, states
    t = server.timings
    # What caching removes, the stages' work, drops under 10 % (measured ~0.2 %).
    assert t["cached_tasks_s"] < 0.10 * t["first_tasks_s"], t
    # The run as Prefect times it (flow-run start to end): the first one does ~2 min of
    # stage work, the cached one only lookups, server round trips and artifacts. The
    # wall time from `prefect deployment run` on adds what every run pays whatever it
    # does (the CLI's and the flow-run process's start and imports, the worker's pickup:
    # ~8 s on 2 cores); it is recorded in timings.json, not bounded.
    assert t["cached_flow_run_s"] < 0.10 * t["first_flow_run_s"], t


def test_c_changed_head_parameter_reruns_that_training_and_dependents(server, pipeline_runs):
    first = _expected_keys(pipeline_runs.summaries["first"])
    changed = pipeline_runs.summaries["changed"]
    states = _by_cache_key(server.task_runs(pipeline_runs.changed))
    assert set(states) == set(_expected_keys(changed))
    not_cached = {k for k, s in states.items() if s != "Cached"}
    # Exactly the stage runs whose key changed, and the training is one of them.
    assert not_cached == set(states) - set(first)
    stages = {k.split("-")[0] for k in not_cached}
    # A stage-2 head's parameter: its training and evaluation, nothing of stage 1.
    assert stages == {"train_bank", "evaluate", "report"}, not_cached
    assert {states[k] for k in not_cached} == {"Completed"}
    # Downstream of the training only: every re-run stage comes after it in the pipeline.
    order = [name.split(":")[0] for name, _ in iter_runs(changed)]
    assert all(order.index(s) >= order.index("train_bank") for s in stages)
    # (c') the stage deployment: the training re-runs, upstream cached, nothing downstream.
    single = _by_cache_key(server.task_runs(pipeline_runs.single))
    assert {k.split("-")[0]: s for k, s in single.items()} == {
        "detect": "Cached", "track": "Cached", "finetune": "Cached", "extract": "Cached",
        "train": "Completed"}  # fmt: skip


def _complete_videos(store: Path) -> set[str]:
    done = set()
    for meta in store.glob("videos/*/zarr.json"):
        with contextlib.suppress(ValueError, OSError):
            if json.loads(meta.read_text()).get("attributes", {}).get("complete"):
                done.add(meta.parent.name)
    return done


def _extracted_by(server: Server, run_id: uuid.UUID) -> set[str]:
    """Videos this flow run's extraction wrote (its ``extract-videos`` artifact)."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with server.client() as c:
        artifacts = c.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                key=ArtifactFilterKey(any_=["extract-videos"]),
            )
        )
    assert len(artifacts) <= 1, artifacts
    # None: the extraction was cached when this run got to it; markdown: it took part
    # but every video was done or held by another worker.
    if not artifacts or artifacts[0].type != "table":
        return set()
    (artifact,) = artifacts
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return {row["video"] for row in rows}


@pytest.fixture(scope="module")
def split_extraction(server):
    """(e) two workers, two runs of ``stage-extract/gpu`` on one key (tracks built first)."""
    params = _params(server, "we", *SLOW_EXTRACT, world="world2")
    prep = Worker(server, "prep")
    try:
        _timed_run(server, "stage-track/cpu", params)  # the world, detect, track
    finally:
        prep.stop()
    # Both workers poll the pool before the runs exist: each takes one (limit 1) at once.
    workers = [Worker(server, f"split-{i}") for i in range(2)]
    try:
        for w in workers:
            w.wait_started()
        runs = [server.run("stage-extract/gpu", params) for _ in range(2)]
        done = [server.wait(r) for r in runs]
    finally:
        for w in workers:
            w.stop()
    for run in done:
        assert run.state_name == "Completed", run.state
    return params, runs, done


def test_e_two_workers_split_one_extraction(server, split_extraction):
    params, runs, done = split_extraction
    (out,) = (Path(params["work_root"]) / "extract").glob("*/COMPLETE.json")
    stores = sorted(out.parent.glob("features/*.zarr"))
    videos = {v for s in stores for v in FeatureStore.open(s).videos()}
    assert len(videos) == N_BIGGER
    written = [_extracted_by(server, r) for r in runs]
    server.timings["split_videos_per_worker"] = [len(w) for w in written]
    assert written[0] and written[1], f"one worker did all the work: {written}"
    assert not written[0] & written[1], f"videos extracted twice: {written[0] & written[1]}"
    assert written[0] | written[1] == videos
    (a, b) = done
    assert a.start_time < b.end_time and b.start_time < a.end_time  # they ran at once
    for s in stores:
        assert FeatureStore.open(s).verify().ok


def test_d_killed_worker_resumes_without_recompute_bitwise(server, split_extraction):
    params_e, _, _ = split_extraction
    params = {**params_e, "work_root": str(server.root / "wd")}
    prep = Worker(server, "prep-d")
    try:
        _timed_run(server, "stage-track/cpu", params)
    finally:
        prep.stop()
    victim = Worker(server, "victim")
    killed_run = server.run("stage-extract/gpu", params)
    staging = Path(params["work_root"]) / "extract" / ".staging"
    deadline = time.monotonic() + 300
    while not any(_complete_videos(s) for s in staging.glob("*/features/*.zarr")):
        assert victim.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    victims = victim.kill()
    stores = sorted(staging.glob("*/features/*.zarr"))
    finished = {s.name: _complete_videos(s) for s in stores}
    n_done = sum(len(v) for v in finished.values())
    assert 1 <= n_done < N_BIGGER, f"killed too late: {finished}"
    claims = [p for s in stores for p in s.glob("locks/*.json")]
    assert claims, "the killed run left no claim: it was not extracting"
    before = {
        p: p.stat().st_mtime_ns
        for s in stores for v in finished[s.name] for p in (s / "videos" / v).rglob("*")
        if p.is_file()
    }  # fmt: skip
    server.timings["killed_after_videos"] = n_done

    rescuer = Worker(server, "rescuer")
    try:
        t0 = time.monotonic()
        resumed_run = server.run("stage-extract/gpu", params)
        run = server.wait(resumed_run, timeout=300)  # no lock may hold it up
        server.timings["resume_wall_s"] = round(time.monotonic() - t0, 2)
    finally:
        rescuer.stop()
    assert run.state_name == "Completed", server.logs(resumed_run)[-30:]
    with server.client() as c:
        assert c.read_flow_run(killed_run).state_name != "Completed"
    (out,) = (Path(params["work_root"]) / "extract").glob("*/COMPLETE.json")
    summary = json.loads(out.read_text())["summary"]
    for split, videos in finished.items():
        assert summary[split.removesuffix(".zarr")]["resumed"] == len(videos)
    redone = _extracted_by(server, resumed_run)
    assert not redone & set().union(*finished.values()), redone
    assert len(redone) == N_BIGGER - n_done
    # Finished videos were not rewritten: same files, untouched, now in the published dir.
    for path, mtime in before.items():
        published = out.parent / path.relative_to(staging / out.parent.name)
        assert published.stat().st_mtime_ns == mtime, published
    # Claims left behind can only be the killed process's, on videos it had finished (killed
    # between writing a video and releasing its claim): nothing the rescuer held.
    for claim in out.parent.glob("features/*.zarr/locks/*.json"):
        assert json.loads(claim.read_text())["pid"] in victims, claim
        assert claim.stem in set().union(*finished.values()), claim
    locks = Path(params["work_root"]) / ".prefect" / "results" / "locks"
    assert not list(locks.glob("*.lock")), list(locks.glob("*.lock"))
    # Bitwise equal to the uninterrupted extraction of the same key in (e).
    (ref,) = (Path(params_e["work_root"]) / "extract").glob("*/COMPLETE.json")
    assert ref.parent.name == out.parent.name  # same key
    for got in sorted(out.parent.glob("features/*.zarr")):
        want = ref.parent / "features" / got.name
        a, b = FeatureStore.open(got), FeatureStore.open(want)
        assert a.videos() == b.videos() and a.schema == b.schema
        for video in b.videos():
            fa, fb = a.read_video(video).arrays(), b.read_video(video).arrays()
            assert sorted(fa) == sorted(fb)
            for name in fb:
                assert fa[name].dtype == fb[name].dtype
                assert np.array_equal(fa[name], fb[name]), (video, name)
        chunks = sorted(p.relative_to(want) for p in want.rglob("*")
                        if p.is_file() and p.name != "zarr.json" and "locks" not in p.parts)  # fmt: skip
        assert chunks == sorted(p.relative_to(got) for p in got.rglob("*")
                                if p.is_file() and p.name != "zarr.json" and "locks" not in p.parts)  # fmt: skip
        for rel in chunks:
            assert (got / rel).read_bytes() == (want / rel).read_bytes(), rel


def _server_rss_kb(server: Server) -> int:
    """Resident memory of the Prefect server processes under ``bankflow serve`` (kB)."""
    total = 0
    for pid in descendants(server.serve_pid):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"server" in cmdline and b"worker" not in cmdline:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    return total


def test_f_eight_runs_submitted_at_once(server):
    """Load (issue 20): 8 runs of the tiny pipeline submitted at once to one worker with
    ``--limit 2``: all complete, each stage key computed once (the others Cached) — a
    self-coordinated one (extract) by at most the two runs that reach it together — no lock
    left behind; the server's RSS before and after is recorded in timings.json."""
    params = _params(server, "wl", world="world-load")
    prep = Worker(server, "prep-load")
    try:
        _timed_run(server, "stage-track/cpu", params)  # the world exists before the rush
    finally:
        prep.stop()
    rss_before = _server_rss_kb(server)
    worker = Worker(server, "load", limit=2)
    try:
        worker.wait_started()
        t0 = time.monotonic()
        run_ids = [server.run("bankflow-pipeline/demo", params) for _ in range(8)]
        runs = [server.wait(r, timeout=1800) for r in run_ids]
        server.timings["load_8_runs_wall_s"] = round(time.monotonic() - t0, 1)
    finally:
        worker.stop()
    server.timings["load_server_rss_kb"] = [rss_before, _server_rss_kb(server)]
    assert [r.state_name for r in runs] == ["Completed"] * 8
    overlap = sum(a.start_time < b.end_time and b.start_time < a.end_time
                  for i, a in enumerate(runs) for b in runs[i + 1:])  # fmt: skip
    # How many pairs of runs overlapped is recorded, not asserted: on a loaded machine the
    # worker may pick them up one after another, and that is not a failure.
    server.timings["load_overlapping_run_pairs"] = overlap
    states: dict[str, list[str]] = {}
    for run_id in run_ids:
        for name, state in _by_cache_key(server.task_runs(run_id)).items():
            states.setdefault(name, []).append(state)
    summary = json.loads((Path(params["work_root"]) / "summary.json").read_text())
    assert set(states) == set(_expected_keys(summary))
    for name, seen in states.items():
        stage = name.split("-")[0]
        computed = seen.count("Completed")
        if STAGES[stage].self_coordinated:
            # Runs that reach extraction together both run it, sharing its videos (per-video
            # claims, one publisher; stages.extract.workers): at most the worker's limit.
            assert 1 <= computed <= 2, (name, seen)
        else:
            # detect and track were computed by the preparation run: cached in all 8.
            assert computed == (0 if stage in ("detect", "track") else 1), (name, seen)
        assert seen.count("Cached") == 8 - computed, (name, seen)
    work = Path(params["work_root"])
    assert not list((work / ".prefect" / "results" / "locks").glob("*.lock"))
    assert not list(work.glob("*/*/features/*.zarr/locks/*.json"))
    # Nothing half-done or stale: no staging dir, no publication lock of extract's (it is
    # deleted once the key is published).
    assert not list(work.glob("*/.staging/*")), list(work.glob("*/.staging/*"))
