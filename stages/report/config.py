"""The report stage as the catalog sees it: its config section, code version, output file
names and inputs, without its compute (:mod:`stages.report.stage`), which is imported only
when it runs (docs/design.md §1).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from stages.data.dataset import DatasetConfig
from stages.framework import Stage, StageRef
from stages.framework.keys import InKey

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
MODEL_STAGES = ("train", "train_bank", "rebalance", "predict")  # "predict": TTA runs


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: InKey[str] = "bankflow report"
    # head/tail size; None: the reports' rule (20, or a third with fewer than 60 classes)
    head_tail_k: InKey[int | None] = Field(None, ge=1)
    train_split: InKey[str] = "train"  # class frequencies (head/tail) come from its GT


class ReportStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    split: InKey[str]  # the evaluated split
    report: InKey[ReportConfig] = ReportConfig()


def report_inputs(refs: Mapping[str, StageRef]) -> dict[str, StageRef]:
    """The report's inputs from a pipeline's recorded stage runs: model-producing runs as
    ``model:<name>``, every other run under its record name (``detect``,
    ``evaluate:<name>``, ``ensemble:<name>``, ``dump:<name>``, …)."""
    out: dict[str, StageRef] = {}
    for record_name, ref in refs.items():
        stage, _, label = record_name.partition(":")
        if stage == "report":
            continue
        out[f"model:{label}" if stage in MODEL_STAGES and label else record_name] = ref
    return out


REPORT = Stage(
    name="report",
    code_version="1",
    config_type=ReportStageConfig,
    compute="stages.report.stage:compute",
)
