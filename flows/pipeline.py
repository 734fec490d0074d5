"""The ``bankflow-pipeline`` flow: the stages of docs/design.md §1 as Prefect tasks.

The order of stages and what feeds what is written once, in
:func:`stages.pipeline.run_pipeline`; this flow runs it with every stage submitted as a
Prefect task whose cache key is the stage key (:mod:`flows.tasks`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from flows.tasks import StageCall, submit_stage
from stages.config import load_config, packaged_config
from stages.framework import StageRef
from stages.pipeline import PipelineRun, iter_runs, run_pipeline


def prefect_runner(
    stage: str, config: BaseModel, inputs: dict[str, StageRef], work_root: Path, force: bool
) -> tuple[StageRef, bool]:
    call = StageCall(
        stage=stage,
        config=config.model_dump(mode="json"),
        inputs=inputs,
        work_root=str(work_root),
        force=force,
    )
    return submit_stage(call)


@flow(name="bankflow-pipeline")
def pipeline(
    config: str = str(packaged_config("demo")),
    overrides: list[str] | None = None,
    work_root: str = "work",
    until: str | None = None,
    force: list[str] | None = None,
    cache: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline described by ``config`` (a YAML path) with ``overrides``; ``cache``
    (else ``BANKFLOW_CACHE``, else the config's ``cache.url``) names the team's stage cache."""
    cfg = load_config(config, overrides or [])
    run = PipelineRun(
        config=cfg,
        work_root=Path(work_root),
        runner=prefect_runner,
        until=until,
        force=frozenset(force or []),
        cache_url=cache,
    )
    summary = run_pipeline(run)
    publish_artifacts(summary)
    return summary


def _artifact_key(text: str) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes only.
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def publish_artifacts(summary: dict[str, Any]) -> None:
    """Tables of models and stage runs, each evaluation's Markdown report and the pipeline
    report, on the run."""
    models = [
        {"model": name, **{k: m.get(k) for k in ("head", "bank", "val_map", "prior_map")}}
        for name, m in summary.get("models", {}).items()
    ]
    if models:
        create_table_artifact(models, key="bankflow-models", description="val frame-mAP per model")
    stages = [
        {"stage": name, "key": rec["key"], "cached": rec["cached"], "seconds": rec["seconds"]}
        for name, rec in iter_runs(summary)
    ]
    create_table_artifact(stages, key="bankflow-stages", description="stage keys and timings")
    for name, rec in summary["stages"].get("train", {}).get("runs", {}).items():
        history = rec["summary"].get("history") or []
        if history:
            create_table_artifact(
                history,
                key=_artifact_key(f"training-{name}"),
                description=f"loss and val frame-mAP per epoch of {name}",
            )
    for name, rec in summary["stages"].get("evaluate", {}).get("runs", {}).items():
        report = Path(rec["uri"]) / "metrics.md"
        if report.is_file():
            create_markdown_artifact(report.read_text(), key=_artifact_key(f"evaluation-{name}"))
    # The run's report (stages.report.stage): its Markdown; the PNGs and HTML sit beside it.
    markdown = Path((summary.get("report") or {}).get("markdown", ""))
    if markdown.is_file():
        create_markdown_artifact(
            markdown.read_text(),
            key="bankflow-report",
            description=f"pipeline report ({markdown.parent}; plots in {markdown.parent}/plots)",
        )
