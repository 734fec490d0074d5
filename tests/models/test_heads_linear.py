"""LinearHead: pooled actor -> dropout -> FC."""

from __future__ import annotations

import pytest
import torch

from models.heads.batch import ActorBatch
from models.heads.linear import LinearHead
from models.losses import ava_loss

C, K = 16, 5
# logits[0, :3] of a seed-0 head on make_batch([2]) (torch 2.14 CPU).
PINNED = [0.062296, 0.511384, 0.473346]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a shared 2-core box: one intra-op thread is ~20x faster than contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(counts: list[int], seed: int = 0) -> ActorBatch:
    """Random keyframes (C x 4 x 6 context) with ``counts[b]`` actors in keyframe b."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    xy = torch.rand(n, 2, generator=g) * 0.6
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
    return ActorBatch(
        context=torch.randn(len(counts), C, 4, 6, generator=g),
        pooled=torch.randn(n, C, generator=g),
        boxes=torch.cat([xy, xy + wh], dim=1),
        batch_index=torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
    )


@pytest.mark.parametrize("counts", [[1], [4], [2, 1, 3]])
def test_shapes(counts: list[int]) -> None:
    out = LinearHead(in_channels=C, num_classes=K)(make_batch(counts))
    assert out.logits.shape == (sum(counts), K)
    assert out.features is not None and out.features.shape == (sum(counts), C)


def test_actor_depends_only_on_itself() -> None:
    head = LinearHead(in_channels=C, num_classes=K).eval()
    batch = make_batch([2, 3])
    alone = ActorBatch(
        context=batch.context[1:],
        pooled=batch.pooled[2:],
        boxes=batch.boxes[2:],
        batch_index=torch.zeros(3, dtype=torch.long),
    )
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
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_overfits_tiny_set() -> None:
    torch.manual_seed(0)
    batch = make_batch([2, 3, 1], seed=1)
    targets = (torch.rand(6, K) > 0.5).float()
    head = LinearHead(in_channels=C, num_classes=K, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=5e-2)
    for _ in range(200):
        opt.zero_grad()
        loss = ava_loss(head(batch).logits, targets, exclusive=[], mode="bce")
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_pinned_values() -> None:
    torch.manual_seed(0)
    head = LinearHead(in_channels=C, num_classes=K).eval()
    logits = head(make_batch([2])).logits
    assert torch.allclose(logits[0, :3], torch.tensor(PINNED), atol=1e-5)
