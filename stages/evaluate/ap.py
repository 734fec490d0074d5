"""Average precision from ranked true/false-positive labels, and box IoU.

Shared by the AVA evaluator, the detector breakdown and the tube metrics. The
arithmetic follows the reference implementations operation for operation
(cumulative sums, one division, precision made monotone from the right), so the
results agree with them to the last printed digit.
"""

from __future__ import annotations

import numpy as np


def rank_by_score(scores: np.ndarray) -> np.ndarray:
    """Indices that order ``scores`` [N] from highest to lowest.

    Ties keep their input order (a stable sort on the negated score). The official
    AVA code uses ``np.argsort(scores)[::-1]``, whose tie order depends on numpy's
    sort kernel; a defined order makes the result reproducible, and the peer values
    in ``tests/fixtures/peer_ava`` come out exactly with it.
    """
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def precision_recall(tp_ranked: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall [N] after each of N ranked detections.

    Args:
        tp_ranked: bool [N], true positive flags in rank order.
        num_gt: number of ground-truth instances (> 0).
    """
    tp = np.cumsum(tp_ranked.astype(np.float64))
    fp = np.cumsum((~tp_ranked).astype(np.float64))
    return tp / (tp + fp), tp / float(num_gt)


def voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC all-points AP: sentinels at recall 0 and 1, precision made monotone from
    the right, sum of recall steps times precision. Empty input gives 0.0."""
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.concatenate([[0.0], precision, [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[steps] - rec[steps - 1]) * prec[steps]))


def trapezoid_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """ACT/MOC AP: trapezoids under the curve that starts at (recall 0, precision 1)."""
    prec = np.concatenate([[1.0], precision])
    rec = np.concatenate([[0.0], recall])
    return float(np.sum((rec[1:] - rec[:-1]) * (prec[1:] + prec[:-1]) * 0.5))


def pairwise_iou(a: np.ndarray, b: np.ndarray, *, plus_one: bool = False) -> np.ndarray:
    """IoU [N] of row-aligned box pairs ``a[i]``, ``b[i]`` (float64 [N, 4], x1 y1 x2 y2).

    ``plus_one`` uses the pixel convention (width = x2 - x1 + 1) of ACT/MOC.
    The union is ``area(a) + area(b) - intersection``, as the reference codes compute it.
    """
    one = 1.0 if plus_one else 0.0
    iw = np.maximum(0.0, np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + one)
    ih = np.maximum(0.0, np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + one)
    inter = ih * iw
    area_a = (a[:, 3] - a[:, 1] + one) * (a[:, 2] - a[:, 0] + one)
    area_b = (b[:, 3] - b[:, 1] + one) * (b[:, 2] - b[:, 0] + one)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a + area_b - inter)
    # Degenerate pairs (zero union) overlap nowhere: count them as IoU 0, not NaN.
    return np.where(np.isfinite(iou), iou, 0.0)
