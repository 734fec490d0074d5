"""The link and evaluate stages as the catalog sees them: config sections and code versions,
without their compute (:mod:`stages.evaluate.link`, :mod:`stages.evaluate.stage`), imported
only when they run (docs/design.md §1).
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
    # Tube datasets: the prior-only baseline's metrics on the same boxes (class
    # frequencies of the ``train_split`` GT; the link stage links its tubes).
    train_split: InKey[str] = "train"


class EvaluateStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    evaluate: InKey[EvaluateConfig]


class LinkStageConfig(BaseModel):
    """The link stage (tube datasets: a model's detections linked into tubes)."""

    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    split: InKey[str]  # the evaluated split (evaluate.split)
    train_split: InKey[str]  # the prior baseline's class frequencies (evaluate.train_split)
    link: InKey[LinkingConfig] = LinkingConfig()


LINK = Stage(
    name="link",
    code_version="1",
    config_type=LinkStageConfig,
    compute="stages.evaluate.link:compute",
)
EVALUATE = Stage(
    name="evaluate",
    # 2: equal scores in the official order by default; 3: tube datasets; 4: their tubes
    # from the link stage
    code_version="4",
    config_type=EvaluateStageConfig,
    compute="stages.evaluate.stage:compute",
)
