"""The report stage as the catalog sees it: its config section, code version, output file
names and inputs, without its compute (:mod:`stages.report.stage`), which is imported only
when it runs (docs/design.md §1).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stages.data.dataset import DatasetConfig
from stages.framework import Stage
from stages.framework.keys import InKey

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"


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


REPORT = Stage(
    name="report",
    code_version="1",
    config_type=ReportStageConfig,
    compute="stages.report.stage:compute",
)
