"""PCCAHead: pooled actor queries cross-attending to a 9x9 RoIAlign of the box x2."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torchvision.ops import roi_align

from models.heads.pcca import PCCAHead, enlarged_box_rois
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    random_actor_batch,
)

C, K, H, W = 16, 5, 4, 6
# logits[0, :3] of a seed-0 tiny head on make_batch([2]) (torch 2.14 CPU).
PINNED = [0.196237, -0.369941, 0.626459]


pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C, height=H, width=W)


def tiny_head(**kwargs) -> PCCAHead:
    return PCCAHead(in_channels=C, num_classes=K, dim=16, num_heads=4, **kwargs)


@pytest.mark.parametrize("counts", [[1], [4], [2, 1, 3]])
def test_shapes(counts: list[int]) -> None:
    out = tiny_head().eval()(make_batch(counts))  # eval: MHA returns post-dropout weights
    n = sum(counts)
    assert out.logits.shape == (n, K)
    assert out.features is not None and out.features.shape == (n, 16)
    att = out.attention["pcca"]
    assert att.shape == (n, 3, 4, 9, 9)  # actors, layers, heads, h, w
    assert torch.allclose(att.sum(dim=(3, 4)), torch.ones(n, 3, 4), atol=1e-5)


def test_enlarged_box_keeps_centre_and_clips_to_image() -> None:
    boxes = torch.tensor([[0.2, 0.2, 0.4, 0.6], [0.8, 0.8, 1.0, 1.0]])
    rois = enlarged_box_rois(boxes, torch.tensor([0, 3]), height=4, width=6, scale=2.0)
    # [0.1, 0.0, 0.5, 0.8] and [0.7, 0.7, 1.0, 1.0] in (W, H) = (6, 4) cells.
    expected = torch.tensor([[0, 0.6, 0.0, 3.0, 3.2], [3, 4.2, 2.8, 6.0, 4.0]])
    assert torch.allclose(rois, expected, atol=1e-6)


def test_context_tokens_are_roi_align_of_the_enlarged_box() -> None:
    head = tiny_head()
    batch = make_batch([1, 2])
    tokens = head.context_tokens(batch)
    assert tokens.shape == (3, 81, C)
    rois = enlarged_box_rois(batch.boxes, batch.batch_index, H, W, 2.0)
    ref = roi_align(batch.context, rois, output_size=9, spatial_scale=1.0, aligned=True)
    assert torch.allclose(tokens[2], ref[2].flatten(1).T)


def test_context_outside_the_enlarged_box_is_ignored() -> None:
    head = tiny_head().eval()
    batch = make_batch([1])
    batch.boxes[0] = torch.tensor([0.0, 0.0, 0.2, 0.2])  # x2 box: cells x < 1.8, y < 1.2
    before = head(batch).logits
    batch.context[0, :, :, 4:] += 5.0  # far right of the map
    assert torch.allclose(head(batch).logits, before, atol=1e-6)
    batch.context[0, :, 0, 0] += 5.0  # inside the window
    assert not torch.allclose(head(batch).logits, before, atol=1e-4)


@pytest.mark.parametrize("position_embedding", [True, False])
def test_gradients_reach_every_parameter(position_embedding: bool) -> None:
    head = tiny_head(position_embedding=position_embedding)
    head(make_batch([2, 3])).logits.square().sum().backward()
    names = [name for name, _ in head.named_parameters()]
    assert ("position" in names) == position_embedding
    assert_grads_reach_every_parameter(head)


def test_overfits_tiny_set() -> None:
    torch.manual_seed(0)
    batch = make_batch([2, 3, 1], seed=1)
    targets = (torch.rand(6, K) > 0.5).float()
    head = tiny_head(dropout=0.0, attn_dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=1e-2, steps=60)
    assert loss.item() < 0.05


def test_bad_hyper_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="divisible"):
        PCCAHead(in_channels=C, num_classes=K, dim=10, num_heads=4)
    with pytest.raises(ValueError, match="box_scale"):
        PCCAHead(in_channels=C, num_classes=K, dim=16, num_heads=4, box_scale=0.0)


def test_pinned_values() -> None:
    torch.manual_seed(0)
    logits = tiny_head().eval()(make_batch([2])).logits
    assert torch.allclose(logits[0, :3], torch.tensor(PINNED), atol=1e-5)
