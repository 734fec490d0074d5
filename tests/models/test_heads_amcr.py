"""AMCRNet head: shapes, actor permutation, padding masks, gradients, overfitting."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from models.heads.amcr import AMCRHead, PosNet, amcr_slim_head
from models.heads.batch import ActorBatch
from models.heads.position import box_offsets, pool_cell_boxes
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
    net = PosNet(out_channels=C, widths=(2, 2, 4), input_size=(16, 22))
    assert net(16, 22).shape == (1, C, 16, 22)
    assert net(5, 9).shape == (1, C, 5, 9)
    # zero padding makes the embedding position dependent even for a constant input
    with torch.no_grad():
        net.input.fill_(1.0)
    pos = net(8, 8)
    assert not torch.allclose(pos[..., 0, 0], pos[..., 4, 4])


def _position_spread(head: AMCRHead) -> tuple[float, int]:
    """(smallest per-channel spread of Pos over an 8 x 12 map, rank of the centred Pos)."""
    with torch.no_grad():
        pos = head.posnet(8, 12)[0].flatten(1)  # (C, H*W)
    centred = pos - pos.mean(dim=1, keepdim=True)
    rank = int(torch.linalg.matrix_rank(centred, rtol=1e-3))
    return float(pos.std(dim=1).min()), rank


def test_posnet_embedding_stays_position_dependent_in_training() -> None:
    """Without its per-channel normalisation (the release's), the 2-wide ReLU stack of
    PosNet starts nearly constant over the map and dies under SGD: Pos became one constant
    vector, AMCR without any position (docs/findings-probes.md)."""
    torch.manual_seed(0)
    head = tiny_head()
    spread, rank = _position_spread(head)
    assert spread > 0.1 and rank >= 4, (spread, rank)
    optim = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batch = make_batch([2, 3, 1, 2], seed=1)
    labels = (torch.rand(batch.num_actors, K) < 0.4).float()
    for _ in range(100):
        optim.zero_grad()
        F.binary_cross_entropy_with_logits(head(batch).logits, labels).backward()
        optim.step()
    spread, rank = _position_spread(head)
    assert spread > 0.1 and rank >= 4, (spread, rank)


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
    expected = torch.tensor([-0.50811, 0.24190, -0.06829])
    torch.testing.assert_close(logits[0, :3], expected, atol=1e-4, rtol=1e-4)


def test_pool_cell_boxes_are_the_regions_adaptive_pooling_averages() -> None:
    torch.manual_seed(0)
    h, w, sizes = 8, 12, [(3, 3), (5, 5), (7, 7), (3, 4)]
    cells = pool_cell_boxes(h, w, sizes)
    assert cells.shape == (sum(a * b for a, b in sizes), 4)
    x = torch.randn(1, 1, h, w)
    pooled = torch.cat([F.adaptive_avg_pool2d(x, s).flatten() for s in sizes])
    ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
    for (x1, y1, x2, y2), value in zip(cells.tolist(), pooled.tolist(), strict=True):
        inside = ((ys > y1) & (ys < y2))[:, None] & ((xs > x1) & (xs < x2))[None]
        assert x[0, 0][inside].mean().item() == pytest.approx(value, abs=1e-5)


def test_box_offsets_place_a_token_relative_to_the_box() -> None:
    box = torch.tensor([[[0.4, 0.5, 0.6, 0.9]]])
    above = torch.tensor([[[0.4, 0.2, 0.6, 0.4], [0.0, 0.2, 0.2, 0.4]]])
    off = box_offsets(box, above)[0, 0]  # (2 keys, 8)
    torch.testing.assert_close(off[0, :4], torch.tensor([0.0, -0.3, 0.0, -0.5]))
    # centre of the first key: inside the box's columns, above its top edge
    assert off[0, 4] > 0 > off[0, 5] and off[0, 6] < 0
    assert off[1, 5] < off[1, 4] < 0  # the second lies left of the box


def test_box_bias_is_an_opt_in_that_starts_as_the_paper_head() -> None:
    """With its MLP's last layer at zero the box bias adds nothing: the head computes
    what the plain head does, whose weights load beside it; trained, it changes what
    each actor attends to."""
    torch.manual_seed(0)
    plain = tiny_head().eval()
    biased = tiny_head(actor_position="box_bias").eval()
    missing, unexpected = biased.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == sorted(f"box_bias.{k}" for k in biased.box_bias.state_dict())
    assert unexpected == []
    batch = make_batch([2, 3, 1])
    torch.nn.init.zeros_(biased.box_bias.mlp[-1].weight)
    torch.nn.init.zeros_(biased.box_bias.mlp[-1].bias)
    torch.testing.assert_close(biased(batch).logits, plain(batch).logits)
    torch.nn.init.normal_(biased.box_bias.mlp[-1].weight)
    out = biased(batch)
    assert not torch.allclose(out.logits, plain(batch).logits)
    assert not torch.allclose(out.attention["bhoi"], plain(batch).attention["bhoi"])


def test_bad_actor_position() -> None:
    with pytest.raises(ValueError, match=r"actor_position must be one of \['none', 'box_bias'\]"):
        tiny_head(actor_position="box_mask")
