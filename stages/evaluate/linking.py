"""Link per-frame detections into video tubes (the MOC-Detector linking step).

This is the linker the MultiSports baselines and the PCCA report use ("the same link
algorithm as MOC"), for one-frame tubelets (K = 1), per video and class:

1. Each frame's boxes go through a score-decaying NMS: visiting boxes by score, a
   box overlapping a kept one by IoU > ``nms_threshold`` (pixel +1 convention) is
   not dropped but has its score multiplied by (1 - IoU); the ``top_k`` best remain.
   Equal scores are visited last-first, as MOC's code does.
2. Live tubes, taken in descending mean score, each extend with the highest-scored
   remaining box of the new frame whose IoU with the tube's last box is >=
   ``link_iou`` (no +1); that box is then used up. A tube that finds none ends.
3. Boxes left over start new tubes.
4. Tubes with mean score < ``min_score`` or fewer than ``min_length`` frames are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stages.evaluate.ap import pairwise_iou

# Output: {label_index: [(video, tube score, float32 (T, 6): frame, x1, y1, x2, y2, score)]}
LinkedTubes = dict[int, list[tuple[str, float, np.ndarray]]]


def link_tubes(
    frame_dets: np.ndarray,
    videos: Sequence[str],
    nframes: Mapping[str, int],
    *,
    num_labels: int,
    min_length: int = 15,
    link_iou: float = 0.5,
    nms_threshold: float = 0.6,
    top_k: int = 10,
    min_score: float = 0.005,
) -> LinkedTubes:
    """Build video tubes from per-frame detections.

    Args:
        frame_dets: float [N, 8] rows ``video_index, frame, label_index, score, x1, y1,
            x2, y2`` (frames 1-based, pixel boxes); video_index indexes ``videos``.
        videos: video names.
        nframes: frames per video (frames beyond it are ignored).
        num_labels: number of classes (keys of the result: 0..num_labels-1).
        min_length: shortest tube kept, in frames.

    Returns:
        ``{label: [(video, score, tube)]}``, the layout :func:`video_map` takes.
    """
    dets = np.asarray(frame_dets, dtype=np.float64).reshape(-1, 8)
    out: LinkedTubes = {label: [] for label in range(num_labels)}
    vid = dets[:, 0].astype(np.int64)
    label = dets[:, 2].astype(np.int64)
    for iv, video in enumerate(videos):
        for lb in np.unique(label[vid == iv]):
            rows = dets[(vid == iv) & (label == lb)]
            for score, tube in _link_one(rows, nframes[video], link_iou, nms_threshold, top_k):
                if score < min_score or tube.shape[0] < min_length:
                    continue
                out[int(lb)].append((video, score, tube))
    return out


def decay_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int) -> np.ndarray:
    """Score-decaying NMS (step 1). Returns float [k, 5] ``x1, y1, x2, y2, score``,
    k <= top_k, by descending decayed score."""
    weight = np.ones(len(scores))
    # Equal scores are visited last-first, as MOC's ``np.argsort(scores)[::-1]`` does on
    # small arrays; with it the linker reproduces the peer's tubes box for box.
    order = list(np.argsort(scores, kind="stable")[::-1])
    while order:
        i = order.pop(0)
        if not order:
            break
        rest = np.array(order)
        ious = pairwise_iou(boxes[rest], np.broadcast_to(boxes[i], (rest.size, 4)), plus_one=True)
        over = ious > threshold
        weight[rest[over]] = 1.0 - ious[over]
        order = list(rest[~over])
    decayed = scores * weight
    keep = np.argsort(decayed, kind="stable")[::-1][:top_k]
    return np.column_stack([boxes[keep], decayed[keep]])


def _link_one(
    rows: np.ndarray, nframes: int, link_iou: float, nms_threshold: float, top_k: int
) -> list[tuple[float, np.ndarray]]:
    """(mean score, tube) of one (video, class) from its detections ``rows`` [n, 8]."""
    frames = rows[:, 1].astype(np.int64)
    live: list[list[tuple[int, np.ndarray]]] = []  # each: [(frame, box+score [5])]
    done: list[list[tuple[int, np.ndarray]]] = []
    for frame in range(1, nframes + 1):
        sel = rows[frames == frame]
        boxes = decay_nms(sel[:, 4:8], sel[:, 3], nms_threshold, top_k)
        live.sort(key=lambda t: -np.mean([b[4] for _, b in t]))
        still: list[list[tuple[int, np.ndarray]]] = []
        for tube in live:
            last = tube[-1][1][:4]
            if len(boxes):
                ious = pairwise_iou(boxes[:, :4], np.broadcast_to(last, (len(boxes), 4)))
                valid = np.flatnonzero(ious >= link_iou)
            else:
                valid = np.empty(0, dtype=np.int64)
            if valid.size:
                pick = valid[np.argmax(boxes[valid, 4])]
                tube.append((frame, boxes[pick]))
                boxes = np.delete(boxes, pick, axis=0)
                still.append(tube)
            else:
                done.append(tube)
        live = still + [[(frame, b)] for b in boxes]
    done += live
    return [(float(np.mean([b[4] for _, b in t])), _as_array(t)) for t in done]


def _as_array(tube: list[tuple[int, np.ndarray]]) -> np.ndarray:
    arr = np.zeros((len(tube), 6), dtype=np.float32)
    arr[:, 0] = [f for f, _ in tube]
    arr[:, 1:] = np.stack([b for _, b in tube])
    return arr
