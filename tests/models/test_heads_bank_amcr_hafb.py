"""AMCRHAFBHead: AMCR interaction + HR-AFB history interaction and movement (AMCRNet eq. 6)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models.heads import bank_rows, build_head
from models.heads.amcr_hafb import AMCRHAFBHead
from tests.models.bank_testing import poison_padding, random_window, with_bank
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    random_actor_batch,
)

C, K, H, W, HID = 12, 4, 4, 6, 16
TINY = {"hidden_dim": HID, "num_layers": 1, "num_heads": 2}

pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C, height=H, width=W)


def tiny_head(**kw) -> AMCRHAFBHead:
    head = build_head("amcr_hafb", in_channels=C, num_classes=K, **{**TINY, **kw})
    assert isinstance(head, AMCRHAFBHead)
    return head


def banked(counts: list[int], sizes: list[int], seed: int = 0, **kw):
    arrays = {"interaction": (HID,), "movement": (C,)}
    window = random_window(sizes, arrays, seed=seed + 100, **kw)
    return with_bank(make_batch(counts, seed=seed), window)


@pytest.mark.parametrize(("counts", "sizes"), [([1], [3]), ([4], [1]), ([2, 1, 3], [5, 0, 2])])
def test_shapes(counts: list[int], sizes: list[int]) -> None:
    head = tiny_head()
    out = head(banked(counts, sizes))
    n = sum(counts)
    assert out.logits.shape == (n, K) and torch.isfinite(out.logits).all()
    assert out.features is not None and out.features.shape == (n, 2 * HID)
    assert out.attention["history"].shape == (n, max(counts) + max(sizes))
    assert head.BANK_KIND == "hrafb"


def test_padded_entries_change_nothing() -> None:
    head = tiny_head().eval()
    batch = banked([2, 3], [4, 2], pad_to=6)
    poisoned = with_bank(batch, poison_padding(batch.bank, ["interaction", "movement"]))
    assert torch.allclose(head(batch).logits, head(poisoned).logits, atol=1e-5)
    att = head(batch).attention["history"]  # (N, A + L)
    assert torch.equal(att[:2, 2], torch.zeros(2))  # keyframe 0's padded actor slot
    assert torch.equal(att[:2, 3 + 4 :], torch.zeros(2, 2))  # and its padded entries
    assert torch.allclose(att.sum(1), torch.ones(5))


def test_temporal_position_matters() -> None:
    head = tiny_head().eval()
    batch = banked([2], [3])
    shifted = with_bank(batch, {**batch.bank, "dt": batch.bank["dt"] + 2.0})
    assert not torch.allclose(head(batch).logits, head(shifted).logits)
    far = with_bank(batch, {**batch.bank, "dt": batch.bank["dt"] * 0 + 9.0})
    edge = with_bank(batch, {**batch.bank, "dt": batch.bank["dt"] * 0 + 7.0})
    assert torch.allclose(head(far).logits, head(edge).logits)  # clamped to W = 7


def test_empty_window_is_finite() -> None:
    head = tiny_head()
    out = head(banked([2, 1], [0, 0]))
    assert torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("widths", [{}, {"interaction_dim": HID + 2, "movement_dim": C + 1}])
def test_gradients_reach_every_parameter(widths: dict) -> None:
    torch.manual_seed(0)
    head = tiny_head(**widths)
    arrays = {
        "interaction": (widths.get("interaction_dim", HID),),
        "movement": (widths.get("movement_dim", C),),
    }
    batch = with_bank(make_batch([2, 3]), random_window([3, 4], arrays, seed=7))
    head(batch).logits.square().sum().backward()
    assert_grads_reach_every_parameter(head, finite=True)


def test_init_from_stage1_and_a_dumped_bank() -> None:
    torch.manual_seed(0)
    stage1 = build_head("amcr", in_channels=C, num_classes=K, **TINY)
    rows = bank_rows(stage1, "hrafb", make_batch([2, 2], seed=4))
    window = random_window([4], {"interaction": (HID,), "movement": (C,)})
    window["interaction"][0], window["movement"][0] = rows["interaction"], rows["movement"]
    head = tiny_head()
    fresh = head.init_from_stage1(stage1.state_dict())
    assert fresh and not any(k.startswith("amcr.") for k in fresh)
    torch.testing.assert_close(head.amcr.project.weight, stage1.project.weight)
    assert head.eval()(with_bank(make_batch([3], seed=6), window)).logits.shape == (3, K)
    with pytest.raises(ValueError, match="movement_dim=12"):
        bad = random_window([2], {"interaction": (HID,), "movement": (C + 1,)})
        head(with_bank(make_batch([1]), bad))


def test_learns_a_label_only_the_bank_knows() -> None:
    """Every actor's label = sign of interaction feature 0 of its keyframe's bank entries."""
    torch.manual_seed(0)
    counts, sizes = [1, 2, 1, 2, 1, 1], [3, 1, 4, 2, 3, 2]
    batch = banked(counts, sizes, seed=3)
    batch.pooled[:] = batch.pooled[0]  # actors, boxes and scenes alike: only the bank differs
    batch.boxes[:] = batch.boxes[0]
    batch.context[:] = batch.context[0]
    sign = torch.where(torch.arange(6) % 2 == 0, 1.0, -1.0)
    batch.bank["interaction"][:, :, 0] += 2 * sign[:, None]
    batch.bank["interaction"] *= batch.bank["mask"][..., None]
    targets = (sign[batch.batch_index] > 0).float()[:, None].expand(-1, K).clone()
    head = tiny_head(classifier_dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=3e-3, steps=150)
    assert loss.item() < 0.05
    empty = with_bank(batch, {**batch.bank, "mask": torch.zeros_like(batch.bank["mask"])})
    assert ava_bce(head(empty).logits, targets).item() > 0.3
