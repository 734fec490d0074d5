"""LinearHead: pooled actor -> dropout -> FC."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models.heads.linear import LinearHead
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    keyframe_alone,
    random_actor_batch,
)

C, K = 16, 5
# logits[0, :3] of a seed-0 head on make_batch([2]) (torch 2.14 CPU).
PINNED = [0.062296, 0.511384, 0.473346]


pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C)


@pytest.mark.parametrize("counts", [[1], [4], [2, 1, 3]])
def test_shapes(counts: list[int]) -> None:
    out = LinearHead(in_channels=C, num_classes=K)(make_batch(counts))
    assert out.logits.shape == (sum(counts), K)
    assert out.features is not None and out.features.shape == (sum(counts), C)


def test_actor_depends_only_on_itself() -> None:
    head = LinearHead(in_channels=C, num_classes=K).eval()
    batch = make_batch([2, 3])
    alone = keyframe_alone(batch, 1)
    assert torch.allclose(head(batch).logits[2:], head(alone).logits, atol=1e-6)


def test_dropout_only_in_training() -> None:
    head = LinearHead(in_channels=C, num_classes=K)
    batch = make_batch([8])
    torch.manual_seed(0)
    assert not torch.allclose(head(batch).logits, head(batch).logits)
    head.eval()
    assert torch.equal(head(batch).logits, head(batch).logits)


def test_gradients_reach_every_parameter() -> None:
    head = LinearHead(in_channels=C, num_classes=K)
    head(make_batch([2, 3])).logits.square().sum().backward()
    assert_grads_reach_every_parameter(head)


def test_overfits_tiny_set() -> None:
    torch.manual_seed(0)
    batch = make_batch([2, 3, 1], seed=1)
    targets = (torch.rand(6, K) > 0.5).float()
    head = LinearHead(in_channels=C, num_classes=K, dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=5e-2, steps=200)
    assert loss.item() < 0.05


def test_pinned_values() -> None:
    torch.manual_seed(0)
    head = LinearHead(in_channels=C, num_classes=K).eval()
    logits = head(make_batch([2])).logits
    assert torch.allclose(logits[0, :3], torch.tensor(PINNED), atol=1e-5)
