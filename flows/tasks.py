"""Prefect wrappers around stages: one task type whose cache key is the stage key.

Prefect's default cache policy hashes the task's source and the flow run id, so it never
hits across runs; here the cache key is exactly the stage key of
:func:`stages.framework.stage_key` (stage, CODE_VERSION, config section, input keys), so
a second run, in another process or on another worker sharing the work root, is served
from cache. Results (small :class:`StageRef` objects, never tensors) are persisted under
``<work_root>/.prefect/results`` unless ``BANKFLOW_RESULTS`` names a shared location: a
path (local, NFS) or an fsspec URL (``s3://bucket/bankflow/results``).

Isolation: two workers must not compute the same key at once, so a stage task holds a
lock on its cache key while it runs (Prefect's SERIALIZABLE isolation) — except stages
whose :class:`stages.framework.Stage` is ``self_coordinated``, which coordinate concurrent processes on one key
themselves (extraction: per-video claims in the store, one publisher) and would lose that
parallelism behind one lock. Locks are :class:`flows.locks.ExpiringLockManager` files in
``<results>/locks`` (or ``BANKFLOW_LOCKS``): a lock left by a killed worker is broken.

GPU: stages whose ``Stage.gpu`` is set carry the :data:`GPU_TAG` tag (``bankflow serve`` gives
it a concurrency limit = the cluster's GPUs) and claim a per-worker GPU slot
(:func:`flows.locks.claim_gpu_slot`) before they run.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import fsspec
from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import RemoteFileSystem
from prefect.logging import get_run_logger
from prefect.transactions import IsolationLevel
from pydantic import BaseModel

from flows.locks import ExpiringLockManager, claim_gpu_slot
from stages.catalog import STAGES
from stages.framework import (
    StageError,
    StageRef,
    output_relpath,
    read_output,
    resolve_record,
    run_stage,
    stage_key,
)
from stages.framework.distributed import config_devices

# Read off the stages' traits (stages.framework.Stage): tags, slots, pools, locks.
GPU_STAGES = frozenset(name for name, stage in STAGES.items() if stage.gpu)
GPU_TAG = "gpu"
# Stages whose compute lets several processes share one key (see module docstring).
SELF_COORDINATED_STAGES = frozenset(name for name, s in STAGES.items() if s.self_coordinated)

log = logging.getLogger("bankflow.flows")


class StageCall(BaseModel):
    """Everything that decides a stage run (the Prefect task's single parameter)."""

    stage: str
    config: dict[str, Any]
    inputs: dict[str, StageRef] = {}
    work_root: str
    force: bool = False

    def typed_config(self) -> BaseModel:
        return STAGES[self.stage].config_type.model_validate(self.config)

    def key(self) -> str:
        return stage_key(STAGES[self.stage], self.typed_config(), self.inputs)


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def results_location(work_root: str | Path) -> str:
    """Where cache records go: ``BANKFLOW_RESULTS`` (path or fsspec URL) or the work root."""
    shared = os.environ.get("BANKFLOW_RESULTS")
    if shared:
        return shared.removeprefix("file://") if not _is_url(shared) else shared
    return str(Path(work_root) / ".prefect" / "results")


def locks_location(work_root: str | Path) -> str:
    """Lock files: ``BANKFLOW_LOCKS`` or ``<results>/locks`` (must allow exclusive create)."""
    return os.environ.get("BANKFLOW_LOCKS") or f"{results_location(work_root).rstrip('/')}/locks"


_SAVED_STORAGE: dict[tuple[str, str], RemoteFileSystem] = {}


def result_storage(work_root: str | Path) -> Path | RemoteFileSystem:
    """A directory, or for a URL a ``RemoteFileSystem`` block, saved on the Prefect server
    when called in a flow run (Prefect refuses unsaved storage blocks for cache records).

    The block holds only the URL: credentials stay where fsspec/botocore read them.
    """
    location = results_location(work_root)
    if _is_url(location):
        block = RemoteFileSystem(basepath=location)
        from prefect.context import FlowRunContext
        from prefect.settings import PREFECT_API_URL

        if FlowRunContext.get() is None:
            return block
        cache_key = (str(PREFECT_API_URL.value()), location)
        if cache_key not in _SAVED_STORAGE:
            name = "bankflow-results-" + hashlib.sha256(location.encode()).hexdigest()[:12]
            block.save(name, overwrite=True)
            # Called sync: the block, not a coroutine (Prefect's async_dispatch types both).
            _SAVED_STORAGE[cache_key] = cast(RemoteFileSystem, RemoteFileSystem.load(name))
        return _SAVED_STORAGE[cache_key]
    Path(location).mkdir(parents=True, exist_ok=True)
    return Path(location)


def _forget_record(work_root: str, cache_key: str, why: str) -> None:
    """Drop the cache record ``cache_key`` (logging one line when there was one)."""
    location = results_location(work_root)
    fs, root = fsspec.core.url_to_fs(location)
    path = f"{root.rstrip('/')}/{cache_key}"
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
        log.warning(
            "cache record %s dropped: %s; looking the key up in %s", cache_key, why, work_root
        )


def cache_record(ref: StageRef) -> StageRef:
    """What a cache record holds: stage, key, digest and summary, the output named relative
    to the work root (never where it lived: the record may serve a copy of the root, a
    root mounted elsewhere, or another root sharing ``BANKFLOW_RESULTS``)."""
    return ref.model_copy(update={"uri": output_relpath(ref.stage, ref.key)})


@dataclass
class StageKeyPolicy(CachePolicy):
    """Cache key = ``<stage>-<stage key>``; a record whose output is not in this run's
    work root (missing, incomplete, changed since publication) is dropped."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        call = inputs["call"]
        if not isinstance(call, StageCall):
            call = StageCall.model_validate(call)
        key = call.key()
        cache_key = f"{call.stage}-{key}"
        try:
            published = read_output(call.work_root, call.stage, key) is not None
            why = f"no output {output_relpath(call.stage, key)} in this work root"
        except StageError:
            published = False
            why = f"{output_relpath(call.stage, key)} no longer matches its manifest"
        if not published:
            # The record would name an output this work root does not have: forget it and
            # let the task find the key here or compute it.
            _forget_record(call.work_root, cache_key, why)
        return cache_key


def cache_policy(stage: str, work_root: str | Path) -> CachePolicy:
    """The stage-key policy, serializable behind an expiring lock unless self-coordinated."""
    if STAGES[stage].self_coordinated:
        return StageKeyPolicy().configure(isolation_level=IsolationLevel.READ_COMMITTED)
    return StageKeyPolicy().configure(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=ExpiringLockManager(locks_location(work_root)),
    )


_PROGRESS = re.compile(r"^extract (\S+): (\S+) \((\d+)/(\d+)\)$")


class StageLogBridge(logging.Handler):
    """Forwards a stage's ``bankflow.*`` log records to the Prefect task run's log, and
    turns extraction's per-video lines into a progress artifact.

    Stages log with the standard library only (they never import Prefect); records may
    come from a stage's writer thread, so the run logger and artifact id are bound here,
    in the task's thread. At the end, :meth:`publish_written` adds a table of the videos
    this process extracted (several workers may share one extraction).
    """

    def __init__(self, stage: str, splits: list[str]) -> None:
        super().__init__(level=logging.INFO)
        self.run_logger = get_run_logger()
        self._context = contextvars.copy_context()
        self.splits = splits
        self.done: dict[str, tuple[int, int]] = {}
        self.written: list[dict[str, str]] = []  # videos this process extracted
        self.progress_id = None
        if stage == "extract" and splits:
            self.progress_id = cast(
                UUID,
                create_progress_artifact(  # sync: a UUID
                    0.0, key="extract-progress", description="videos extracted (all splits)"
                ),
            )

    def emit(self, record: logging.LogRecord) -> None:
        # A writer thread has none of the task's context (settings, client, run): lend it a
        # copy, so its lines reach the same run log and API as the task thread's.
        self._context.copy().run(self._forward, record)

    def _forward(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            self.run_logger.log(record.levelno, "%s: %s", record.name, message)
            match = _PROGRESS.match(message)
            if match and self.progress_id is not None:
                split, video, finished, total = match.groups()
                self.written.append({"split": split, "video": video})
                self.done[split] = (int(finished), int(total))
                fractions = [d / t for d, t in (self.done.get(s, (0, 1)) for s in self.splits)]
                update_progress_artifact(
                    self.progress_id,
                    100.0 * sum(fractions) / len(fractions),
                    description=f"extract {split}: {finished}/{total} videos (last {video})",
                )
        except Exception:  # artifacts are a view; never fail the stage for them
            self.handleError(record)

    def publish_written(self) -> None:
        if self.progress_id is None:
            return
        who = f"{socket.gethostname()}:{os.getpid()}"
        if self.written:
            create_table_artifact(
                self.written,
                key="extract-videos",
                description=f"videos extracted by {who} in this task run",
            )
        else:
            create_markdown_artifact(
                f"No video extracted by {who}: all were done or held by other workers.",
                key="extract-videos",
            )


@task(
    name="stage",
    cache_policy=StageKeyPolicy(),
    persist_result=True,
    result_serializer="json",
)
def stage_task(call: StageCall) -> StageRef:
    """Run one stage (or find its published output) and return the reference."""
    config = call.typed_config()
    if STAGES[call.stage].gpu:
        claim_gpu_slot(count=config_devices(config))
    splits = list(getattr(getattr(config, "extract", None), "splits", None) or [])
    logger = logging.getLogger("bankflow")
    bridge = StageLogBridge(call.stage, splits)
    level = logger.level
    logger.addHandler(bridge)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    force = call.force
    try:
        read_output(call.work_root, call.stage, call.key())
    except StageError as exc:
        # A published output changed since (a tampered or half-copied file): never used;
        # moved aside to <stage>/.replaced/ and computed anew.
        log.warning("stage %s: %s; recomputing", call.stage, exc)
        force = True
    try:
        ref = run_stage(STAGES[call.stage], config, call.inputs, call.work_root, force=force)
    finally:
        logger.removeHandler(bridge)
        logger.setLevel(level)
    bridge.publish_written()
    return cache_record(ref)


def submit_stage(call: StageCall) -> tuple[StageRef, bool]:
    """Run ``call`` as a Prefect task; returns (reference, served from Prefect's cache)."""
    # The cache record (metadata + result) lives in the result storage; giving the policy
    # the same directory as key_storage would overwrite the result with its metadata.
    configured = stage_task.with_options(
        result_storage=result_storage(call.work_root),
        cache_policy=cache_policy(call.stage, call.work_root),
        refresh_cache=call.force,
        task_run_name=f"{call.stage}-{call.key()}",  # the cache key: findable in the UI/API
        tags=[f"stage:{call.stage}", *([GPU_TAG] if STAGES[call.stage].gpu else [])],
    )
    state = configured(call, return_state=True)
    ref = resolve_record(_as_ref(state.result()), call.work_root)
    if ref is None:
        # A record of this key whose digest is not that of the output here (the output was
        # recomputed or replaced in this work root, or the record came from another root
        # sharing the results store): drop it and find or compute the key here.
        _forget_record(
            call.work_root,
            f"{call.stage}-{call.key()}",
            f"its digest is not that of {output_relpath(call.stage, call.key())} here",
        )
        state = configured.with_options(refresh_cache=True)(call, return_state=True)
        ref = resolve_record(_as_ref(state.result()), call.work_root)
        if ref is None:
            raise StageError(
                f"stage {call.stage!r} (key {call.key()}): no verified output at "
                f"{Path(call.work_root) / output_relpath(call.stage, call.key())} after running it"
            )
    cached = state.name == "Cached" or ref.cached
    return ref, cached


def _as_ref(result: Any) -> StageRef:
    return result if isinstance(result, StageRef) else StageRef.model_validate(result)
