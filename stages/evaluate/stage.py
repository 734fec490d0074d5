"""evaluate: frame-mAP of a model's predictions against the dataset's GT.

Input ``predictions``: a stage output holding ``predictions/<split>.csv`` (AVA CSV with
scores, as every model-producing stage writes). Output: ``metrics.json``,
``metrics.md`` and ``per_class_ap.png`` (see :mod:`stages.evaluate.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from stages.data import Dataset, DatasetConfig, read_detections_csv
from stages.evaluate.ava import evaluate_ava
from stages.evaluate.report import write_ava_outputs
from stages.framework import Stage, StageContext, StageError
from stages.keys import InKey

CODE_VERSION = "1"
PREDICTIONS_DIR = "predictions"


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: InKey[str] = "val"
    protocol: InKey[Literal["2018", "2019", "2020"]] = "2019"
    iou_threshold: InKey[float] = 0.5


class EvaluateStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    evaluate: InKey[EvaluateConfig]


def predictions_csv(uri: str | Path, split: str) -> Path:
    """Where a model-producing stage keeps its predictions for ``split``."""
    return Path(uri) / PREDICTIONS_DIR / f"{split}.csv"


def compute(ctx: StageContext) -> dict[str, Any]:
    cfg: EvaluateStageConfig = ctx.config  # type: ignore[assignment]
    split = cfg.evaluate.split
    dataset = Dataset.open(cfg.dataset)
    pred_path = predictions_csv(ctx.input("predictions").uri, split)
    if not pred_path.is_file():
        raise StageError(f"evaluate: {pred_path} does not exist (no {split!r} predictions)")
    gt = dataset.gt(split)
    if gt is None:
        raise StageError(f"evaluate: split {split!r} of {cfg.dataset.root} has no GT file")
    labelmap = dataset.labelmap
    if cfg.dataset.evaluated_classes:
        labelmap = labelmap.subset(cfg.dataset.evaluated_classes)
    result = evaluate_ava(
        gt,
        read_detections_csv(pred_path, strict=False),
        labelmap,
        dataset.excluded(split),
        protocol=cfg.evaluate.protocol,
        iou_threshold=cfg.evaluate.iou_threshold,
    )
    write_ava_outputs(result, labelmap, ctx.staging)
    return {"split": split, "mAP": result.mAP, "groups": result.groups}


STAGE = Stage(
    name="evaluate", code_version=CODE_VERSION, config_type=EvaluateStageConfig, compute=compute
)
