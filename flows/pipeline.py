"""The ``bankflow-pipeline`` flow: the stages of DESIGN §1 as Prefect tasks.

The order of stages and what feeds what is written once, in
:func:`stages.pipeline.run_pipeline`; this flow runs it with every stage submitted as a
Prefect task whose cache key is the stage key (:mod:`flows.tasks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel

from flows.tasks import StageCall, submit_stage
from stages.config import load_config, packaged_config
from stages.framework import StageRef
from stages.pipeline import PipelineRun, run_pipeline


def prefect_runner(
    stage: str, config: BaseModel, inputs: dict[str, StageRef], work_root: Path, force: bool
) -> tuple[StageRef, bool]:
    call = StageCall(
        stage=stage, config=config.model_dump(mode="json"), inputs=inputs,
        work_root=str(work_root), force=force,
    )  # fmt: skip
    return submit_stage(call)


@flow(name="bankflow-pipeline")
def pipeline(
    config: str = str(packaged_config("demo")),
    overrides: list[str] | None = None,
    work_root: str = "work",
    until: str | None = None,
    force: list[str] | None = None,
) -> dict[str, Any]:
    """Run the pipeline described by ``config`` (a YAML path) with ``overrides``."""
    cfg = load_config(config, overrides or [])
    run = PipelineRun(
        config=cfg, work_root=Path(work_root), runner=prefect_runner,
        until=until, force=frozenset(force or []),
    )  # fmt: skip
    return run_pipeline(run)
