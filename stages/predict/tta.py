"""Test-time augmentation: one trained head over several views of the same boxes, averaged.

The challenge entries of the papers (AVA-Kinetics report §2.4, PCCA report §3.2) test at
several short-side scales (256/288/320) and with horizontal flips and average the scores.
Here a *view* is an extraction of the same actors with ``extract.short_side`` and
``extract.flip`` changed: its own extract key, its own feature store. A flipped store
holds the flipped boxes its features were pooled from (``schema.clip["flip"]``), so a head
reading geometry (AMCR's positions, IGMN's layout) sees a consistent, mirrored scene.

:func:`predict_views` runs the head on every view (each view's stored boxes, as the head
was trained on such stores), checks that the views hold the same keyframes and, once the
flips are undone, the same boxes in the same order, and averages the class probabilities
per box. Boxes are reported in the original, unflipped coordinates.

The ``predict`` stage (:data:`STAGE`) does this for a train run and the extract runs of its
views and writes ``predictions/<split>.{csv,parquet}`` (the train stage's format, so the
evaluate stage reads it) and ``metrics.json`` with the mAP of every view and of the mean.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from featurestore import FeatureStore
from stages.data import BoxTable, Dataset, LabelMap
from stages.data.predictions import write_predictions_csv, write_predictions_parquet
from stages.evaluate.ava import evaluate_ava
from stages.evaluate.stage import PREDICTIONS_DIR
from stages.extract.stage import store_path
from stages.extract.video import flip_boxes
from stages.framework import StageContext, StageError
from stages.predict.config import PREDICT as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.predict.config import PredictStageConfig, TTAConfig, TTAView, view_extract_config  # noqa: F401 (re-exported)
from stages.train.data import KeyframeSource, SplitIndex, build_index, open_split
from stages.train.loop import TrainData, predict
from stages.train.run import TrainedRun
from stages.train.stage import predictions_table

METRICS_FILE = "metrics.json"
BOX_TOLERANCE = 1e-4  # stored boxes are float32; 1 - (1 - x) is exact to about 1e-7


def view_index(store: FeatureStore, labelmap: LabelMap) -> SplitIndex:
    """The store's keyframes and actors with boxes in unflipped coordinates."""
    index = build_index(store, None, labelmap)
    if store.schema.clip.get("flip"):
        index.boxes = flip_boxes(index.boxes)
    return index


def check_aligned(reference: SplitIndex, other: SplitIndex, name: str) -> None:
    """Raise unless ``other`` has ``reference``'s keyframes and boxes, in the same order."""
    where = f"TTA view {name}"
    if len(other) != len(reference) or not (
        np.array_equal(other.video, reference.video)
        and np.array_equal(other.timestamp, reference.timestamp)
    ):
        raise StageError(
            f"{where}: holds {len(other)} keyframes, the first view {len(reference)}; views "
            "must be extractions of the same actors (same detect/track inputs and split)"
        )
    if not np.array_equal(other.actor_offset, reference.actor_offset):
        k = int(np.flatnonzero(np.diff(other.actor_offset) != np.diff(reference.actor_offset))[0])
        raise StageError(
            f"{where}: keyframe {reference.video[k]},{int(reference.timestamp[k]):04d} has "
            f"{int(np.diff(other.actor_offset)[k])} actors, the first view "
            f"{int(np.diff(reference.actor_offset)[k])}"
        )
    diff = np.abs(other.boxes.astype(np.float64) - reference.boxes.astype(np.float64))
    bad = np.flatnonzero(diff.max(axis=1, initial=0.0) > BOX_TOLERANCE)
    if bad.size:
        row = int(bad[0])
        k = int(np.searchsorted(reference.actor_offset, row, side="right") - 1)
        raise StageError(
            f"{where}: actor {row - int(reference.actor_offset[k])} of keyframe "
            f"{reference.video[k]},{int(reference.timestamp[k]):04d} has box "
            f"{other.boxes[row].round(4).tolist()} (unflipped), the first view "
            f"{reference.boxes[row].round(4).tolist()}"
        )


def predict_views(
    head: nn.Module,
    stores: Sequence[FeatureStore],
    labelmap: LabelMap,
    exclusive: list[int],
    *,
    preload: bool = True,
) -> tuple[SplitIndex, np.ndarray, list[np.ndarray]]:
    """Average ``head``'s class probabilities over the views ``stores``.

    Args:
        head: a trained head (eval mode is set by :func:`stages.train.loop.predict`).
        stores: one feature store per view, all of the same actors of one split.
        labelmap: the head's classes in output order; exclusive: dense indices of the
            softmax (pose) classes.

    Returns:
        (index of the first view with unflipped boxes, mean scores float32 [A, C], the
        scores of each view [A, C]).

    Raises:
        StageError: no views, or the views do not hold the same boxes (names the first
            differing keyframe / actor).
    """
    if not stores:
        raise StageError("TTA: no views to predict on")
    reference: SplitIndex | None = None
    per_view = []
    for k, store in enumerate(stores):
        index = view_index(store, labelmap)
        if reference is None:
            reference = index
        else:
            check_aligned(reference, index, f"{k} ({store.url})")
        source = KeyframeSource(store, index, preload=preload)
        data = TrainData.for_prediction(source, exclusive)
        per_view.append(predict(head, source, data))
    assert reference is not None
    return reference, np.mean(per_view, axis=0).astype(np.float32), per_view


# ------------------------------------------------------------------------------ the stage


def view_names(inputs: Sequence[str]) -> list[str]:
    """The stage's view inputs (``view0``, ``view1``, ...) in order."""
    names = [n for n in inputs if n.startswith("view")]
    return sorted(names, key=lambda n: int(n.removeprefix("view")))


def compute(ctx: StageContext[PredictStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    split = cfg.split
    run = TrainedRun.open(ctx.input("train").path)
    labelmap, exclusive = run.classes()
    names = view_names(list(ctx.inputs))
    stores = [open_split(store_path(ctx.input(n).uri, split)) for n in names]
    index, scores, per_view = predict_views(run.build_head(), stores, labelmap, exclusive)
    dataset = Dataset.open(cfg.dataset)
    gt, excluded = dataset.gt(split), dataset.excluded(split)
    top_k = run.run_config.top_k

    def table(s: np.ndarray) -> BoxTable:
        return predictions_table(index, s, labelmap, top_k)

    mean = table(scores)
    result = evaluate_ava(gt, mean, labelmap, excluded)
    views = []
    for name, view_scores, store in zip(names, per_view, stores, strict=True):
        clip = store.schema.clip
        views.append(
            {
                "input": name,
                "short_side": clip.get("short_side"),
                "flip": bool(clip.get("flip")),
                "mAP": evaluate_ava(gt, table(view_scores), labelmap, excluded).mAP,
            }
        )
    out = ctx.staging / PREDICTIONS_DIR
    out.mkdir(exist_ok=True)
    write_predictions_csv(out / f"{split}.csv", mean)
    write_predictions_parquet(out / f"{split}.parquet", mean)
    metrics = {**result.to_json(), "views": views}
    (ctx.staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    ctx.log.info(
        "predict %s: TTA mAP %.4f over %d views (%s)",
        run.name,
        result.mAP,
        len(views),
        ", ".join(f"{v['mAP']:.4f}" for v in views),
    )
    csv = ctx.relpath(PREDICTIONS_DIR, f"{split}.csv")
    return {
        "name": run.name,
        "head": run.head_name,
        "split": split,
        "val_map": result.mAP,
        "group_map": result.groups,
        "views": views,
        "predictions_csv": csv,
    }
