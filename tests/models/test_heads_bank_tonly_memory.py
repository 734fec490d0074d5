"""TOnlyMemoryHead: T-only relation transformer with the memory window's persons as tokens."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models.heads import bank_rows, build_head
from models.heads.relation_transformer import RelationTransformerHead
from models.heads.tonly_memory import TOnlyMemoryHead
from tests.models.bank_testing import poison_padding, random_window, with_bank
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    random_actor_batch,
)

C, K, T, HID = 12, 4, 3, 16

pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C, roi_steps=T)


def tiny_head(**kw) -> TOnlyMemoryHead:
    args = {"hidden_dim": HID, "num_heads": 2, **kw}
    head = build_head("tonly_memory", in_channels=C, num_classes=K, **args)
    assert isinstance(head, TOnlyMemoryHead)
    return head


def banked(counts: list[int], sizes: list[int], seed: int = 0, dim: int = C, **kw):
    window = random_window(sizes, {"features": (dim,)}, seed=seed + 100, **kw)
    return with_bank(make_batch(counts, seed=seed), window)


@pytest.mark.parametrize(("counts", "sizes"), [([1], [3]), ([4], [1]), ([2, 1, 3], [5, 0, 2])])
def test_shapes(counts: list[int], sizes: list[int]) -> None:
    head = tiny_head()
    out = head(banked(counts, sizes))
    n = sum(counts)
    assert out.logits.shape == (n, K) and torch.isfinite(out.logits).all()
    assert out.features is not None and out.features.shape == (n, HID)
    assert out.attention["relation"].shape == (n, T, max(counts) + max(sizes))
    assert head.BANK_KIND == "memory"


def test_padded_entries_change_nothing() -> None:
    head = tiny_head().eval()
    batch = banked([2, 3], [4, 2], pad_to=6)
    poisoned = with_bank(batch, poison_padding(batch.bank, ["features"]))
    assert torch.allclose(head(batch).logits, head(poisoned).logits, atol=1e-5)
    att = head(batch).attention["relation"]  # (N, T, A + L)
    assert torch.equal(att[:2, :, 2:3], torch.zeros(2, T, 1))  # keyframe 0 has 2 actors
    assert torch.equal(att[:2, :, 3 + 4 :], torch.zeros(2, T, 2))  # its padded entries


def test_empty_window_is_the_plain_tonly_head() -> None:
    head = tiny_head()
    batch = banked([2, 1], [0, 0])
    out = head(batch)
    assert torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    head.eval()
    plain = RelationTransformerHead(
        in_channels=C, num_classes=K, mode="temporal", hidden_dim=HID, num_heads=2
    ).eval()
    plain.load_state_dict(head.relation.state_dict())
    assert torch.allclose(head(batch).logits, plain(batch).logits, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    head = tiny_head()
    head(banked([2, 3], [3, 4])).logits.square().sum().backward()
    assert_grads_reach_every_parameter(head, finite=True)


def test_init_from_stage1_and_a_dumped_memory() -> None:
    torch.manual_seed(0)
    stage1 = build_head("tonly", in_channels=C, num_classes=K, hidden_dim=HID, num_heads=2)
    past = make_batch([2, 2], seed=4)
    rows = bank_rows(stage1, "memory", past)["features"]  # (4, C)
    window = random_window([4], {"features": (C,)})
    window["features"][0] = rows
    head = tiny_head()
    assert head.init_from_stage1(stage1.state_dict()) == []
    torch.testing.assert_close(head.project_memory.weight, head.relation.project.weight)
    out = head.eval()(with_bank(make_batch([3], seed=6), window))
    assert out.logits.shape == (3, K)
    wide = tiny_head(bank_dim=C + 2)
    assert wide.init_from_stage1(stage1.state_dict()) == [
        "project_memory.bias",
        "project_memory.weight",
    ]
    with pytest.raises(ValueError, match="bank_dim=14"):
        wide(banked([1], [2]))


def test_learns_a_label_only_the_bank_knows() -> None:
    """Every actor's label = sign of feature 0 of its keyframe's memory entries."""
    torch.manual_seed(0)
    counts, sizes = [1, 2, 1, 2, 1, 1, 2, 1], [3, 1, 4, 2, 3, 2, 1, 2]
    batch = banked(counts, sizes, seed=3)
    assert batch.roi_t is not None
    batch.roi_t[:] = batch.roi_t[0]  # every actor looks the same: only the memory differs
    sign = torch.where(torch.arange(8) % 2 == 0, 1.0, -1.0)
    batch.bank["features"][:, :, 0] += 2 * sign[:, None]
    batch.bank["features"] *= batch.bank["mask"][..., None]
    targets = (sign[batch.batch_index] > 0).float()[:, None].expand(-1, K).clone()
    head = tiny_head(dropout=0.0, classifier_dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=3e-3, steps=150)
    assert loss.item() < 0.05
    empty = with_bank(batch, {**batch.bank, "mask": torch.zeros_like(batch.bank["mask"])})
    assert ava_bce(head(empty).logits, targets).item() > 0.3
