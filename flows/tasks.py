"""Prefect wrappers around stages: one task type whose cache key is the stage key.

Prefect's default cache policy hashes the task's source and the flow run id, so it never
hits across runs; here the cache key is exactly the stage key of
:func:`stages.framework.stage_key` (stage, CODE_VERSION, config section, input keys), so
a second run, in another process or on another worker sharing the work root, is served
from cache. Results (small :class:`StageRef` objects, never tensors) are persisted under
``<work_root>/.prefect/results`` unless ``BANKFLOW_RESULTS`` names a shared location.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel

from stages.catalog import STAGES
from stages.framework import StageError, StageRef, read_output, run_stage, stage_key


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


def results_dir(work_root: str | Path) -> Path:
    shared = os.environ.get("BANKFLOW_RESULTS")
    return Path(shared) if shared else Path(work_root) / ".prefect" / "results"


@dataclass
class StageKeyPolicy(CachePolicy):
    """Cache key = ``<stage>-<stage key>``; a record whose output vanished is dropped."""

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
        except StageError:
            published = False
        if not published:
            # Someone removed (or corrupted) the output: the cached reference would
            # point at nothing, so forget it and let the task run.
            (results_dir(call.work_root) / cache_key).unlink(missing_ok=True)
        return cache_key


@task(
    name="stage",
    cache_policy=StageKeyPolicy(),
    persist_result=True,
    result_serializer="json",
    task_run_name="{call.stage}",
)
def stage_task(call: StageCall) -> StageRef:
    """Run one stage (or find its published output) and return the reference."""
    return run_stage(
        STAGES[call.stage], call.typed_config(), call.inputs, call.work_root, force=call.force
    )


def submit_stage(call: StageCall) -> tuple[StageRef, bool]:
    """Run ``call`` as a Prefect task; returns (reference, served from Prefect's cache)."""
    storage = results_dir(call.work_root)
    storage.mkdir(parents=True, exist_ok=True)
    # The cache record (metadata + result) lives in the result storage; giving the policy
    # the same directory as key_storage would overwrite the result with its metadata.
    configured = stage_task.with_options(
        result_storage=storage,
        refresh_cache=call.force,
    )
    state = configured(call, return_state=True)
    ref = state.result()
    if not isinstance(ref, StageRef):
        ref = StageRef.model_validate(ref)
    cached = state.name == "Cached" or ref.cached
    return ref, cached
