"""S-only / T-only relation heads: shapes, permutation, masking, gradients, overfitting."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from models.heads.batch import ActorBatch
from models.heads.relation_transformer import RelationTransformerHead
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    fit_logits,
    random_actor_batch,
)

C, K, T = 16, 5, 3
MODES = ["spatial", "temporal"]


pytestmark = pytest.mark.usefixtures("one_thread")


def square_boxes(xy: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Bottom-right corners of fixed 0.3 x 0.3 boxes (nothing drawn)."""
    return xy + 0.3


# With spatial and temporal RoI maps.
make_batch = partial(
    random_actor_batch, channels=C, corner=0.5, far_corner=square_boxes, roi_steps=T
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
    assert_grads_reach_every_parameter(head, finite=True)


@pytest.mark.parametrize("mode", MODES)
def test_overfits_a_few_keyframes(mode: str) -> None:
    torch.manual_seed(0)
    head = tiny_head(mode).train()
    batch = make_batch([1, 2, 3, 2], seed=1)
    labels = (torch.rand(batch.num_actors, K) < 0.4).float()
    loss = fit_logits(head, batch, labels, F.binary_cross_entropy_with_logits, lr=1e-2, steps=80)
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
