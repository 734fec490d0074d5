"""Vectorised greedy matching of detections to ground truth, one group at a time.

A *group* is whatever must match only within itself: a (keyframe, class) pair for
the AVA evaluator, a keyframe for the person-detector breakdown. The rule is the
official AVA one: within a group, detections are visited in descending score
order; each looks only at its highest-IoU ground-truth box (the first one in GT
order on equal IoU) and is a true positive when that IoU reaches the threshold and
the box is still unmatched. There is no fall-back to the next-best box.

Vectorised form (no loop over groups): a detection's best box is fixed before any
matching happens, so "the box is still unmatched" means "no earlier detection in
score order chose the same box with IoU >= threshold". Among the detections whose
best IoU clears the threshold, the first one per chosen box is the true positive.
"""

from __future__ import annotations

import numpy as np

from stages.evaluate.ap import pairwise_iou


def match_to_best_gt(
    det_group: np.ndarray,
    det_boxes: np.ndarray,
    det_rank: np.ndarray,
    gt_group: np.ndarray,
    gt_boxes: np.ndarray,
    iou_threshold: float,
    *,
    plus_one: bool = False,
) -> np.ndarray:
    """True-positive flags for N detections against M ground-truth boxes.

    Args:
        det_group: int64 [N], group id of each detection.
        det_boxes: float64 [N, 4], x1 y1 x2 y2.
        det_rank: int64 [N], position of each detection in descending score order
            (smaller = visited first); only its order within a group matters.
        gt_group: int64 [M], group id of each GT box; GT order within a group is
            the order of these arrays (it breaks IoU ties).
        gt_boxes: float64 [M, 4].
        iou_threshold: a match needs IoU >= this.
        plus_one: pixel IoU convention (width = x2 - x1 + 1).

    Returns:
        bool [N], True for true positives.
    """
    n = det_group.shape[0]
    tp = np.zeros(n, dtype=bool)
    if n == 0 or gt_group.shape[0] == 0:
        return tp

    gt_order = np.argsort(gt_group, kind="stable")  # groups contiguous, GT order kept
    gt_sorted = gt_group[gt_order]
    start = np.searchsorted(gt_sorted, det_group, side="left")
    count = np.searchsorted(gt_sorted, det_group, side="right") - start
    dets = np.flatnonzero(count > 0)
    if dets.size == 0:
        return tp

    # One row per (detection, GT box of its group): segments of `cnt` rows per detection.
    cnt = count[dets]
    seg_start = np.cumsum(cnt) - cnt
    within = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(seg_start, cnt)
    pair_gt = np.repeat(start[dets], cnt) + within  # position in gt_sorted
    iou = pairwise_iou(
        det_boxes[np.repeat(dets, cnt)], gt_boxes[gt_order[pair_gt]], plus_one=plus_one
    )

    best_iou = np.maximum.reduceat(iou, seg_start)
    # First GT reaching the maximum, as np.argmax picks it.
    first_max = np.where(iou == np.repeat(best_iou, cnt), within, np.iinfo(np.int64).max)
    best_gt = start[dets] + np.minimum.reduceat(first_max, seg_start)

    ok = best_iou >= iou_threshold
    cand, cand_gt = dets[ok], best_gt[ok]
    order = np.lexsort((det_rank[cand], cand_gt))
    chosen = cand_gt[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = chosen[1:] != chosen[:-1]
    tp[cand[order[first]]] = True
    return tp
