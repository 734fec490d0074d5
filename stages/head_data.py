"""Keyframe batches for the heads: features from a feature store, labels from the GT.

A split is a list of keyframes (video, timestamp) with a ragged set of actors each. Labels
are assigned to every actor box by IoU >= ``label_iou`` with the GT boxes of the same
keyframe (1.0 for GT-box actors), as multi-hot vectors over the label map's classes.
Features are read through :class:`KeyframeSource`: all in RAM (``preload``, the default
for small stores) or per batch from the store (large stores; only the batch's chunks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featurestore import FeatureStore, KeyframeFeatures
from models.heads.batch import ActorBatch
from stages.data import BoxTable, LabelMap
from stages.track import iou_matrix


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


def assign_labels(
    video: str, timestamp: int, boxes: np.ndarray, gt_rows: np.ndarray, gt: BoxTable,
    class_index: dict[int, int], iou: float,
) -> np.ndarray:  # fmt: skip
    """Multi-hot [n, C] for the n actor boxes of one keyframe."""
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
    """Reads the features of chosen keyframes: preloaded into RAM, or from the store."""

    def __init__(self, store: FeatureStore, index: SplitIndex, *, preload: bool) -> None:
        self.store, self.index, self.preload = store, index, preload
        self._cache: list[KeyframeFeatures] | None = None
        if preload:
            items = list(zip(index.video.tolist(), index.timestamp.tolist(), strict=True))
            self._cache = store.read_keyframes(items)

    def get(self, keyframes: np.ndarray) -> list[KeyframeFeatures]:
        if self._cache is not None:
            return [self._cache[int(k)] for k in keyframes]
        items = [(str(self.index.video[k]), int(self.index.timestamp[k])) for k in keyframes]
        return self.store.read_keyframes(items)


def collate(features: list[KeyframeFeatures], *, use_roi: bool, use_roi_t: bool) -> ActorBatch:
    """Stack keyframes into an :class:`ActorBatch` (float32 tensors)."""

    def cat(name: str) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([getattr(f, name) for f in features])).float()

    counts = torch.tensor([len(f.boxes) for f in features])
    return ActorBatch(
        context=torch.from_numpy(np.stack([f.context for f in features])).float(),
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


def open_split(path: Path) -> FeatureStore:
    return FeatureStore.open(path, mode="r")
