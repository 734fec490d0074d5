"""train: a stage-1 head over cached features (one stage run per head config).

Reads the extract stage's feature stores, labels actors from the GT (IoU >= 0.5), trains
the head with the one loop of :mod:`stages.train.loop` (resumable per epoch), measures
val frame-mAP every epoch with the project's evaluator, and writes the val predictions
as AVA CSV and Parquet (``predictions/<split>.csv``), which the evaluate stage and
ensembles read. The prior-only baseline (every box scored by the training class
frequencies) is measured on the same boxes for comparison and reported beside the head's
mAP (``prior_map`` in the summary, ``prior`` in ``metrics.json``).

Output files: ``head.pt`` (weights + build arguments), ``history.json`` (per epoch),
``events.jsonl`` and ``tensorboard/`` (the same, written as each epoch ends), ``metrics.json``,
``predictions/<val split>.{csv,parquet}`` and ``checkpoints/epoch_<last>.pt``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from functools import partial
from typing import Any, Literal

import numpy as np
import torch

from featurestore import format_bytes
from models.heads import HeadData, build_from_data, head_reads
from stages.data import BoxTable, Dataset, DatasetConfig, LabelMap, PredictionRows
from stages.data.predictions import write_predictions_csv, write_predictions_parquet
from stages.evaluate.ava import evaluate_ava
from stages.evaluate.stage import PREDICTIONS_DIR
from stages.extract.stage import store_path
from stages.framework import StageContext, StageError
from stages.framework.distributed import is_main, run_data_parallel
from stages.train.config import (  # noqa: F401 (re-exported)
    RECIPE_OPTIM_FIELDS,
    HeadRunConfig,
    TrainSection,
    TrainStageConfig,
)
from stages.train.config import TRAIN as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.train.data import (
    KeyframeSource,
    SplitIndex,
    TrainingSplits,
    open_training_splits,
)
from stages.train.loop import TrainData, predict, train
from stages.train.run import HEAD_FILE as HEAD_FILE  # re-exported: tests and tools read it here
from stages.train.run import save_head_file

HISTORY_FILE = "history.json"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"

log = logging.getLogger("bankflow.train")


def evaluated_labelmap(dataset: Dataset, config: DatasetConfig) -> LabelMap:
    labelmap = dataset.labelmap
    if config.evaluated_classes:
        labelmap = labelmap.subset(config.evaluated_classes)
    return labelmap


def prediction_rows(
    index: SplitIndex, scores: np.ndarray, labelmap: LabelMap, top_k: int | None
) -> PredictionRows:
    """One row per (actor box, class) — AVA's prediction format — optionally top-k only,
    made a block at a time by whoever reads them (evaluation, the writers).

    ``scores`` float [A, C] for the A actors of ``index`` (classes in label-map order).
    Rows are grouped by actor in index order; with ``top_k`` each actor keeps its k best
    classes, best first (ties: label-map order), so there are A × min(k, C) rows.
    """
    n_actors, n_classes = scores.shape
    if n_actors != len(index.boxes) or n_classes != len(labelmap):
        raise ValueError(
            f"scores have shape {scores.shape}; expected ({len(index.boxes)} actors, "
            f"{len(labelmap)} classes)"
        )
    return PredictionRows(
        video=index.video,
        timestamp=index.timestamp,
        offset=np.asarray(index.actor_offset, dtype=np.int64),
        boxes=index.boxes,
        scores=scores,
        class_ids=np.asarray(labelmap.ids, dtype=np.int64),
        top_k=top_k,
    )


def predictions_table(
    index: SplitIndex, scores: np.ndarray, labelmap: LabelMap, top_k: int | None
) -> BoxTable:
    """:func:`prediction_rows`, every row at once."""
    return prediction_rows(index, scores, labelmap, top_k).table()


def prior_scores(train_labels: np.ndarray, n_actors: int) -> np.ndarray:
    """The prior-only baseline: float32 [n_actors, C], every actor scored by the fraction
    of training actors (``train_labels`` multi-hot [A, C]) that carry each class."""
    freq = train_labels.mean(axis=0) if len(train_labels) else np.zeros(train_labels.shape[1])
    return np.tile(freq.astype(np.float32), (n_actors, 1))


def features_nbytes(schema: Any, n_keyframes: int, n_actors: int, arrays: Any) -> int:
    """Bytes that ``arrays`` of ``n_keyframes`` keyframes with ``n_actors`` actors take in RAM."""
    item = np.dtype(schema.dtype).itemsize
    per_row = {
        "context": (n_keyframes, schema.context_shape),
        "pooled": (n_actors, (schema.pooled_dim,)),
        "roi": (n_actors, schema.roi_shape),
        "roi_t": (n_actors, schema.roi_t_shape),
    }
    total = 0
    for name in arrays:
        rows, shape = per_row[name]
        if shape is not None:
            total += rows * int(np.prod(shape)) * item
    return total


def feature_sources(
    splits: TrainingSplits,
    arrays: Collection[str],
    preload: bool | Literal["auto"],
    preload_max_gb: float,
    name: str,
) -> tuple[KeyframeSource, KeyframeSource]:
    """Train and val sources reading ``arrays``; ``preload="auto"`` holds them in RAM when
    both splits' arrays take at most ``preload_max_gb`` (the pooled rows of all of AVA do,
    its context maps do not: those are then read from the store per batch)."""
    if preload == "auto":
        held = sum(
            features_nbytes(store.schema, len(index), len(index.boxes), arrays)
            for store, index in (
                (splits.train_store, splits.train_index),
                (splits.val_store, splits.val_index),
            )
        )
        preload = held <= preload_max_gb * 1e9
        log.info(
            "%s: %s (%s) %s",
            name,
            ", ".join(sorted(arrays)),
            format_bytes(held),
            "preloaded into RAM" if preload else "read from the store per batch",
        )
    return (
        KeyframeSource(splits.train_store, splits.train_index, preload=preload, arrays=arrays),
        KeyframeSource(splits.val_store, splits.val_index, preload=preload, arrays=arrays),
    )


def stored_arrays(schema: Any) -> set[str]:
    """The large arrays a feature store holds (what a head that declares no reads gets)."""
    optional = {"roi": schema.roi_shape, "roi_t": schema.roi_t_shape}
    return {"context", "pooled"} | {name for name, shape in optional.items() if shape}


def compute(ctx: StageContext[TrainStageConfig]) -> dict[str, Any]:
    """The stage on ``run.optim.devices`` data-parallel processes (stages.framework.distributed)."""
    devices = ctx.config.run.optim.devices
    return run_data_parallel(compute_rank, ctx, devices=devices)


def compute_rank(ctx: StageContext[TrainStageConfig]) -> dict[str, Any]:
    """One rank's part: every rank trains; rank 0 evaluates and writes the outputs."""
    cfg = ctx.config
    run = cfg.run
    dataset = Dataset.open(cfg.dataset)
    labelmap = evaluated_labelmap(dataset, cfg.dataset)
    features_uri = ctx.input("extract").uri
    splits = open_training_splits(
        partial(store_path, features_uri),
        dataset,
        labelmap,
        train_split=run.train_split,
        val_split=run.val_split,
        label_iou=run.label_iou,
        who="train",
    )
    train_store = splits.train_store
    train_index, val_index, exclusive = splits.train_index, splits.val_index, splits.exclusive
    schema = train_store.schema
    torch.manual_seed(run.optim.seed)
    head_data = HeadData(
        in_channels=schema.pooled_dim, num_classes=len(labelmap), exclusive=tuple(exclusive)
    )
    model, _ = build_from_data(run.head, head_data, run.head_kwargs)
    if run.zero_init:
        from stages.train.recipes import zero_init_residual

        log.info(
            "%s: %d residual relation branches start at zero", cfg.name, zero_init_residual(model)
        )
    reads = head_reads(model)
    missing = {"roi": schema.roi_shape, "roi_t": schema.roi_t_shape}
    absent = sorted(name for name, shape in missing.items() if name in reads and shape is None)
    if absent and model.reads is not None:
        raise StageError(
            f"train {cfg.name}: head {run.head!r} reads {', '.join(absent)}, which the feature "
            f"store {features_uri} does not hold (extract with store_{absent[0]}: true)"
        )
    arrays = reads & stored_arrays(schema)
    train_source, val_source = feature_sources(
        splits, arrays, run.preload, run.preload_max_gb, cfg.name
    )
    data = TrainData(
        train=train_source,
        val=val_source,
        exclusive=exclusive,
        use_roi="roi" in arrays,
        use_roi_t="roi_t" in arrays,
    )
    gt_val = dataset.gt(run.val_split)
    excluded_val = dataset.excluded(run.val_split)

    def val_map(scores: np.ndarray) -> Any:
        table = prediction_rows(val_index, scores, labelmap, run.top_k)  # made per block
        return evaluate_ava(gt_val, table, labelmap, excluded_val), table

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        assert data.val is not None  # feature_sources gives a val source
        result, _ = val_map(predict(m, data.val, data))
        return {"val_map": result.mAP}

    t0 = time.perf_counter()
    history = train(
        model,
        data,
        run.optim,
        ctx.staging / CHECKPOINT_DIR,
        evaluate=evaluate,
        events=ctx.staging / EVENTS_FILE,
    )
    train_seconds = time.perf_counter() - t0
    data.train.release()  # the training split's preloaded rows: not needed to evaluate
    if not is_main():
        return {}
    assert data.val is not None
    result, table = val_map(predict(model, data.val, data))
    prior, _ = val_map(prior_scores(train_index.labels, len(val_index.boxes)))

    out = ctx.staging / PREDICTIONS_DIR
    out.mkdir(exist_ok=True)
    write_predictions_csv(out / f"{run.val_split}.csv", table)
    write_predictions_parquet(out / f"{run.val_split}.parquet", table)
    # The config's kwargs (aux_class_mask, filled from the data, only weighs training losses).
    save_head_file(
        ctx.staging,
        head=run.head,
        kwargs=run.head_kwargs,
        state=model.state_dict(),
        in_channels=schema.pooled_dim,
        classes=labelmap.ids.tolist(),
    )
    (ctx.staging / HISTORY_FILE).write_text(json.dumps(history, indent=2))
    metrics = {**result.to_json(), "prior": prior.to_json()}
    (ctx.staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    log.info("%s: val mAP %.4f (prior-only baseline %.4f)", cfg.name, result.mAP, prior.mAP)
    return {
        "name": cfg.name,
        "head": run.head,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "train_seconds": round(train_seconds, 2),
        "val_map": result.mAP,
        "group_map": result.groups,
        "prior_map": prior.mAP,
        "epochs": len(history),
        "history": [{k: r[k] for k in ("epoch", "loss", "val_map")} for r in history],
        "predictions_csv": ctx.relpath(PREDICTIONS_DIR, f"{run.val_split}.csv"),
    }
