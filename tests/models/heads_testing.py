"""What the head tests share: random ``ActorBatch``es, sub-batches, gradient and overfit checks.

The ``one_thread`` fixture these tests use lives in ``tests/models/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models.heads.batch import ActorBatch
from models.losses import ava_loss


def sized_boxes(xy: Tensor, g: torch.Generator) -> Tensor:
    """Bottom-right corners of boxes ``U[0.1, 0.4)`` wide and high."""
    return xy + (torch.rand(xy.shape, generator=g) * 0.3 + 0.1)


def offset_boxes(xy: Tensor, g: torch.Generator) -> Tensor:
    """Bottom-right corners ``0.2 + U[0, 0.3)`` away (with ``corner=0.5``: inside the image)."""
    return xy + 0.2 + 0.3 * torch.rand(xy.shape, generator=g)


def random_actor_batch(
    counts: list[int],
    *,
    channels: int,
    height: int = 4,
    width: int = 6,
    seed: int = 0,
    corner: float = 0.6,
    far_corner: Callable[[Tensor, torch.Generator], Tensor] = sized_boxes,
    roi_steps: int | None = None,
) -> ActorBatch:
    """Random keyframes (``channels x height x width`` context), ``counts[b]`` actors in b.

    Drawn from a generator seeded with ``seed``, in this order: top-left corners
    (``corner * U[0, 1)``), then whatever ``far_corner(xy, generator)`` draws for the
    bottom-right ones, context, pooled features and, with ``roi_steps``, the ``roi``
    ``[N, C, 7, 7]`` and ``roi_t`` ``[N, C, roi_steps, 7, 7]`` maps.
    """
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    xy = torch.rand(n, 2, generator=g) * corner
    far = far_corner(xy, g)
    context = torch.randn(len(counts), channels, height, width, generator=g)
    pooled = torch.randn(n, channels, generator=g)
    rois = {}
    if roi_steps is not None:
        rois["roi"] = torch.randn(n, channels, 7, 7, generator=g)
        rois["roi_t"] = torch.randn(n, channels, roi_steps, 7, 7, generator=g)
    return ActorBatch(
        context=context,
        pooled=pooled,
        boxes=torch.cat([xy, far], dim=1),
        batch_index=torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
        **rois,
    )


def select_actors(
    batch: ActorBatch, index: Tensor, batch_index: Tensor, context: Tensor
) -> ActorBatch:
    """The actors ``index`` of ``batch`` (with their RoI maps, if any) on ``context``."""
    return ActorBatch(
        context=context,
        pooled=batch.pooled[index],
        boxes=batch.boxes[index],
        batch_index=batch_index,
        roi=None if batch.roi is None else batch.roi[index],
        roi_t=None if batch.roi_t is None else batch.roi_t[index],
    )


def keyframe_alone(batch: ActorBatch, keyframe: int) -> ActorBatch:
    """The batch made of one keyframe and its actors only."""
    keep = batch.batch_index == keyframe
    context = batch.context[keyframe : keyframe + 1]
    return select_actors(batch, keep, torch.zeros(int(keep.sum()), dtype=torch.long), context)


def permute_actors(batch: ActorBatch, order: Tensor) -> ActorBatch:
    """``batch`` with its actors reordered by ``order`` (which must keep their keyframes)."""
    return select_actors(batch, order, batch.batch_index, batch.context)


def assert_grads_reach_every_parameter(module: nn.Module, *, finite: bool = False) -> None:
    """After a backward pass: every parameter has a non-zero (and, if asked, finite) grad."""
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        if finite:
            assert torch.isfinite(p.grad).all(), name
        assert bool(p.grad.abs().sum() > 0), name


def fit(
    module: nn.Module, loss_fn: Callable[[], Tensor | tuple[Tensor, ...]], *, lr: float, steps: int
) -> Tensor | tuple[Tensor, ...]:
    """``steps`` Adam steps on ``loss_fn()`` (or its first element); its last result."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(steps):
        result = loss_fn()
        loss = result[0] if isinstance(result, tuple) else result
        opt.zero_grad()
        loss.backward()
        opt.step()
    return result


def ava_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """``ava_loss`` in ``bce`` mode with no exclusive classes."""
    return ava_loss(logits, targets, exclusive=[], mode="bce")


def fit_logits(
    head: nn.Module,
    batch: ActorBatch,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    lr: float,
    steps: int,
) -> Tensor:
    """:func:`fit` on ``loss_fn(head(batch).logits, targets)``; the last loss."""
    loss = fit(head, lambda: loss_fn(head(batch).logits, targets), lr=lr, steps=steps)
    assert isinstance(loss, Tensor)
    return loss
