"""detect: person boxes on every keyframe.

This version imports existing proposals, as the papers do with the released AVA person
proposals: the dataset's ``person_boxes_<split>.csv`` (or any AVA CSV / MMAction2 pickle
named in the config). Boxes below ``min_score`` are dropped. On splits that have GT the
person detector's AP@0.5 and recall are measured and reported in the summary.

Output: ``persons.parquet`` with columns ``split, video, timestamp, x1, y1, x2, y2, score``
sorted by (split, video, timestamp, -score).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from stages.data import (
    BoxTable,
    Dataset,
    DatasetConfig,
    read_detections_csv,
    read_mmaction_proposals,
)
from stages.evaluate.breakdown import detector_ap
from stages.framework import Stage, StageContext, StageError

CODE_VERSION = "1"
PERSONS_FILE = "persons.parquet"


class DetectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["proposals"] = "proposals"
    # Per-split proposal files overriding the dataset's own (AVA CSV or MMAction2 .pkl).
    proposals: dict[str, str] = {}
    # Unpickling runs code: an MMAction2 pickle is read only with this opt-in.
    trust_pickle: bool = False
    min_score: float = 0.0
    splits: list[str] = ["train", "val"]


class DetectStageConfig(BaseModel):
    """What the detect stage's key covers: the dataset (with a fingerprint of its files)."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetConfig
    dataset_fingerprint: str
    detect: DetectConfig


def _load_proposals(dataset: Dataset, cfg: DetectConfig, split: str) -> BoxTable:
    override = cfg.proposals.get(split)
    if override is not None:
        path = Path(override)
        if path.suffix in {".pkl", ".pickle"}:
            return read_mmaction_proposals(path, trust_pickle=cfg.trust_pickle)
        return read_detections_csv(path)
    table = dataset.proposals(split)
    if table is None:
        raise StageError(
            f"detect: split {split!r} has no proposal file in {dataset.config.root} "
            "(set detect.proposals.<split>=FILE or add the dataset's person_boxes file)"
        )
    return table


def persons_table(split: str, boxes: BoxTable) -> pa.Table:
    order = np.lexsort((-boxes.score, boxes.timestamp, boxes.video.astype(str)))
    b = boxes.take(order)
    return pa.table(
        {
            "split": pa.array([split] * len(b), pa.string()),
            "video": pa.array(b.video.astype(str), pa.string()),
            "timestamp": pa.array(b.timestamp, pa.int64()),
            "x1": b.boxes[:, 0].astype(np.float32),
            "y1": b.boxes[:, 1].astype(np.float32),
            "x2": b.boxes[:, 2].astype(np.float32),
            "y2": b.boxes[:, 3].astype(np.float32),
            "score": b.score.astype(np.float32),
        }
    )


def compute(ctx: StageContext) -> dict[str, Any]:
    cfg: DetectStageConfig = ctx.config  # type: ignore[assignment]
    dataset = Dataset.open(cfg.dataset)
    tables, summary = [], {}
    for split in cfg.detect.splits:
        boxes = _load_proposals(dataset, cfg.detect, split)
        boxes = boxes.take(boxes.score >= cfg.detect.min_score)
        split_summary: dict[str, Any] = {
            "boxes": len(boxes),
            "keyframes": len(set(zip(boxes.video, boxes.timestamp, strict=True))),
        }
        gt = dataset.gt(split)
        if gt is not None and len(gt):
            ap, recall = detector_ap(gt, boxes, iou_threshold=0.5)
            split_summary.update(ap50=ap, recall=recall)
        summary[split] = split_summary
        tables.append(persons_table(split, boxes))
    pq.write_table(pa.concat_tables(tables), ctx.staging / PERSONS_FILE)
    return summary


STAGE = Stage(
    name="detect", code_version=CODE_VERSION, config_type=DetectStageConfig, compute=compute
)


def read_persons(uri: str | Path, split: str | None = None) -> pa.Table:
    table = pq.read_table(Path(uri) / PERSONS_FILE)
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table
