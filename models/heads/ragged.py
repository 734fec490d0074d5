"""Pad the ragged actors of a batch to a dense [B, Nmax, ...] tensor and back.

Heads that relate the actors of one keyframe (HR2O, BHOI, S/T-only, ...) attend over a
dense per-keyframe axis; the boolean mask marks the real actors so that the padding
never influences a real actor (masked keys) and is dropped again by ``unpad_actors``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def actor_slots(batch_index: Tensor, num_keyframes: int) -> tuple[Tensor, int]:
    """Position of every actor inside its keyframe, and the largest actor count.

    Args:
        batch_index: LongTensor[N], keyframe 0..B-1 of each actor, non-decreasing
            (the ``ActorBatch`` contract).
        num_keyframes: B.

    Returns:
        (slot LongTensor[N] with values 0..count-1 within each keyframe, Nmax).

    Raises:
        ValueError: if ``batch_index`` is not 1-D, leaves [0, B) or decreases.
    """
    if batch_index.dim() != 1:
        raise ValueError(f"batch_index must be 1-D [N], got shape {tuple(batch_index.shape)}")
    n = batch_index.numel()
    if n == 0:
        return batch_index.new_zeros(0, dtype=torch.long), 0
    batch_index = batch_index.long()
    lo, hi = int(batch_index.min()), int(batch_index.max())
    if lo < 0 or hi >= num_keyframes:
        raise ValueError(
            f"batch_index values must lie in [0, {num_keyframes}) (one per keyframe), "
            f"got range [{lo}, {hi}]"
        )
    if n > 1 and bool((batch_index[1:] < batch_index[:-1]).any()):
        first = int(torch.nonzero(batch_index[1:] < batch_index[:-1])[0, 0]) + 1
        raise ValueError(
            f"batch_index must be non-decreasing (actors grouped by keyframe); actor {first} "
            f"has keyframe {int(batch_index[first])} after {int(batch_index[first - 1])}"
        )
    counts = torch.bincount(batch_index, minlength=num_keyframes)  # [B]
    starts = torch.cumsum(counts, 0) - counts  # index of each keyframe's first actor
    slot = torch.arange(n, device=batch_index.device) - starts[batch_index]
    return slot, int(counts.max())


def pad_actors(x: Tensor, batch_index: Tensor, num_keyframes: int) -> tuple[Tensor, Tensor]:
    """Scatter ragged actors to a zero-padded per-keyframe tensor.

    Args:
        x: Tensor[N, ...], one row per actor.
        batch_index: LongTensor[N], keyframe of each actor, non-decreasing.
        num_keyframes: B (keyframes without actors become all-padding rows).

    Returns:
        (padded Tensor[B, Nmax, ...] with zeros at padding, mask BoolTensor[B, Nmax] True
        at real actors). Actor ``i`` lands at ``[batch_index[i], slot]`` where ``slot``
        counts the earlier actors of the same keyframe, so the within-keyframe order is kept.
    """
    if x.shape[0] != batch_index.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} actor rows but batch_index has {batch_index.shape[0]} entries"
        )
    slot, n_max = actor_slots(batch_index, num_keyframes)
    padded = x.new_zeros((num_keyframes, n_max, *x.shape[1:]))
    mask = torch.zeros(num_keyframes, n_max, dtype=torch.bool, device=x.device)
    padded[batch_index.long(), slot] = x
    mask[batch_index.long(), slot] = True
    return padded, mask


def unpad_actors(padded: Tensor, mask: Tensor) -> Tensor:
    """Inverse of ``pad_actors``: Tensor[B, Nmax, ...] + mask[B, Nmax] -> Tensor[N, ...].

    Boolean indexing walks keyframe-major, slot-minor, which is exactly the original actor
    order because ``batch_index`` is non-decreasing.
    """
    if padded.shape[:2] != mask.shape:
        raise ValueError(
            f"padded leading dims {tuple(padded.shape[:2])} do not match mask {tuple(mask.shape)}"
        )
    return padded[mask]
