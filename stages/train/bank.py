"""train_bank: a stage-2 head that reads a long-term bank window around each keyframe.

Like :mod:`stages.train.stage` (same labels, the same loop of :mod:`stages.train.loop`, the
same outputs: ``head.pt``, ``metrics.json`` with per-class and per-group AP,
``predictions/<val split>.csv``, so evaluate works unchanged), but every batch's
``ActorBatch.bank`` is filled by the window reader (:mod:`stages.train.window`) for that
batch's keyframes, through the loop's ``attach`` hook.

Banks, ``bank_mode``:

- ``offline`` (LFB, ACAR, AMCRNet, IGMN): input ``dump``, a bank dumped from a trained
  stage-1 head. The head's ``BANK_KIND`` must be the bank's kind. Windows are read from
  disk (only their rows) unless ``bank_preload``.
- ``online`` (AIA / AMCRNet style): no dump. A memory of one vector per actor row of the
  train and val splits starts at zero ("unseen": masked out) and is written from the
  training forward pass (the head's ``HeadOutput.features``, detached). Before val is
  predicted its memory is reset and filled by one pass over val. The memory is part of
  the model's state, so checkpoints (and resuming) include it.

``init``: ``scratch`` re-initialises the head; ``stage1`` fine-tunes it from the stage-1
run (input ``train``) through the head's ``init_from_stage1`` (AVA-Kinetics report Table 2).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from featurestore import FeatureStore, StoreError
from featurestore.banks import BankStore
from models.heads import (
    HEADS,
    ONLINE_KINDS,
    Head,
    HeadData,
    build_from_data,
    head_class,
    head_reads,
)
from stages.data import Dataset
from stages.data.predictions import write_predictions_csv, write_predictions_parquet
from stages.evaluate.ava import evaluate_ava
from stages.evaluate.stage import PREDICTIONS_DIR
from stages.extract.stage import store_path
from stages.framework import StageContext, StageError
from stages.framework.distributed import is_main, run_data_parallel
from stages.train.config import TRAIN_BANK as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.train.config import (  # noqa: F401 (re-exported)
    BankRunConfig,
    TrainBankSection,
    TrainBankStageConfig,
)
from stages.train.data import (
    KeyframeSource,
    SplitIndex,
    open_training_splits,
)
from stages.train.dump import bank_path
from stages.train.loop import TrainData, predict, train
from stages.train.run import load_trained_head, save_head_file
from stages.train.stage import (
    CHECKPOINT_DIR,
    EVENTS_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    evaluated_labelmap,
    feature_sources,
    prediction_rows,
    prior_scores,
    stored_arrays,
)
from stages.train.window import BankWindowReader, WindowConfig, pad_windows, window_entries

log = logging.getLogger("bankflow.train_bank")


# --------------------------------------------------------------------------- banks


def check_alignment(store: FeatureStore, bank: BankStore) -> None:
    """Every video of the feature store is in the bank with the same keyframes and actors."""
    for video_id in store.videos():
        if not bank.is_complete_video(video_id):
            raise StageError(f"{bank.url}: bank has no video {video_id!r} of {store.url}")
        ts, off = store.index(video_id)
        bts, boff, _ = bank.index(video_id)
        if not (np.array_equal(ts, bts) and np.array_equal(off, boff)):
            raise StageError(
                f"{bank.url}: video {video_id!r} is not aligned with {store.url} "
                f"({len(bts)} keyframes / {int(boff[-1])} actors in the bank, "
                f"{len(ts)} / {int(off[-1])} in the store); re-dump the bank"
            )


def check_bank_kind(model: Head, head: str, kind: str, where: str) -> None:
    head_kind = model.BANK_KIND
    if head_kind is None:
        raise StageError(
            f"train_bank: head {head!r} ({type(model).__name__}) reads no bank (no BANK_KIND); "
            "train it with the train stage"
        )
    if head_kind != kind:
        raise StageError(
            f"train_bank: head {head!r} ({type(model).__name__}) reads {head_kind!r} banks, "
            f"but {where} is a {kind!r} bank; dump a {head_kind!r} bank for it"
        )


def offline_attach(readers: dict[int, BankWindowReader]):
    """The loop's ``attach`` hook: each batch's window from its split's bank."""

    def attach(source: KeyframeSource, keyframes: np.ndarray, batch: Any) -> None:
        index = source.index
        items = [(str(index.video[k]), int(index.timestamp[k])) for k in keyframes]
        batch.bank = readers[id(source)].read(items)

    return attach


def bank_attach(
    banks: Iterable[tuple[KeyframeSource, BankStore]],
    window: WindowConfig,
    *,
    preload: bool = False,
):
    """The loop's ``attach`` hook over offline banks, one per source: each bank checked
    aligned with its source's feature store (:func:`check_alignment`), its windows read
    by a :class:`BankWindowReader` with ``window``."""
    readers = {}
    for source, bank in banks:
        check_alignment(source.store, bank)
        readers[id(source)] = BankWindowReader(bank, window, preload=preload)
    return offline_attach(readers)


# --------------------------------------------------------------------------- online memory


class StoreIndex:
    """(timestamps, actor_offset, track) of a feature store's videos (online windows)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._track: dict[str, np.ndarray] = {}

    def index(self, video_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ts, off = self.store.index(video_id)
        if video_id not in self._track:
            self._track[video_id] = np.asarray(self.store.array(video_id, "track")[:])
        return ts, off, self._track[video_id]


def video_bases(index: SplitIndex) -> dict[str, int]:
    """Row of each video's first actor in the split's actor order."""
    bases: dict[str, int] = {}
    for k, video_id in enumerate(index.video.tolist()):
        bases.setdefault(str(video_id), int(index.actor_offset[k]))
    return bases


class OnlineMemoryHead(nn.Module):
    """A stage-2 head whose ``features`` bank is a memory written by its own forward pass.

    ``memory`` float32 [R, D] and ``seen`` bool [R] are buffers (checkpointed with the
    weights): R = actor rows of every split, D = the head's ``HeadOutput.features`` width.
    The batch's bank carries ``memory_rows`` Long[B, L] (memory row of each window entry)
    and ``actor_rows`` Long[N] (memory row of each current actor); the window's
    ``features`` are gathered at forward time, unseen entries masked out.
    """

    memory: torch.Tensor  # buffers (registered in __init__)
    seen: torch.Tensor

    def __init__(self, head: Head, rows: int, dim: int) -> None:
        super().__init__()
        self.head = head
        self.needs_labels = head.needs_labels
        self.fill = False  # write the memory in eval mode too (the val filling pass)
        self.register_buffer("memory", torch.zeros(rows, dim))
        self.register_buffer("seen", torch.zeros(rows, dtype=torch.bool))

    def reset(self, start: int, stop: int) -> None:
        self.memory[start:stop] = 0.0
        self.seen[start:stop] = False

    def forward(self, batch: Any, **kwargs: Any) -> Any:
        bank = dict(batch.bank)
        rows = bank.pop("memory_rows")
        actor_rows = bank.pop("actor_rows")
        mask = bank["mask"] & self.seen[rows]
        bank["mask"] = mask
        bank["features"] = self.memory[rows] * mask[..., None]
        out = self.head(replace(batch, bank=bank), **kwargs)
        if self.training or self.fill:
            if out.features is None or out.features.shape[1] != self.memory.shape[1]:
                raise StageError(
                    f"online memory: {type(self.head).__name__} gave features "
                    f"{None if out.features is None else tuple(out.features.shape)}, "
                    f"the memory holds [R, {self.memory.shape[1]}]"
                )
            with torch.no_grad():
                self.memory[actor_rows] = out.features.detach()
                self.seen[actor_rows] = True
        return out


def online_attach(sources: dict[int, tuple[StoreIndex, dict[str, int], int]], cfg: WindowConfig):
    """The loop's ``attach`` hook for online memory: window rows, no bank reads."""

    def attach(source: KeyframeSource, keyframes: np.ndarray, batch: Any) -> None:
        store_index, bases, split_base = sources[id(source)]
        index = source.index
        windows, actor_rows = [], []
        for k in keyframes:
            video_id, t = str(index.video[k]), int(index.timestamp[k])
            w = window_entries(video_id, t, *store_index.index(video_id), cfg)
            w.rows = w.rows + split_base + bases[video_id]  # video rows -> memory rows
            windows.append(w)
            actor_rows.append(np.arange(index.actor_offset[k], index.actor_offset[k + 1]))
        bank = pad_windows(windows, {})
        rows = torch.zeros_like(bank["track"])
        for i, w in enumerate(windows):
            rows[i, : len(w.rows)] = torch.from_numpy(w.rows)
        bank["memory_rows"] = rows
        bank["actor_rows"] = torch.from_numpy(np.concatenate(actor_rows) + split_base).long()
        batch.bank = bank

    return attach


def fill_memory(
    model: OnlineMemoryHead, source: KeyframeSource, data: TrainData, rows: tuple[int, int]
) -> None:
    """Reset the memory rows ``[start, stop)`` of ``source``'s actors ("unseen") and fill
    them with one pass of the head over ``source``: what its windows read when it is then
    predicted (the val split after training; a new video at inference)."""
    model.reset(*rows)
    model.fill = True
    try:
        predict(model, source, data)
    finally:
        model.fill = False


# --------------------------------------------------------------------------- the stage


def compute(ctx: StageContext[TrainBankStageConfig]) -> dict[str, Any]:
    """The stage on ``run.optim.devices`` data-parallel processes (stages.framework.distributed)."""
    run: BankRunConfig = ctx.config.run
    if run.optim.devices > 1 and run.bank_mode == "online":
        raise StageError(
            f"train_bank {ctx.config.name}: bank_mode online keeps one memory of the "
            "keyframes seen in training order; it trains on one device (optim.devices: 1)"
        )
    return run_data_parallel(compute_rank, ctx, devices=run.optim.devices)


def compute_rank(ctx: StageContext[TrainBankStageConfig]) -> dict[str, Any]:
    """One rank's part: every rank trains; rank 0 evaluates and writes the outputs."""
    cfg = ctx.config
    run = cfg.run
    if run.head not in HEADS:
        raise StageError(
            f"train_bank {cfg.name}: unknown head {run.head!r}; expected one of {sorted(HEADS)}"
        )
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
        who="train_bank",
    )
    train_store, val_store = splits.train_store, splits.val_store
    train_index, val_index, exclusive = splits.train_index, splits.val_index, splits.exclusive
    schema = train_store.schema
    cls = head_class(HEADS[run.head])
    bank_arrays = None
    kind: str
    banks: dict[str, BankStore] = {}
    if run.bank_mode == "offline":
        dump_uri = ctx.input("dump").uri
        for split in (run.train_split, run.val_split):
            try:
                banks[split] = BankStore.open(bank_path(dump_uri, split))
            except StoreError as exc:
                raise StageError(f"train_bank {cfg.name}: bank {run.bank!r}: {exc}") from exc
        kind = banks[run.train_split].kind
        bank_arrays = banks[run.train_split].arrays
    else:
        kind = str(cls.BANK_KIND)
        if not cls.ONLINE_MEMORY:
            raise StageError(
                f"train_bank {cfg.name}: online memory holds feature vectors "
                f"({', '.join(ONLINE_KINDS)} banks); head {run.head!r} reads {kind!r} banks"
            )
    head_data = HeadData(
        in_channels=schema.pooled_dim,
        num_classes=len(labelmap),
        exclusive=tuple(exclusive),
        bank_arrays=bank_arrays,
        online_memory=run.bank_mode == "online",
    )
    torch.manual_seed(run.optim.seed)
    model: Head | OnlineMemoryHead  # the head, or its online-memory wrapper (below)
    model, head_kwargs = build_from_data(run.head, head_data, run.head_kwargs)
    memory_dim = int(head_kwargs["bank_dim"]) if run.bank_mode == "online" else 0
    check_bank_kind(model, run.head, kind, f"bank {run.bank!r}" if run.bank else "the memory")
    # Only the arrays the head reads (as stage 1): a head on pooled rows neither preloads
    # nor reads context maps.
    arrays = head_reads(model) & stored_arrays(schema)
    data = TrainData(
        *feature_sources(splits, arrays, run.preload, run.preload_max_gb, cfg.name),
        exclusive=exclusive,
        use_roi="roi" in arrays,
        use_roi_t="roi_t" in arrays,
    )
    assert data.val is not None
    if run.bank_mode == "offline":
        data.attach = bank_attach(
            [(data.train, banks[run.train_split]), (data.val, banks[run.val_split])],
            run.window,
            preload=run.bank_preload,
        )
    if run.init == "stage1":
        init_from = model.init_from_stage1
        if init_from is None:
            raise StageError(
                f"train_bank {cfg.name}: head {run.head!r} cannot start from a stage-1 head "
                "(no init_from_stage1); use init: scratch"
            )
        stage1_head, _ = load_trained_head(ctx.input("train").path)
        init_from(stage1_head.state_dict())
    inner = model
    n_train, n_val = len(train_index.boxes), len(val_index.boxes)
    if run.bank_mode == "online":
        model = OnlineMemoryHead(inner, n_train + n_val, memory_dim)
        sources = {
            id(data.train): (StoreIndex(train_store), video_bases(train_index), 0),
            id(data.val): (StoreIndex(val_store), video_bases(val_index), n_train),
        }
        data.attach = online_attach(sources, run.window)

    gt_val = dataset.gt(run.val_split)
    excluded_val = dataset.excluded(run.val_split)

    def val_scores(m: nn.Module) -> np.ndarray:
        assert data.val is not None
        if isinstance(m, OnlineMemoryHead):  # unseen val clips start at zero
            fill_memory(m, data.val, data, (n_train, n_train + n_val))
        return predict(m, data.val, data)

    def val_map(scores: np.ndarray) -> Any:
        table = prediction_rows(val_index, scores, labelmap, run.top_k)  # made per block
        return evaluate_ava(gt_val, table, labelmap, excluded_val), table

    def evaluate(m: nn.Module) -> dict[str, float]:
        result, _ = val_map(val_scores(m))
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
    result, table = val_map(val_scores(model))
    prior, _ = val_map(prior_scores(train_index.labels, n_val))

    out = ctx.staging / PREDICTIONS_DIR
    out.mkdir(exist_ok=True)
    write_predictions_csv(out / f"{run.val_split}.csv", table)
    write_predictions_parquet(out / f"{run.val_split}.parquet", table)
    save_head_file(
        ctx.staging,
        head=run.head,
        kwargs=head_kwargs,
        state=inner.state_dict(),
        in_channels=schema.pooled_dim,
        classes=labelmap.ids.tolist(),
        bank_kind=kind,
        bank_mode=run.bank_mode,
        window=run.window.model_dump(mode="json"),
    )
    (ctx.staging / HISTORY_FILE).write_text(json.dumps(history, indent=2))
    metrics = {**result.to_json(), "prior": prior.to_json()}
    (ctx.staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    log.info("%s: val mAP %.4f (prior-only baseline %.4f)", cfg.name, result.mAP, prior.mAP)
    return {
        "name": cfg.name,
        "head": run.head,
        "bank": run.bank,
        "bank_kind": kind,
        "bank_mode": run.bank_mode,
        "init": run.init,
        "window": run.window.model_dump(mode="json"),
        "parameters": int(sum(p.numel() for p in inner.parameters())),
        "train_seconds": round(train_seconds, 2),
        "val_map": result.mAP,
        "group_map": result.groups,
        # AP per class id: the lead's stage-1 vs stage-2 table picks the long-term classes.
        "class_ap": {str(c): ap for c, ap in result.per_class.items()},
        "prior_map": prior.mAP,
        "epochs": len(history),
        "history": [{k: r[k] for k in ("epoch", "loss", "val_map")} for r in history],
        "predictions_csv": ctx.relpath(PREDICTIONS_DIR, f"{run.val_split}.csv"),
    }
