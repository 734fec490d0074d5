"""The opt-in actor position of the map heads (``actor_position="box_mask"``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.heads import build_head
from models.heads.position import box_masks
from tests.models.heads_testing import random_actor_batch


def test_box_masks_are_the_covered_fraction_of_each_cell():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.20, 0.30, 0.25, 0.32], [0.1, 0.6, 0.9, 1.0]])
    masks = box_masks(boxes, 4, 6)
    assert masks.shape == (3, 4, 6)
    torch.testing.assert_close(masks[0, :2, :3], torch.ones(2, 3))
    assert masks[0, 2:].eq(0).all() and masks[0, :, 3:].eq(0).all()
    # a box smaller than a cell still marks the cell it lies in, by its covered fraction
    assert masks[1].count_nonzero() == 1 and masks[1, 1, 1] == pytest.approx(
        0.05 * 0.02 * 24, rel=1e-4
    )
    # the masks integrate to the box areas (in cells)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * 24
    torch.testing.assert_close(masks.sum(dim=(1, 2)), areas)


def _moved(batch):
    """The same batch with the first actor's box shifted right (features unchanged)."""
    boxes = batch.boxes.clone()
    boxes[0, [0, 2]] = (boxes[0, [0, 2]] + 0.3).clamp(max=1.0)
    return dataclasses.replace(batch, boxes=boxes)


def test_acrn_sees_its_actors_box_only_with_the_mask():
    torch.manual_seed(0)
    batch = random_actor_batch([2, 3], channels=8, height=6, width=8)
    plain = build_head("acrn", in_channels=8, num_classes=3, dim=16).eval()
    torch.testing.assert_close(plain(batch).logits, plain(_moved(batch)).logits)
    masked = build_head("acrn", in_channels=8, num_classes=3, dim=16, actor_position="box_mask")
    masked.eval()
    moved = masked(_moved(batch)).logits
    assert not torch.allclose(masked(batch).logits[0], moved[0])
    torch.testing.assert_close(masked(batch).logits[1:], moved[1:])  # the others: as before


@pytest.mark.parametrize("head", ["acrn", "acar"])
def test_the_mask_column_at_zero_is_the_released_head(head):
    """The mask is its own conv (``position``): the released weights load beside it, and
    with that conv at zero the head computes what the released head does."""
    kwargs = {"dim": 16} if head == "acrn" else {"reduce_dim": 8, "dim": 16}
    torch.manual_seed(0)
    released = build_head(head, in_channels=8, num_classes=3, **kwargs).eval()
    masked = build_head(head, in_channels=8, num_classes=3, actor_position="box_mask", **kwargs)
    missing, unexpected = masked.load_state_dict(released.state_dict(), strict=False)
    assert missing == ["encoder.position.weight"] and unexpected == []
    torch.nn.init.zeros_(masked.encoder.position.weight)
    batch = random_actor_batch([2, 3], channels=8, height=6, width=8)
    torch.testing.assert_close(masked.eval()(batch).logits, released(batch).logits)
    torch.nn.init.normal_(masked.encoder.position.weight)
    assert not torch.allclose(masked(batch).logits, released(batch).logits)


def test_bad_actor_position():
    with pytest.raises(ValueError, match="actor_position must be one of"):
        build_head("acar", in_channels=8, num_classes=2, actor_position="coords")
    with pytest.raises(ValueError, match="option of variant='mmaction2'"):
        build_head("acrn", in_channels=8, num_classes=2, variant="paper", actor_position="box_mask")
    with pytest.raises(ValueError, match="option of variant='release'"):
        build_head("acar", in_channels=8, num_classes=2, variant="paper", actor_position="box_mask")
