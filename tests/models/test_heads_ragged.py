"""pad_actors / unpad_actors: dense per-keyframe layout of ragged actors and its inverse."""

from __future__ import annotations

import pytest
import torch

from models.heads.ragged import actor_slots, pad_actors, unpad_actors


def test_pad_places_actors_by_keyframe_and_slot() -> None:
    x = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 2)  # actor i has value i
    batch_index = torch.tensor([0, 0, 2, 2, 2, 3])
    padded, mask = pad_actors(x, batch_index, num_keyframes=4)
    assert padded.shape == (4, 3, 2)
    assert mask.tolist() == [
        [True, True, False],
        [False, False, False],  # a keyframe without actors is all padding
        [True, True, True],
        [True, False, False],
    ]
    assert padded[:, :, 0].tolist() == [[0, 1, 0], [0, 0, 0], [2, 3, 4], [5, 0, 0]]


def test_unpad_restores_original_order_and_trailing_dims() -> None:
    x = torch.randn(7, 3, 2, 2)
    batch_index = torch.tensor([0, 1, 1, 1, 1, 2, 2])
    padded, mask = pad_actors(x, batch_index, num_keyframes=3)
    assert padded.shape == (3, 4, 3, 2, 2)
    assert torch.equal(unpad_actors(padded, mask), x)


def test_slots_and_empty_input() -> None:
    slot, n_max = actor_slots(torch.tensor([0, 0, 0, 1, 3, 3]), 4)
    assert slot.tolist() == [0, 1, 2, 0, 0, 1] and n_max == 3
    padded, mask = pad_actors(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), 2)
    assert padded.shape == (2, 0, 5) and mask.shape == (2, 0)


def test_gradient_flows_through_pad_and_unpad() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    padded, mask = pad_actors(x, torch.tensor([0, 1, 1, 1]), 2)
    (unpad_actors(padded, mask) * torch.arange(4.0)[:, None]).sum().backward()
    assert torch.equal(x.grad, torch.arange(4.0)[:, None].expand(4, 3))


@pytest.mark.parametrize(
    ("batch_index", "message"),
    [
        ([0, 2, 1], "non-decreasing"),
        ([0, 3], r"\[0, 3\)"),
        ([-1, 0], r"\[0, 3\)"),
    ],
)
def test_bad_batch_index_is_named(batch_index: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pad_actors(torch.zeros(len(batch_index), 2), torch.tensor(batch_index), 3)


def test_row_count_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="3 actor rows"):
        pad_actors(torch.zeros(3, 2), torch.tensor([0, 0]), 1)
