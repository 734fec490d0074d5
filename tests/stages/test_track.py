"""track's ``max_gap`` is a time span in timestamp units, whatever the keyframe stride.

One person walks through a tube video's frames; the detector misses it for a while.
Sampled every frame or every 2nd frame, the same miss must give the same tracks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.data import Dataset
from stages.detect.track import keyframe_step, link_tracks


def _walk(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of one person drifting right by 0.005 of the frame per frame."""
    x = 0.1 + 0.005 * (frames - 1)
    boxes = np.stack([x, np.full_like(x, 0.2), x + 0.2, np.full_like(x, 0.8)], axis=1)
    return frames.astype(np.int64), boxes


def _tracks(stride: int, missed: range, max_gap: int) -> int:
    keyframes = np.arange(1, 26, stride)
    seen = keyframes[~np.isin(keyframes, list(missed))]
    stamps, boxes = _walk(seen)
    ids = link_tracks(stamps, boxes, min_iou=0.3, max_gap=max_gap, step=stride)
    return len(np.unique(ids))


def test_max_gap_is_the_same_time_span_at_every_stride() -> None:
    # Missed on frames 5-6: at stride 2 that is keyframe 5 alone (seen at 3, then 7, 4
    # frames apart); at stride 1 frames 5 and 6 (seen at 4, then 7). 2 frames unseen
    # beyond the keyframe spacing: max_gap 2 keeps one track at both strides.
    assert _tracks(1, range(5, 7), max_gap=2) == 1
    assert _tracks(2, range(5, 7), max_gap=2) == 1
    # Missed on frames 5-8 (4 frames): more than max_gap 2 at both strides.
    assert _tracks(1, range(5, 9), max_gap=2) == 2
    assert _tracks(2, range(5, 9), max_gap=2) == 2
    # max_gap 0: consecutive keyframes link at any stride, no keyframe may be skipped.
    assert _tracks(4, range(0), max_gap=0) == 1
    assert _tracks(4, range(5, 6), max_gap=0) == 2


def test_step_is_the_split_keyframe_stride(tiny_tube_world: Path, tiny_world: Path) -> None:
    tubes = Dataset.open(tiny_tube_world)  # dataset.yaml: train stride 2, val every frame
    assert (keyframe_step(tubes, "train"), keyframe_step(tubes, "val")) == (2, 1)
    assert keyframe_step(Dataset.open(tiny_world), "train") == 1  # AVA: seconds
