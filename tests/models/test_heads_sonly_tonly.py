"""S-only / T-only relation heads: shapes, permutation, masking, gradients, overfitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.heads.batch import ActorBatch
from models.heads.relation_transformer import RelationTransformerHead

C, K, T = 16, 5, 3
MODES = ["spatial", "temporal"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops run faster on one thread than two contending ones on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(counts: list[int], *, seed: int = 0) -> ActorBatch:
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    xy = torch.rand(n, 2, generator=g) * 0.5
    return ActorBatch(
        context=torch.randn(len(counts), C, 4, 6, generator=g),
        pooled=torch.randn(n, C, generator=g),
        boxes=torch.cat([xy, xy + 0.3], dim=1),
        batch_index=torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
        roi=torch.randn(n, C, 7, 7, generator=g),
        roi_t=torch.randn(n, C, T, 7, 7, generator=g),
    )


def select(batch: ActorBatch, index: torch.Tensor, batch_index: torch.Tensor, context):
    assert batch.roi is not None and batch.roi_t is not None
    return ActorBatch(
        context=context,
        pooled=batch.pooled[index],
        boxes=batch.boxes[index],
        batch_index=batch_index,
        roi=batch.roi[index],
        roi_t=batch.roi_t[index],
    )


def tiny_head(mode: str, **kw) -> RelationTransformerHead:
    args = dict(
        in_channels=C,
        num_classes=K,
        mode=mode,
        hidden_dim=16,
        num_heads=2,
        dropout=0.0,
        classifier_dropout=0.0,
    )
    return RelationTransformerHead(**{**args, **kw})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("counts", [[1], [4], [1, 3, 2], [2, 0, 1]])
def test_shapes(mode: str, counts: list[int]) -> None:
    torch.manual_seed(0)
    head = tiny_head(mode).eval()
    out = head(make_batch(counts))
    n, positions = sum(counts), 49 if mode == "spatial" else T
    assert out.logits.shape == (n, K)
    assert out.features is not None and out.features.shape == (n, 16)
    attn = out.attention["relation"]
    assert attn.shape == (n, positions, max(counts))
    # each row is a softmax over the keyframe's real actors only
    torch.testing.assert_close(attn.sum(-1), torch.ones(n, positions))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("mode", MODES)
def test_permuting_actors_permutes_logits(mode: str) -> None:
    torch.manual_seed(0)
    head = tiny_head(mode, num_layers=2).eval()
    batch = make_batch([3, 2])
    perm = torch.tensor([2, 0, 1, 4, 3])
    permuted = select(batch, perm, batch.batch_index, batch.context)
    torch.testing.assert_close(head(permuted).logits, head(batch).logits[perm])


@pytest.mark.parametrize("mode", MODES)
def test_other_keyframes_and_padding_change_nothing(mode: str) -> None:
    torch.manual_seed(0)
    head = tiny_head(mode).eval()
    batch = make_batch([2, 5, 1])
    together = head(batch)
    for k in range(3):
        sel = torch.nonzero(batch.batch_index == k)[:, 0]
        alone = head(select(batch, sel, torch.zeros_like(sel), batch.context[k : k + 1]))
        torch.testing.assert_close(alone.logits, together.logits[sel], atol=1e-5, rtol=1e-5)


def test_a_lone_actor_attends_only_to_itself() -> None:
    # one actor per keyframe: each attention row is all on itself, never on padding
    torch.manual_seed(0)
    head = tiny_head("temporal").eval()
    out = head(make_batch([1, 1]))
    torch.testing.assert_close(out.attention["relation"], torch.ones(2, T, 1))


def test_spatial_head_ignores_a_shared_reordering_of_positions() -> None:
    # weights are shared across positions and outputs averaged over them
    torch.manual_seed(0)
    head = tiny_head("spatial").eval()
    batch = make_batch([3])
    assert batch.roi is not None
    order = torch.randperm(49)
    shuffled = batch.roi.flatten(2)[:, :, order].reshape_as(batch.roi)
    moved = ActorBatch(
        context=batch.context,
        pooled=batch.pooled,
        boxes=batch.boxes,
        batch_index=batch.batch_index,
        roi=shuffled,
    )
    torch.testing.assert_close(head(moved).logits, head(batch).logits, atol=1e-5, rtol=1e-5)


def test_temporal_head_averages_over_space() -> None:
    torch.manual_seed(0)
    head = tiny_head("temporal").eval()
    batch = make_batch([2])
    assert batch.roi_t is not None
    noise = torch.randn_like(batch.roi_t)
    noise = noise - noise.mean(dim=(3, 4), keepdim=True)  # zero spatial mean
    noisy = ActorBatch(
        context=batch.context,
        pooled=batch.pooled,
        boxes=batch.boxes,
        batch_index=batch.batch_index,
        roi_t=batch.roi_t + noise,
    )
    torch.testing.assert_close(head(noisy).logits, head(batch).logits, atol=1e-5, rtol=1e-5)
    # max aggregation does see the change
    maxed = tiny_head("temporal", aggregation="max").eval()
    assert not torch.allclose(maxed(noisy).logits, maxed(batch).logits)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_parameter(mode: str) -> None:
    torch.manual_seed(0)
    head = tiny_head(mode, num_layers=2).train()
    out = head(make_batch([1, 3, 0, 2]))
    out.logits.square().mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize("mode", MODES)
def test_overfits_a_few_keyframes(mode: str) -> None:
    torch.manual_seed(0)
    head = tiny_head(mode).train()
    batch = make_batch([1, 2, 3, 2], seed=1)
    labels = (torch.rand(batch.num_actors, K) < 0.4).float()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(80):
        loss = F.binary_cross_entropy_with_logits(head(batch).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02


def test_pinned_values_under_seed_0() -> None:
    torch.manual_seed(0)
    head = tiny_head("temporal").eval()
    logits = head(make_batch([2])).logits
    expected = torch.tensor([-0.25509, 0.33586, 0.67988])
    torch.testing.assert_close(logits[0, :3], expected, atol=1e-4, rtol=1e-4)


def test_missing_rois_raise_a_clear_error() -> None:
    batch = make_batch([2])
    bare = ActorBatch(
        context=batch.context,
        pooled=batch.pooled,
        boxes=batch.boxes,
        batch_index=batch.batch_index,
    )
    with pytest.raises(ValueError, match=r"mode='spatial'.*batch.roi"):
        tiny_head("spatial")(bare)
    with pytest.raises(ValueError, match=r"mode='temporal'.*batch.roi_t"):
        tiny_head("temporal")(bare)
    with pytest.raises(ValueError, match="mode must be"):
        tiny_head("diagonal")
