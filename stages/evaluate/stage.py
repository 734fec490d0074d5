"""evaluate: frame-mAP of a model's predictions against the dataset's GT.

Input ``predictions``: a stage output holding ``predictions/<split>.csv`` (AVA CSV with
scores, as every model-producing stage writes). Output: ``metrics.json``,
``metrics.md`` and ``per_class_ap.png`` (see :mod:`stages.evaluate.report`).

On a tube dataset (MultiSports, UCF101-24, JHMDB, the tube world) it reports frame-mAP
of the predictions and video-mAP of the tubes the ``link`` stage linked from them
(input ``tubes``: :mod:`stages.evaluate.link`), for the model and for the prior-only
baseline on the same boxes (:mod:`stages.evaluate.tube_eval`): ``metrics.json``,
``metrics.md``, ``tubes.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stages.data import BoxTable, Dataset, RowBlocks, read_detections_csv, stream_detections_csv
from stages.evaluate.ava import evaluate_ava
from stages.evaluate.config import EVALUATE as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.evaluate.config import EvaluateConfig, EvaluateStageConfig  # noqa: F401 (re-exported)
from stages.evaluate.link import PREDICTIONS_DIR, tubes_file
from stages.evaluate.report import write_ava_outputs
from stages.evaluate.tube_eval import (
    frame_detections,
    load_tubes,
    prior_table,
    score_tubes,
    write_tube_outputs,
)
from stages.framework import StageContext, StageError, verify_published_file


def predictions_csv(uri: str | Path, split: str) -> Path:
    """Where a model-producing stage keeps its predictions for ``split``."""
    return Path(uri) / PREDICTIONS_DIR / f"{split}.csv"


def compute(ctx: StageContext[EvaluateStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    split = cfg.evaluate.split
    dataset = Dataset.open(cfg.dataset)
    pred_path = predictions_csv(ctx.input("predictions").uri, split)
    if not pred_path.is_file():
        raise StageError(f"evaluate: {pred_path} does not exist (no {split!r} predictions)")
    verify_published_file(pred_path.parent.parent, f"{PREDICTIONS_DIR}/{pred_path.name}")
    if dataset.is_tubes:
        return _compute_tubes(ctx, dataset, pred_path)
    gt = dataset.gt(split)
    if gt is None:
        raise StageError(f"evaluate: split {split!r} of {cfg.dataset.root} has no GT file")
    labelmap = dataset.labelmap
    if cfg.dataset.evaluated_classes:
        labelmap = labelmap.subset(cfg.dataset.evaluated_classes)
    # Read a part at a time as it is evaluated: 9.2 M rows at AVA scale (issue 22).
    preds = stream_detections_csv(pred_path)

    def evaluate(gt_rows: BoxTable, pred_rows: RowBlocks) -> Any:
        return evaluate_ava(
            gt_rows,
            pred_rows,
            labelmap,
            dataset.excluded(split),
            protocol=cfg.evaluate.protocol,
            iou_threshold=cfg.evaluate.iou_threshold,
            ties=cfg.evaluate.ties,
        )

    result = evaluate(gt, preds)
    write_ava_outputs(result, labelmap, ctx.staging)
    summary = {"split": split, "mAP": result.mAP, "groups": result.groups}
    # AVA-Kinetics: the AVA and Kinetics parts separately too, as the report's tables
    sources = {str(v): dataset.source_of(str(v)) for v in np.unique(gt.video.astype(str))}
    if len(set(sources.values())) > 1:
        parts = {}
        for source in sorted(set(sources.values())):
            videos = [v for v, s in sources.items() if s == source]

            def of_part(rows: BoxTable, videos: list[str] = videos) -> np.ndarray:
                return np.isin(rows.video.astype(str), videos)

            part = evaluate(gt.take(of_part(gt)), preds.where(of_part))
            parts[source] = {"mAP": part.mAP, "groups": part.groups}
        summary["parts"] = parts
        (ctx.staging / "parts.json").write_text(json.dumps(parts, indent=2))
    return summary


def _compute_tubes(
    ctx: StageContext[EvaluateStageConfig], dataset: Dataset, pred_path: Path
) -> dict[str, Any]:
    cfg = ctx.config
    ev, split = cfg.evaluate, cfg.evaluate.split
    gt, videos = dataset.tube_gt, dataset.tube_videos(split)
    assert dataset.config.tubes is not None  # the caller's test: a tube dataset
    convention = dataset.config.tubes.convention
    preds = read_detections_csv(pred_path, strict=False)
    linked = ctx.input("tubes")  # the link stage's output of these predictions
    if linked.summary.get("split", split) != split:
        raise StageError(
            f"evaluate: input tubes {linked.uri} are of split "
            f"{linked.summary['split']!r}, not {split!r}"
        )

    def tubes(prior: bool) -> Any:
        path = tubes_file(linked.uri, split, prior=prior)
        verify_published_file(linked.uri, path.relative_to(linked.uri).as_posix())
        return load_tubes(path)

    model_tubes = tubes(prior=False)
    result = score_tubes(
        gt, frame_detections(preds, gt, videos), model_tubes, videos, convention=convention
    )
    write_tube_outputs(result, model_tubes, gt.labels, ctx.staging)
    prior = prior_table(preds, dataset.gt(ev.train_split).action, dataset.labelmap.ids)
    baseline = score_tubes(
        gt, frame_detections(prior, gt, videos), tubes(prior=True), videos, convention=convention
    )
    (ctx.staging / "prior_metrics.json").write_text(json.dumps(baseline.to_json(gt.labels)))
    return {
        "split": split,
        "mAP": result.frame_map,
        "frame_map": result.frame_map,
        **result.video,
        "tubes": result.n_tubes,
        "prior": {"frame_map": baseline.frame_map, **baseline.video},
    }
