"""ACRNHead: first-order actor-context relation maps, classified from their pooled maps."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models.heads.acrn import ACRNHead
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    random_actor_batch,
)

C, K, H, W = 16, 5, 4, 6
# logits[0, :3] of a seed-0 tiny head on make_batch([2]) (torch 2.14 CPU).
PINNED = [-0.335538, 0.272282, -0.820923]


pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C, height=H, width=W)


def tiny_head(**kwargs) -> ACRNHead:
    kwargs.setdefault("variant", "paper")  # MMAction2's: test_heads_acrn_mmaction2.py
    return ACRNHead(in_channels=C, num_classes=K, reduce_dim=12, dim=8, **kwargs)


@pytest.mark.parametrize("counts", [[1], [4], [2, 1, 3]])
def test_shapes(counts: list[int]) -> None:
    head = tiny_head()
    batch = make_batch(counts)
    out = head(batch)
    n = sum(counts)
    assert out.logits.shape == (n, K)
    assert out.features is not None and out.features.shape == (n, 12 + 8)
    assert head.first_order(batch).shape == (n, 8, H, W)
    assert head.classifier.out_features == K


def test_first_order_map_is_local_to_the_context_location() -> None:
    head = tiny_head().eval()
    batch = make_batch([2])
    before = head.first_order(batch)
    batch.context[0, :, 0, 0] += 5.0  # change the scene at the top-left cell only
    after = head.first_order(batch)
    changed = (after - before).abs().sum(dim=(0, 1)) > 0  # [H, W]
    # 1x1 conv then a 3x3 conv: only the 2x2 neighbourhood of (0, 0) can move.
    assert changed[:2, :2].any() and not changed[2:, :].any() and not changed[:, 2:].any()


def test_actor_feature_is_tiled_over_every_location() -> None:
    head = tiny_head().eval()
    batch = make_batch([2])
    before = head.first_order(batch)
    batch.pooled[0] += 3.0
    after = head.first_order(batch)
    assert ((after[0] - before[0]).abs().sum(dim=0) > 0).all()
    assert torch.equal(after[1], before[1])  # ACRN has no actor-actor term


def test_gradients_reach_every_parameter() -> None:
    head = tiny_head()
    head(make_batch([2, 3])).logits.square().sum().backward()
    assert_grads_reach_every_parameter(head)


def test_overfits_tiny_set() -> None:
    torch.manual_seed(0)
    batch = make_batch([2, 3, 1], seed=1)
    targets = (torch.rand(6, K) > 0.5).float()
    head = tiny_head(dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=1e-2, steps=60)
    assert loss.item() < 0.05


def test_pinned_values() -> None:
    torch.manual_seed(0)
    logits = tiny_head().eval()(make_batch([2])).logits
    assert torch.allclose(logits[0, :3], torch.tensor(PINNED), atol=1e-5)
