"""Multi-label action losses and the matching prediction-time scores.

AVA mixes one group of mutually exclusive classes (the PERSON_MOVEMENT "pose" classes:
stand, sit, walk, ...) with free multi-label classes (person-object, person-person).
ACAR §4.1 and IGMN §4.1 score the pose group with a softmax ("a person only belongs to
one pose action") and every other class with a sigmoid.

Choices (the papers do not spell them out):
- Pose term = softmax cross-entropy against the actor's pose labels normalised to a
  distribution. An actor with exactly one pose label gets the usual ``-log p_y``; an actor
  annotated with several poses (it happens in AVA) splits the target mass equally between
  them instead of being pushed toward one arbitrarily; an actor with no pose label
  (annotators sometimes give only interactions) contributes no pose term, because a
  softmax has no "none of these" outcome and forcing one would teach a wrong posture.
- Reduction: ``mean over actors with a pose label of the pose CE`` plus ``mean over
  (actor, non-pose class) of the sigmoid BCE``. With an empty exclusive group this is exactly
  the plain per-class BCE (PCCA §3.1, mode ``"bce"``), so datasets without exclusive
  classes (MultiSports, UCF101-24) lose nothing by using mode ``"ava"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossMode = Literal["ava", "bce"]


def _exclusive_mask(exclusive: Tensor | Sequence[int], num_classes: int, device) -> Tensor:
    """BoolTensor[K], True at the mutually exclusive (pose) classes."""
    idx = torch.as_tensor(exclusive, dtype=torch.long, device=device).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise ValueError(
            f"exclusive class indices must be dense indices in [0, {num_classes}), "
            f"got {idx.tolist()}"
        )
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"exclusive class indices repeat: {idx.tolist()}")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[idx] = True
    return mask


def ava_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    exclusive: Tensor | Sequence[int],
    mode: LossMode = "ava",
    normalizers: tuple[float, float] | None = None,
) -> Tensor:
    """Scalar training loss for multi-label action classification.

    Args:
        logits: Tensor[N, K], raw class scores.
        targets: Tensor[N, K] of 0/1 (float or bool) labels.
        exclusive: dense class indices (0..K-1) of the mutually exclusive pose classes;
            may be empty. Ignored in mode ``"bce"``.
        mode: ``"ava"`` = softmax CE over the exclusive group + sigmoid BCE over the rest
            (see module docstring for actors with zero or several pose labels);
            ``"bce"`` = per-class sigmoid BCE over all K classes (PCCA).
        normalizers: the (BCE terms, pose actors) counts the two sums are divided by
            (:func:`loss_normalizers` of a larger batch); None: this batch's own, i.e. the
            means. A data-parallel rank passes its global batch's, so that the ranks' losses
            sum to the global batch's loss.

    Returns:
        Tensor[] (0-dim), the loss; 0 for N == 0 (keeps the graph so backward works).
    """
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must both be [N, K]; got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if mode not in ("ava", "bce"):
        raise ValueError(f"mode must be 'ava' or 'bce', got {mode!r}")
    targets = targets.to(logits.dtype)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if mode == "bce":
        if normalizers is None:
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / normalizers[0]

    def mean(terms: Tensor) -> Tensor:  # this batch's mean, or its share of the global one
        return terms.mean() if normalizers is None else terms.sum() / normalizers[1]

    pose = _exclusive_mask(exclusive, logits.shape[1], logits.device)
    loss = logits.new_zeros(())
    if bool((~pose).any()):
        bce = F.binary_cross_entropy_with_logits(
            logits[:, ~pose], targets[:, ~pose], reduction="mean" if normalizers is None else "sum"
        )
        loss = loss + (bce if normalizers is None else bce / normalizers[0])
    if bool(pose.any()):
        pose_targets = targets[:, pose]  # [N, P]
        n_pose = pose_targets.sum(dim=1)  # [N]
        has_pose = n_pose > 0
        if bool(has_pose.any()):
            dist = pose_targets[has_pose] / n_pose[has_pose, None]  # rows sum to 1
            log_p = F.log_softmax(logits[has_pose][:, pose], dim=1)
            loss = loss + mean(-(dist * log_p).sum(dim=1))
    return loss


def loss_normalizers(
    targets: Tensor, exclusive: Tensor | Sequence[int], mode: LossMode = "ava"
) -> tuple[float, float]:
    """What :func:`ava_loss` divides its sums by for ``targets`` [N, K]: the number of BCE
    terms (N × the non-exclusive classes; N × K in mode ``"bce"``) and of actors with a
    pose label (at least 1 each, so that a batch without any divides nothing by zero)."""
    n, k = targets.shape
    if mode == "bce":
        return float(max(n * k, 1)), 1.0
    pose = _exclusive_mask(exclusive, k, targets.device)
    bce_n = n * int((~pose).sum())
    pose_n = int((targets[:, pose].sum(dim=1) > 0).sum()) if bool(pose.any()) else 0
    return float(max(bce_n, 1)), float(max(pose_n, 1))


def ava_scores(logits: Tensor, exclusive: Tensor | Sequence[int]) -> Tensor:
    """Prediction-time probabilities matching ``ava_loss``.

    Args:
        logits: Tensor[N, K].
        exclusive: dense indices of the mutually exclusive classes (may be empty).

    Returns:
        Tensor[N, K] in [0, 1]: softmax over the exclusive group (summing to 1 per actor),
        sigmoid for every other class.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, K], got {tuple(logits.shape)}")
    pose = _exclusive_mask(exclusive, logits.shape[1], logits.device)
    scores = torch.sigmoid(logits)
    if bool(pose.any()):
        scores[:, pose] = torch.softmax(logits[:, pose], dim=1)
    return scores
