"""Average precision from ranked true/false-positive labels, and box IoU.

Shared by the AVA evaluator, the detector breakdown and the tube metrics. The
arithmetic follows the reference implementations operation for operation
(cumulative sums, one division, precision made monotone from the right), so the
results agree with them to the last printed digit.
"""

from __future__ import annotations

import numpy as np

from models.boxes import iou_aligned


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


pairwise_iou = iou_aligned  # models/boxes.py; the evaluator's name for it
