"""Keyframe batches for the heads: features from a feature store, labels from the GT.

A split is a list of keyframes (video, timestamp) with a ragged set of actors each. Labels
are assigned to every actor box by IoU >= ``label_iou`` with the GT boxes of the same
keyframe (1.0 for GT-box actors), as multi-hot vectors over the label map's classes.
Features are read through :class:`KeyframeSource`: all in RAM (``preload``, the default
for small stores) or per batch from the store (large stores; only the batch's chunks),
in which case :func:`iter_batches` reads the next batches in a background thread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from featurestore import FeatureStore, KeyframeFeatures
from models.boxes import iou_matrix
from models.heads.batch import ActorBatch
from stages.data import BoxTable, Dataset, LabelMap
from stages.framework import StageError
from stages.framework.background import in_background

T = TypeVar("T")


@dataclass
class SplitIndex:
    """Keyframes of one split and per-actor labels.

    Attributes:
        video: str [K] video of each keyframe; timestamp: int [K].
        actor_offset: int64 [K+1] CSR offsets of each keyframe's actors.
        boxes: float32 [A, 4]; scores: float32 [A]; labels: float32 [A, C] multi-hot.
    """

    video: np.ndarray
    timestamp: np.ndarray
    actor_offset: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamp)

    def actors(self, k: int) -> slice:
        return slice(int(self.actor_offset[k]), int(self.actor_offset[k + 1]))

    def subset(self, keyframes: Sequence[int] | np.ndarray) -> SplitIndex:
        """The index of the chosen keyframes only (in the given order)."""
        keyframes = np.asarray(keyframes, dtype=np.int64).reshape(-1)
        if keyframes.size and (keyframes.min() < 0 or keyframes.max() >= len(self)):
            raise IndexError(f"keyframes must be in [0, {len(self)}), got {keyframes.tolist()}")
        rows = [np.arange(self.actor_offset[k], self.actor_offset[k + 1]) for k in keyframes]
        actor = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        counts = np.diff(self.actor_offset)[keyframes]
        return SplitIndex(
            video=self.video[keyframes],
            timestamp=self.timestamp[keyframes],
            actor_offset=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            boxes=self.boxes[actor],
            scores=self.scores[actor],
            labels=self.labels[actor],
        )


def assign_labels(
    video: str,
    timestamp: int,
    boxes: np.ndarray,
    gt_rows: np.ndarray,
    gt: BoxTable,
    class_index: dict[int, int],
    iou: float,
) -> np.ndarray:
    """Multi-hot float32 [n, C] for the n actor boxes [n, 4] of one keyframe.

    Actor ``i`` gets the action of GT row ``r`` (one row per (person, action), as in AVA
    CSVs) when IoU(box i, box r) >= ``iou``; GT actions outside ``class_index`` (id ->
    dense column) are ignored. ``gt_rows`` are the rows of ``gt`` at this keyframe.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{video},{int(timestamp):04d}: actor boxes must have shape [n, 4], got {boxes.shape}"
        )
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"{video},{int(timestamp):04d}: label IoU must be in (0, 1], got {iou}")
    labels = np.zeros((len(boxes), len(class_index)), dtype=np.float32)
    if not len(gt_rows) or not len(boxes):
        return labels
    overlap = iou_matrix(boxes.astype(np.float64), gt.boxes[gt_rows])  # (n, g)
    hit = overlap >= iou
    for j, row in enumerate(gt_rows):
        col = class_index.get(int(gt.action[row]))
        if col is not None:
            labels[hit[:, j], col] = 1.0
    return labels


def build_index(
    store: FeatureStore, gt: BoxTable | None, labelmap: LabelMap, *, label_iou: float = 0.5
) -> SplitIndex:
    """Enumerate the store's keyframes and label every actor from ``gt``."""
    class_index = {int(c): i for i, c in enumerate(labelmap.ids)}
    gt_rows: dict[tuple[str, int], list[int]] = {}
    if gt is not None:
        for i, (v, t) in enumerate(zip(gt.video.tolist(), gt.timestamp.tolist(), strict=True)):
            gt_rows.setdefault((str(v), int(t)), []).append(i)
    videos, stamps, offsets, boxes, scores, labels = [], [], [0], [], [], []
    for video_id in store.videos():
        ts = np.asarray(store.array(video_id, "timestamps")[:])
        off = np.asarray(store.array(video_id, "actor_offset")[:])
        b = np.asarray(store.array(video_id, "boxes")[:])
        s = np.asarray(store.array(video_id, "scores")[:])
        for k, t in enumerate(ts.tolist()):
            sel = slice(int(off[k]), int(off[k + 1]))
            rows = np.asarray(gt_rows.get((video_id, int(t)), []), dtype=np.int64)
            labels.append(
                assign_labels(video_id, t, b[sel], rows, gt, class_index, label_iou)
                if gt is not None
                else np.zeros((sel.stop - sel.start, len(class_index)), np.float32)
            )
            videos.append(video_id)
            stamps.append(int(t))
            offsets.append(offsets[-1] + sel.stop - sel.start)
        boxes.append(b)
        scores.append(s)
    c = len(class_index)
    return SplitIndex(
        video=np.asarray(videos, dtype=object),
        timestamp=np.asarray(stamps, dtype=np.int64),
        actor_offset=np.asarray(offsets, dtype=np.int64),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
        labels=np.concatenate(labels) if labels else np.zeros((0, c), np.float32),
    )


class KeyframeSource:
    """Reads the features of chosen keyframes: preloaded into RAM, or from the store.

    ``arrays``: the large arrays the head reads (``head_reads`` of :mod:`models.heads`;
    None = all the store has). Arrays a head never looks at are neither read nor held.
    """

    def __init__(
        self,
        store: FeatureStore,
        index: SplitIndex,
        *,
        preload: bool,
        arrays: Collection[str] | None = None,
    ) -> None:
        self.store, self.index, self.preload = store, index, preload
        self.arrays = None if arrays is None else frozenset(arrays)
        self._cache: list[KeyframeFeatures] | None = None
        if preload:
            items = list(zip(index.video.tolist(), index.timestamp.tolist(), strict=True))
            # Video by video (whole ranges), not keyframe by keyframe: issue 22.
            self._cache = store.read_keyframes_by_video(items, arrays=self.arrays)

    def release(self) -> None:
        """Drop the preloaded features (their RAM back, e.g. before a stage evaluates on
        another split); later reads go to the store."""
        self._cache, self.preload = None, False

    def get(self, keyframes: np.ndarray) -> list[KeyframeFeatures]:
        if self._cache is not None:
            return [self._cache[int(k)] for k in keyframes]
        items = [(str(self.index.video[k]), int(self.index.timestamp[k])) for k in keyframes]
        return self.store.read_keyframes(items, arrays=self.arrays)


def iter_batches(
    source: KeyframeSource,
    batches: Sequence[np.ndarray],
    read: Callable[[np.ndarray], T],
    prefetch: int = 2,
) -> Iterator[T]:
    """``read(batch)`` for each batch of keyframe indices, in order.

    For a store-backed source (``preload=False``) with ``prefetch > 0`` a background thread
    reads up to ``prefetch`` batches ahead into a bounded queue: the store's reads (zarr's
    event loop, decompression) and the collation overlap the step instead of adding to it.
    A read error is raised here, in the consumer; leaving the loop early stops the thread.
    """
    if source.preload or prefetch <= 0 or len(batches) <= 1:
        for keyframes in batches:
            yield read(keyframes)
        return
    yield from in_background((read(k) for k in batches), depth=prefetch)


def collate(features: list[KeyframeFeatures], *, use_roi: bool, use_roi_t: bool) -> ActorBatch:
    """Stack keyframes into an :class:`ActorBatch` (float32 tensors)."""

    def cat(name: str) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([getattr(f, name) for f in features])).float()

    counts = torch.tensor([len(f.boxes) for f in features])
    if features and features[0].context.ndim == 3:
        context = torch.from_numpy(np.stack([f.context for f in features])).float()
    else:  # not read (the head does not look at it): B empty maps keep num_keyframes right
        context = torch.zeros((len(features), 0, 0, 0))
    for name, wanted in (("roi", use_roi), ("roi_t", use_roi_t)):
        if wanted and features and getattr(features[0], name) is None:
            raise ValueError(
                f"collate: {name} was asked for but not read from the store "
                f"(keyframe {features[0].video_id},{features[0].timestamp:04d})"
            )
    return ActorBatch(
        context=context,
        pooled=cat("pooled"),
        boxes=cat("boxes"),
        batch_index=torch.repeat_interleave(torch.arange(len(features)), counts),
        roi=cat("roi") if use_roi else None,
        roi_t=cat("roi_t") if use_roi_t else None,
        track=torch.from_numpy(np.concatenate([f.track for f in features])).long(),
    )


def jitter_boxes(boxes: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Move each box edge by up to ``amount`` × its side (training augmentation)."""
    if amount <= 0:
        return boxes
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    scale = torch.stack([w, h, w, h], dim=1)
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * amount * scale
    out = (boxes + noise).clamp(0.0, 1.0)
    # Keep boxes valid after the jitter.
    out[:, 2] = torch.maximum(out[:, 2], out[:, 0] + 1e-3)
    out[:, 3] = torch.maximum(out[:, 3], out[:, 1] + 1e-3)
    return out


def open_split(path: Path | str) -> FeatureStore:
    return FeatureStore.open(path, mode="r")


@dataclass(frozen=True)
class TrainingSplits:
    """The two splits a head trains and validates on: GT-labelled training actors (labels
    assigned by IoU, :func:`build_index`) and unlabelled validation actors, with the
    positions of the mutually exclusive (softmax) classes in the label map."""

    train_store: FeatureStore
    val_store: FeatureStore
    train_index: SplitIndex
    val_index: SplitIndex
    exclusive: list[int]


def open_training_splits(
    stores: Callable[[str], Path | str],
    dataset: Dataset,
    labelmap: LabelMap,
    *,
    train_split: str,
    val_split: str,
    label_iou: float,
    who: str,
) -> TrainingSplits:
    """Open both splits' feature stores (``stores(split)`` gives a store's path) and index
    them; ``who`` names the stage in the error raised when there is nothing to train on."""
    exclusive_ids = {int(i) for i in dataset.exclusive_ids}
    train_store = open_split(stores(train_split))
    val_store = open_split(stores(val_split))
    train_index = build_index(train_store, dataset.gt(train_split), labelmap, label_iou=label_iou)
    if not len(train_index):
        raise StageError(f"{who}: {train_store.url} holds no {train_split!r} keyframes")
    return TrainingSplits(
        train_store=train_store,
        val_store=val_store,
        train_index=train_index,
        val_index=build_index(val_store, None, labelmap),
        exclusive=[k for k, c in enumerate(labelmap.ids) if int(c) in exclusive_ids],
    )
