"""The evaluate stage as the catalog sees it: its config section and code version, without
its compute (:mod:`stages.evaluate.stage`), imported only when it runs (docs/design.md §1).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from stages.data.dataset import DatasetConfig
from stages.evaluate.tube_eval import LinkingConfig
from stages.framework import Stage
from stages.framework.keys import InKey


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: InKey[str] = "val"
    protocol: InKey[Literal["2018", "2019", "2020"]] = "2019"
    iou_threshold: InKey[float] = 0.5
    # Order of equal scores: "official" = the ActivityNet evaluator's (published
    # numbers), "stable" = file order. See stages.evaluate.ava.
    ties: InKey[Literal["official", "stable"]] = "official"
    # Tube datasets: linking of per-frame detections into tubes, and the prior-only
    # baseline's tube metrics on the same boxes (from the ``train_split`` GT).
    linking: InKey[LinkingConfig] = LinkingConfig()
    train_split: InKey[str] = "train"


class EvaluateStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    evaluate: InKey[EvaluateConfig]


EVALUATE = Stage(
    name="evaluate",
    code_version="3",  # 2: equal scores in the official order by default; 3: tube datasets
    config_type=EvaluateStageConfig,
    compute="stages.evaluate.stage:compute",
)
