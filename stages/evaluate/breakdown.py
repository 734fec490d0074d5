"""Breakdowns of an AVA evaluation: head vs tail classes, and person-detector quality."""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.data.types import BoxTable
from stages.evaluate.ap import precision_recall, rank_by_score, voc_ap
from stages.evaluate.ava import _keyframe_ids
from stages.evaluate.matching import match_to_best_gt


def head_tail(
    per_class: dict[int, float], train_counts: dict[int, int], k: int = 20
) -> dict[str, Any]:
    """Mean AP of the ``k`` most and ``k`` least frequent training classes.

    Only classes in ``per_class`` (those with GT) are ranked; a class missing from
    ``train_counts`` counts 0. With fewer than 2k classes, k becomes ``C // 2`` so
    head and tail never share a class. Equal counts rank by class id.

    Returns:
        ``{"k", "head_mAP", "tail_mAP", "head_classes", "tail_classes"}`` (classes from
        most to least frequent).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    classes = sorted(per_class, key=lambda c: (-int(train_counts.get(c, 0)), c))
    k_eff = min(k, len(classes) // 2)
    if k_eff == 0:
        raise ValueError(f"head/tail needs at least 2 evaluated classes, got {len(classes)}")
    head, tail = classes[:k_eff], classes[-k_eff:]
    return {
        "k": k_eff,
        "head_mAP": float(np.mean([per_class[c] for c in head])),
        "tail_mAP": float(np.mean([per_class[c] for c in tail])),
        "head_classes": head,
        "tail_classes": tail,
    }


def head_tail_change(
    before: dict[int, float], after: dict[int, float], train_counts: dict[int, int], k: int = 20
) -> dict[str, Any]:
    """Head/tail mAP of two runs (e.g. before and after cRT) and their change
    (after - before). Both runs are ranked on the classes they share."""
    shared = sorted(set(before) & set(after))
    b = head_tail({c: before[c] for c in shared}, train_counts, k)
    a = head_tail({c: after[c] for c in shared}, train_counts, k)
    return {
        "k": a["k"],
        "head_before": b["head_mAP"],
        "head_after": a["head_mAP"],
        "head_change": a["head_mAP"] - b["head_mAP"],
        "tail_before": b["tail_mAP"],
        "tail_after": a["tail_mAP"],
        "tail_change": a["tail_mAP"] - b["tail_mAP"],
        "head_classes": a["head_classes"],
        "tail_classes": a["tail_classes"],
    }


def detector_ap(
    gt: BoxTable, proposals: BoxTable, iou_threshold: float = 0.5
) -> tuple[float, float]:
    """Person-detector AP and recall of ``proposals`` against the GT person boxes.

    GT rows repeat a person's box once per action: GT boxes are the unique boxes of
    each keyframe. Proposal rows repeated per action (a detection file) are merged
    the same way, keeping the highest score. Matching and AP follow the AVA rule
    (best-IoU box only, VOC AP); recall is over all proposals. Actions are ignored.

    Returns:
        (AP, recall), both in [0, 1]; (0.0, 0.0) when the GT has no box.
    """
    gt_kf, det_kf = _keyframe_ids((gt.video, gt.timestamp), (proposals.video, proposals.timestamp))
    g_kf, g_boxes = _unique_boxes(gt_kf, gt.boxes, np.zeros(len(gt)))[:2]
    d_kf, d_boxes, d_score = _unique_boxes(det_kf, proposals.boxes, proposals.score)
    if g_kf.size == 0:
        return 0.0, 0.0
    order = rank_by_score(d_score)
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    tp = match_to_best_gt(d_kf, d_boxes, rank, g_kf, g_boxes, iou_threshold)
    precision, recall = precision_recall(tp[order], int(g_kf.size))
    return voc_ap(precision, recall), float(recall[-1]) if recall.size else 0.0


def _unique_boxes(
    kf: np.ndarray, boxes: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (keyframe, box) rows in first-seen order, each with its highest score."""
    if kf.size == 0:
        return kf, boxes.reshape(0, 4), score
    rows = np.column_stack([kf.astype(np.float64), boxes])
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    best = np.full(first.size, -np.inf)
    np.maximum.at(best, inverse.ravel(), score)
    keep = np.argsort(first, kind="stable")
    return kf[first[keep]], boxes[first[keep]], best[keep]
