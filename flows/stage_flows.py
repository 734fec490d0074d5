"""One Prefect flow per stage: ``stage-detect``, ``stage-extract``, ``stage-train``, …

Each is generated from the stage catalog, so a stage added to
:data:`stages.catalog.STAGE_ORDER` gets its flow (and, listed in ``prefect.yaml``, its
deployment) without code here changing. A stage flow takes the same parameters as the
pipeline (a config path and ``key=value`` overrides) and runs the pipeline up to that
stage, exactly as ``bankflow stage NAME`` does: upstream stages are served from their
cached outputs (or built when missing), the stage itself runs — or is served from cache
unless ``force``. Its entrypoint is ``flows/stage_flows.py:stage_<name>``.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow

from flows.pipeline import pipeline
from stages.catalog import STAGE_ORDER
from stages.config import packaged_config

DEMO_CONFIG = str(packaged_config("demo"))


def flow_name(stage: str) -> str:
    return f"stage-{stage}"


def make_stage_flow(stage: str) -> Flow:
    """The flow that (re)runs ``stage`` and, first, whatever it needs upstream."""

    def run_one_stage(
        config: str = DEMO_CONFIG,
        overrides: list[str] | None = None,
        work_root: str = "work",
        force: bool = False,
    ) -> dict[str, Any]:
        return pipeline.fn(
            config=config,
            overrides=overrides,
            work_root=work_root,
            until=stage,
            force=[stage] if force else [],
        )

    run_one_stage.__name__ = run_one_stage.__qualname__ = f"stage_{stage}"
    run_one_stage.__doc__ = (
        f"Run the {stage!r} stage of the pipeline in ``config`` (a YAML path) with "
        "``overrides`` (``key=value``); upstream stages come from cache; ``force`` "
        "recomputes this stage."
    )
    return flow(name=flow_name(stage), log_prints=True)(run_one_stage)


STAGE_FLOWS: dict[str, Flow] = {name: make_stage_flow(name) for name in STAGE_ORDER}
# Module attributes ``stage_<name>``: the deployments' entrypoints.
globals().update({f"stage_{name}": f for name, f in STAGE_FLOWS.items()})
