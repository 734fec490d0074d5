"""Noisy person proposals from GT boxes: jitter, misses and low-score false positives."""

from __future__ import annotations

import numpy as np

from models.boxes import iou_aligned


def noisy_proposals(
    rng: np.random.Generator,
    gt: np.ndarray,
    *,
    jitter: float,
    miss_rate: float,
    false_positive_rate: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Proposals for one keyframe.

    Args:
        gt: float [N, 4] normalized GT person boxes.
        jitter: std of each edge's displacement as a fraction of the box side; every box
            draws its own quality factor in [0.3, 2.0] so that IoU spreads over ~0.6-0.95.
        miss_rate: probability that a person gets no proposal.
        false_positive_rate: mean number (Poisson) of spurious boxes per keyframe.

    Returns:
        boxes float [M, 4] normalized and clipped to [0, 1], and scores float [M] in (0, 1):
        a proposal's score rises with its IoU to the GT box; false positives score < 0.35.
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    keep = rng.random(len(gt)) >= miss_rate
    src = gt[keep]
    side = np.stack([src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]], axis=1)
    quality = rng.uniform(0.3, 2.0, size=(len(src), 1))
    noise = rng.normal(0.0, 1.0, size=(len(src), 4)) * jitter * quality * np.tile(side, 2)
    boxes = np.clip(src + noise, 0.0, 1.0)
    # Keep corners ordered and boxes at least 1% of the frame on each side.
    lo = np.minimum(boxes[:, :2], boxes[:, 2:])
    hi = np.maximum(np.maximum(boxes[:, :2], boxes[:, 2:]), lo + 0.01)
    boxes = np.concatenate([lo, np.clip(hi, 0.0, 1.0)], axis=1)
    iou = iou_aligned(boxes, src)
    scores = np.clip(0.55 + 0.9 * (iou - 0.5) + rng.normal(0.0, 0.04, len(src)), 0.36, 0.999)
    n_fp = int(rng.poisson(false_positive_rate))
    if n_fp:
        wh = np.stack([rng.uniform(0.06, 0.2, n_fp), rng.uniform(0.2, 0.5, n_fp)], axis=1)
        xy = rng.uniform(0.0, 1.0, size=(n_fp, 2)) * (1.0 - wh)
        boxes = np.concatenate([boxes, np.concatenate([xy, xy + wh], axis=1)])
        scores = np.concatenate([scores, rng.uniform(0.05, 0.35, n_fp)])
    return boxes, scores
