"""The predict (test-time augmentation) and ensemble stages as the catalog sees them: config
sections, code versions and traits, without their compute, which is imported only when a
stage runs (docs/design.md §1).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stages.data.dataset import DatasetConfig
from stages.extract.config import ExtractConfig
from stages.framework import Stage
from stages.framework.keys import InKey


class TTAView(BaseModel):
    """One extraction view: the base extraction with these two fields replaced."""

    model_config = ConfigDict(extra="forbid")

    short_side: InKey[int | Literal["base"] | None] = "base"  # "base": the base extraction's
    flip: InKey[bool] = False


class TTAConfig(BaseModel):
    """``tta`` section: extra views of the evaluated split, averaged with the base one.

    E.g. the papers' multi-scale + flip test: ``views: [{flip: true}, {short_side: 288},
    {short_side: 288, flip: true}, {short_side: 320}, {short_side: 320, flip: true}]``.
    """

    model_config = ConfigDict(extra="forbid")

    views: InKey[list[TTAView]] = Field(default_factory=lambda: [TTAView(flip=True)], min_length=1)
    include_base: InKey[bool] = True  # the base extraction is one of the averaged views


def view_extract_config(base: ExtractConfig, view: TTAView, split: str) -> ExtractConfig:
    """The extract config of ``view``: the base one with short side and flip replaced,
    extracting only ``split``."""
    update: dict[str, Any] = {"flip": view.flip, "splits": [split]}
    if view.short_side != "base":
        update["short_side"] = view.short_side
    return base.model_copy(update=update)


class PredictStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    split: InKey[str]  # the evaluated split
    tta: InKey[TTAConfig]


class EnsembleRunConfig(BaseModel):
    """One ensemble (``ensemble.runs.<name>`` in the pipeline config)."""

    model_config = ConfigDict(extra="forbid")

    # model names (train / train_bank / rebalance runs); empty: every model, pipeline order
    members: InKey[list[str]] = []
    # per member; members not named weigh 1.0
    weights: InKey[dict[str, float]] = {}
    select: InKey[bool] = False  # greedy forward selection of the members on select_split
    select_split: InKey[str] = "val"
    max_members: InKey[int | None] = Field(None, ge=1)  # cap on the selected members
    split: InKey[str] = "val"  # the split whose predictions are averaged and evaluated
    match_iou: InKey[float] = Field(0.5, gt=0.0, le=1.0)  # IoU a box needs to match a reference box


class EnsembleSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: dict[str, EnsembleRunConfig] = {}


class EnsembleStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    name: InKey[str]
    members: InKey[list[str]]  # resolved member names, in order; the stage's inputs carry these
    run: InKey[EnsembleRunConfig]


PREDICT = Stage(
    name="predict",
    code_version="1",
    config_type=PredictStageConfig,
    compute="stages.predict.tta:compute",
    gpu=True,
    produces_model=True,
)
ENSEMBLE = Stage(
    name="ensemble",
    code_version="1",
    config_type=EnsembleStageConfig,
    compute="stages.predict.ensemble:compute",
)
