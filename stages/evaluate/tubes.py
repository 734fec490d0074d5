"""Frame-mAP and video-mAP for tube datasets (MultiSports, UCF101-24, JHMDB).

Two conventions:

``"multisports"`` (MultiSports challenge code, as in mmaction2's
``multisports_utils``): box IoU without +1; a detection (box or tube) looks only at
its best-IoU GT and is a true positive if that GT is still unmatched (no
fall-back); VOC all-points AP; classes without GT are left out; the 6 classes the
challenge does not evaluate are skipped (:data:`MULTISPORTS_SKIPPED`, 60 of 66
remain, as the PCCA report says: "we evaluate on 60 action classes").
Temporal IoU of frames [s1, e1], [s2, e2] is ``(min e - max s) / (max e - min s)``.

``"act"`` (ACT / MOC-Detector code used for UCF101-24 and JHMDB): pixel +1 in box
widths and frame counts; the matched GT is removed, so a later detection falls
back to the next-best GT; trapezoidal AP starting at (recall 0, precision 1);
video tubes go through a 3D NMS at 0.3 per (video, class) before AP.

Detections are ranked per class over the whole test set, ties in input order.
Tube IoU = temporal IoU of the frame ranges x mean per-frame box IoU over the frames
both tubes have in the shared range (tubes are expected to have one row per frame).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from stages.data.tubes import TubeGT
from stages.evaluate.ap import (
    pairwise_iou,
    precision_recall,
    rank_by_score,
    trapezoid_ap,
    voc_ap,
)
from stages.evaluate.matching import match_to_best_gt

Convention = Literal["multisports", "act"]
MULTISPORTS_SKIPPED = frozenset(
    {
        "aerobic kick jump",
        "aerobic off axis jump",
        "aerobic butterfly jump",
        "aerobic balance turn",
        "basketball save",
        "basketball jump ball",
    }
)
# Video tubes: {label_index: [(video, score, float array (T, >=5) frame, x1, y1, x2, y2, ...)]}
VideoTubes = Mapping[int, Sequence[tuple[str, float, np.ndarray]]]


def frame_map(
    gt: TubeGT,
    frame_dets: np.ndarray,
    *,
    iou: float = 0.5,
    classes: Iterable[int] | None = None,
    convention: Convention = "multisports",
    split: int = 0,
) -> tuple[float, dict[int, float]]:
    """Frame-mAP: every frame of every GT tube is a GT box.

    Args:
        gt: the dataset GT.
        frame_dets: float [N, 8] rows ``video_index, frame, label_index, score, x1, y1,
            x2, y2``; video_index indexes ``gt.test_videos[split]``, pixel boxes.
        iou: IoU a true positive needs (>=).
        classes: label indices to evaluate (default: all but the skipped ones for
            MultiSports); classes without GT are left out either way.
        convention: ``"multisports"`` or ``"act"`` (module docstring).

    Returns:
        (mean AP, {label_index: AP}), APs in [0, 1].
    """
    dets = np.asarray(frame_dets, dtype=np.float64).reshape(-1, 8)
    videos = gt.test_videos[split]
    gt_vid, gt_frame, gt_label, gt_boxes = _frame_gt(gt, videos)
    n_frames = int(max(gt_frame.max(initial=0), dets[:, 1].max(initial=0))) + 1
    gt_key = gt_vid * n_frames + gt_frame
    det_key = dets[:, 0].astype(np.int64) * n_frames + dets[:, 1].astype(np.int64)
    det_label = dets[:, 2].astype(np.int64)
    rank = np.empty(len(dets), dtype=np.int64)
    rank[rank_by_score(dets[:, 3])] = np.arange(len(dets))

    per_class: dict[int, float] = {}
    for label in _classes(gt, classes, convention):
        n_gt = int((gt_label == label).sum())
        if n_gt == 0:
            continue
        d = np.flatnonzero(det_label == label)
        d = d[np.argsort(rank[d])]
        g = gt_label == label
        if convention == "multisports":
            tp = match_to_best_gt(det_key[d], dets[d, 4:8], rank[d], gt_key[g], gt_boxes[g], iou)
            per_class[label] = voc_ap(*precision_recall(tp, n_gt))
        else:
            tp = _match_with_fallback(
                list(det_key[d]), dets[d, 4:8], gt_key[g], gt_boxes[g], iou, _iou2d_act
            )
            per_class[label] = trapezoid_ap(*precision_recall(tp, n_gt))
    return _mean(per_class), per_class


def video_map(
    gt: TubeGT,
    tubes: VideoTubes,
    *,
    iou: float,
    convention: Convention = "multisports",
    classes: Iterable[int] | None = None,
    split: int = 0,
) -> tuple[float, dict[int, float]]:
    """Video-mAP at one tube-IoU threshold.

    Args:
        gt: the dataset GT.
        tubes: ``{label_index: [(video, score, tube (T, >=5): frame, x1, y1, x2, y2)]}``.
        iou: tube IoU a true positive needs (>=).
        convention: ``"multisports"`` or ``"act"`` (``"act"`` applies 3D NMS at 0.3).

    Returns:
        (mean AP, {label_index: AP}), APs in [0, 1].
    """
    per_class: dict[int, float] = {}
    for label in _classes(gt, classes, convention):
        gt_tubes = [
            (v, t) for v in gt.test_videos[split] for t in gt.tubes.get(v, {}).get(label, [])
        ]
        if not gt_tubes:
            continue
        dets = [(str(v), float(s), np.asarray(t, np.float64)) for v, s, t in tubes.get(label, [])]
        if convention == "act":
            dets = nms_3d(dets, 0.3)
        order = rank_by_score(np.array([s for _, s, _ in dets], dtype=np.float64))
        ranked = [dets[i] for i in order]
        if convention == "multisports":
            tp = _match_tubes_no_fallback(ranked, gt_tubes, iou)
            per_class[label] = voc_ap(*precision_recall(tp, len(gt_tubes)))
        else:
            keys = [v for v, _, _ in ranked]
            tp = _match_with_fallback(
                keys,
                [t for _, _, t in ranked],
                np.array([v for v, _ in gt_tubes], dtype=object),
                [t for _, t in gt_tubes],
                iou,
                lambda g, t: np.array([tube_iou(x, t, plus_one=True) for x in g]),
            )
            per_class[label] = trapezoid_ap(*precision_recall(tp, len(gt_tubes)))
    return _mean(per_class), per_class


def video_map_summary(
    gt: TubeGT, tubes: VideoTubes, *, convention: Convention = "multisports"
) -> dict[str, float]:
    """``v_map@0.2``, ``v_map@0.5`` and ``v_map_0.10:0.90`` (mean over 0.1 + 0.1 i, i=0..8)."""
    at = {t: video_map(gt, tubes, iou=t, convention=convention)[0] for t in (0.2, 0.5)}
    sweep = [video_map(gt, tubes, iou=0.1 + 0.1 * i, convention=convention)[0] for i in range(9)]
    return {"v_map@0.2": at[0.2], "v_map@0.5": at[0.5], "v_map_0.10:0.90": float(np.mean(sweep))}


def tube_iou(a: np.ndarray, b: np.ndarray, *, plus_one: bool = False) -> float:
    """Spatio-temporal IoU of two tubes (T, >=5: frame, x1, y1, x2, y2): temporal IoU
    of the frame ranges times the mean box IoU over the frames both have."""
    one = 1.0 if plus_one else 0.0
    t_min, t_max = max(a[0, 0], b[0, 0]), min(a[-1, 0], b[-1, 0])
    if t_max < t_min:
        return 0.0
    union = max(a[-1, 0], b[-1, 0]) - min(a[0, 0], b[0, 0]) + one
    if union <= 0:  # two one-frame tubes on the same frame without +1: no extent
        return 0.0
    temporal = (t_max - t_min + one) / union
    shared, ia, ib = np.intersect1d(a[:, 0], b[:, 0], return_indices=True)
    if shared.size == 0:
        return 0.0
    spatial = pairwise_iou(a[ia, 1:5], b[ib, 1:5], plus_one=plus_one)
    return float(np.mean(spatial) * temporal)


def nms_3d(
    tubes: list[tuple[str, float, np.ndarray]], threshold: float
) -> list[tuple[str, float, np.ndarray]]:
    """Greedy 3D NMS within each video: keep the best tube, drop those whose pixel
    tube IoU (+1 convention) with it exceeds ``threshold``, repeat."""
    kept: list[tuple[str, float, np.ndarray]] = []
    for video in dict.fromkeys(v for v, _, _ in tubes):
        own = [t for t in tubes if t[0] == video]
        order = list(rank_by_score(np.array([s for _, s, _ in own])))
        while order:
            best = own[order.pop(0)]
            kept.append(best)
            order = [i for i in order if tube_iou(own[i][2], best[2], plus_one=True) <= threshold]
    return kept


def _frame_gt(
    gt: TubeGT, videos: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GT boxes as arrays: video index, frame, label [M] (int64) and boxes [M, 4]."""
    parts = [
        (iv, label, tube)
        for iv, v in enumerate(videos)
        for label, tube_list in gt.tubes.get(v, {}).items()
        for tube in tube_list
    ]
    if not parts:
        e = np.empty(0, dtype=np.int64)
        return e, e, e, np.empty((0, 4))
    vid = np.concatenate([np.full(len(t), iv, dtype=np.int64) for iv, _, t in parts])
    label = np.concatenate([np.full(len(t), lb, dtype=np.int64) for _, lb, t in parts])
    tubes = np.concatenate([t for _, _, t in parts])
    return vid, tubes[:, 0].astype(np.int64), label, tubes[:, 1:5]


def _classes(gt: TubeGT, classes: Iterable[int] | None, convention: str) -> list[int]:
    if convention not in ("multisports", "act"):
        raise ValueError(f"convention must be 'multisports' or 'act', got {convention!r}")
    if classes is not None:
        return sorted(int(c) for c in classes)
    skip = MULTISPORTS_SKIPPED if convention == "multisports" else frozenset()
    return [i for i, name in enumerate(gt.labels) if name not in skip]


def _mean(per_class: dict[int, float]) -> float:
    return float(np.mean(list(per_class.values()))) if per_class else float("nan")


def _iou2d_act(gt_boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    return pairwise_iou(gt_boxes, np.broadcast_to(box, gt_boxes.shape), plus_one=True)


def _match_tubes_no_fallback(
    ranked: list[tuple[str, float, np.ndarray]], gt_tubes: list[tuple[str, np.ndarray]], thr: float
) -> np.ndarray:
    """MultiSports rule for tubes: best-IoU GT tube of the same video, TP if unmatched."""
    matched = np.zeros(len(gt_tubes), dtype=bool)
    tp = np.zeros(len(ranked), dtype=bool)
    for i, (video, _, tube) in enumerate(ranked):
        cand = [k for k, (v, _) in enumerate(gt_tubes) if v == video]
        if not cand:
            continue
        ious = [tube_iou(gt_tubes[k][1], tube) for k in cand]
        best = int(np.argmax(ious))
        if ious[best] >= thr and not matched[cand[best]]:
            matched[cand[best]] = tp[i] = True
    return tp


def _match_with_fallback(
    keys: Sequence[object],
    items: Sequence[np.ndarray] | np.ndarray,
    gt_keys: Sequence[object] | np.ndarray,
    gt_items: Sequence[np.ndarray] | np.ndarray,
    thr: float,
    iou_fn: Callable[[Any, np.ndarray], np.ndarray],
) -> np.ndarray:
    """ACT rule for N ranked detections: best IoU among the still unmatched GT with the
    same key (frame or video); a match removes that GT, so later detections fall back
    to the next best. Returns bool [N] true-positive flags."""
    remaining: dict[object, list[int]] = {}
    for k, key in enumerate(gt_keys):
        remaining.setdefault(key, []).append(k)
    tp = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        left = remaining.get(key)
        if not left:
            continue
        if isinstance(gt_items, np.ndarray):
            ious = iou_fn(gt_items[left], items[i])
        else:
            ious = iou_fn([gt_items[k] for k in left], items[i])
        best = int(np.argmax(ious))
        if ious[best] >= thr:
            tp[i] = True
            left.pop(best)
    return tp
