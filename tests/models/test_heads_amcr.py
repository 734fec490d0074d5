"""AMCRNet head: shapes, actor permutation, padding masks, gradients, overfitting."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from models.heads.amcr import AMCRHead, PosNet, amcr_slim_head
from models.heads.batch import ActorBatch
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    fit_logits,
    offset_boxes,
    random_actor_batch,
)

C, K, H, W = 16, 6, 4, 6


pytestmark = pytest.mark.usefixtures("one_thread")

# Boxes inside the image.
make_batch = partial(
    random_actor_batch, channels=C, height=H, width=W, corner=0.5, far_corner=offset_boxes
)


def tiny_head(**kw) -> AMCRHead:
    args = dict(
        in_channels=C, num_classes=K, hidden_dim=32, num_layers=2, num_heads=4, classifier_dropout=0
    )
    return AMCRHead(**{**args, **kw})


@pytest.mark.parametrize("counts", [[1], [3], [1, 4, 2], [2, 0, 1]])
def test_shapes(counts: list[int]) -> None:
    torch.manual_seed(0)
    head = tiny_head().eval()
    batch = make_batch(counts)
    out = head(batch)
    n = sum(counts)
    assert out.logits.shape == (n, K)
    assert out.features is not None and out.features.shape == (n, 32)
    attn = out.attention["bhoi"]
    assert attn.shape == (n, 9 + 25 + 49) == (n, head.num_context_tokens)
    # rows are the actor->context part of a softmax over actors + contexts
    assert bool((attn >= 0).all()) and bool((attn.sum(1) <= 1 + 1e-5).all())
    assert torch.isfinite(out.logits).all()


def test_classifier_maps_features_to_logits() -> None:
    torch.manual_seed(0)
    head = tiny_head().eval()
    out = head(make_batch([2, 3]))
    torch.testing.assert_close(head.classifier(out.features), out.logits)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = tiny_head().train()
    out = head(make_batch([1, 3, 2]))
    (out.logits.square().mean() + out.features.mean()).backward()
    assert_grads_reach_every_parameter(head)


def test_overfits_a_few_keyframes() -> None:
    torch.manual_seed(0)
    head = tiny_head(num_layers=1).train()
    batch = make_batch([1, 2, 3, 2], seed=1)
    labels = (torch.rand(batch.num_actors, K) < 0.4).float()
    loss = fit_logits(head, batch, labels, F.binary_cross_entropy_with_logits, lr=1e-2, steps=60)
    assert loss.item() < 0.02


def test_posnet_resizes_its_learned_input_to_any_map() -> None:
    torch.manual_seed(0)
    net = PosNet(out_channels=C, width=2, num_blocks=4, input_size=(16, 22))
    assert net(16, 22).shape == (1, C, 16, 22)
    assert net(5, 9).shape == (1, C, 5, 9)
    # zero padding makes the embedding position dependent even for a constant input
    with torch.no_grad():
        net.input.fill_(1.0)
    pos = net(8, 8)
    assert not torch.allclose(pos[..., 0, 0], pos[..., 4, 4])


def test_slim_variant_and_defaults() -> None:
    slim = amcr_slim_head(in_channels=C, num_classes=K, hidden_dim=32, num_heads=4)
    assert len(slim.blocks) == 4
    assert slim.blocks[0].mlp[0].out_features == 32  # MLP ratio 1
    full = AMCRHead(in_channels=C, num_classes=K, hidden_dim=32, num_heads=4)
    assert len(full.blocks) == 6
    assert full.blocks[0].mlp[0].out_features == 128  # MLP ratio 4
    assert full.context_scales == (3, 5, 7)


def test_wrong_channels_raise_a_clear_error() -> None:
    head = tiny_head()
    batch = make_batch([2])
    bad = ActorBatch(
        context=batch.context[:, :8],
        pooled=batch.pooled,
        boxes=batch.boxes,
        batch_index=batch.batch_index,
    )
    with pytest.raises(ValueError, match=r"batch.context must be \[B, 16, H, W\]"):
        head(bad)


def test_pinned_values_under_seed_0() -> None:
    torch.manual_seed(0)
    logits = tiny_head().eval()(make_batch([2])).logits
    expected = torch.tensor([-0.33508, -0.41611, 0.63518])
    torch.testing.assert_close(logits[0, :3], expected, atol=1e-4, rtol=1e-4)
