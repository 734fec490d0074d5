"""LFBHead: FBO non-local / max / avg over a bank window of actor features."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models.heads import build_head
from models.heads.lfb import LFBHead, masked_attention
from tests.models.bank_testing import poison_padding, random_window, with_bank
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    random_actor_batch,
)

C, K, D, HID = 12, 4, 6, 16
FBOS = ["nl", "max", "avg"]

pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C)


def tiny_head(fbo: str = "nl", **kw) -> LFBHead:
    head = build_head(
        "lfb", in_channels=C, num_classes=K, bank_dim=D, fbo=fbo, hidden_dim=HID, **kw
    )
    assert isinstance(head, LFBHead)
    return head


def banked(counts: list[int], sizes: list[int], seed: int = 0, **kw):
    window = random_window(sizes, {"features": (D,)}, seed=seed + 100, **kw)
    return with_bank(make_batch(counts, seed=seed), window)


@pytest.mark.parametrize("fbo", FBOS)
@pytest.mark.parametrize(("counts", "sizes"), [([1], [3]), ([4], [1]), ([2, 1, 3], [5, 0, 2])])
def test_shapes(fbo: str, counts: list[int], sizes: list[int]) -> None:
    head = tiny_head(fbo)
    out = head(banked(counts, sizes))
    n = sum(counts)
    assert out.logits.shape == (n, K)
    assert out.features is not None and out.features.shape == (n, C + HID)
    assert torch.isfinite(out.logits).all()
    assert head.BANK_KIND == "lfb"
    if fbo == "nl":
        assert out.attention["fbo"].shape == (n, 2, max(sizes))
    else:
        assert out.attention == {}


def test_attention_is_a_distribution_over_the_real_entries() -> None:
    batch = banked([2, 1, 2], [3, 0, 5], pad_to=6)
    att = tiny_head().eval()(batch).attention["fbo"]  # (N, layers, L)
    assert torch.allclose(att[:2].sum(-1), torch.ones(2, 2))
    assert torch.equal(att[:2, :, 3:], torch.zeros(2, 2, 3))
    assert torch.equal(att[2], torch.zeros(2, 6))  # keyframe 1: empty window
    assert torch.allclose(att[3:].sum(-1), torch.ones(2, 2))


@pytest.mark.parametrize("fbo", FBOS)
def test_padded_entries_change_nothing(fbo: str) -> None:
    head = tiny_head(fbo).eval()
    batch = banked([2, 3], [4, 2], pad_to=7)
    poisoned = with_bank(batch, poison_padding(batch.bank, ["features"]))
    assert torch.allclose(head(batch).logits, head(poisoned).logits, atol=1e-6)
    # and a narrower window without the extra padding gives the same result
    narrow = with_bank(batch, {k: v[:, :4] for k, v in batch.bank.items()})
    assert torch.allclose(head(batch).logits, head(narrow).logits, atol=1e-6)


@pytest.mark.parametrize("fbo", FBOS)
def test_empty_window_is_finite(fbo: str) -> None:
    head = tiny_head(fbo)
    batch = banked([2, 1], [0, 0])
    out = head(batch)
    assert torch.isfinite(out.logits).all()
    assert out.features is not None
    fbo_out = out.features[:, C:]
    if fbo == "nl":  # no key: the residual blocks pass the projected S through
        head.eval()
        projected = head.project_current(batch.pooled)
        assert torch.allclose(head(batch).features[:, C:], projected)
    else:  # nothing to pool: zeros
        assert torch.equal(fbo_out, torch.zeros(3, HID))
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("fbo", FBOS)
def test_gradients_reach_every_parameter(fbo: str) -> None:
    head = tiny_head(fbo)
    head(banked([2, 3], [3, 4])).logits.square().sum().backward()
    assert_grads_reach_every_parameter(head, finite=True)


def test_masked_attention_without_keys_is_zero() -> None:
    q, k = torch.randn(2, 1, 4), torch.randn(2, 3, 4)
    out, w = masked_attention(q, k, k, torch.tensor([[True, False, True], [False] * 3]))
    assert torch.equal(out[1], torch.zeros(1, 4)) and torch.equal(w[1], torch.zeros(1, 3))
    assert torch.allclose(w[0].sum(), torch.tensor(1.0)) and w[0, 0, 1] == 0


def test_rejects_a_batch_without_its_bank() -> None:
    with pytest.raises(ValueError, match="features"):
        tiny_head()(make_batch([2]))
    with pytest.raises(ValueError, match="bank_dim=6"):
        batch = with_bank(make_batch([2]), random_window([2], {"features": (D + 1,)}))
        tiny_head()(batch)
    with pytest.raises(ValueError, match="fbo"):
        tiny_head("sum")


@pytest.mark.parametrize("fbo", FBOS)
def test_learns_a_label_only_the_bank_knows(fbo: str) -> None:
    """Label of every actor = sign of bank feature 0 summed over its keyframe's window."""
    torch.manual_seed(0)
    sizes = [3, 1, 4, 2, 3, 2, 1, 4]
    batch = banked([1, 2, 1, 2, 1, 1, 2, 1], sizes, seed=3)
    batch.pooled[:] = batch.pooled[0]  # every actor looks the same: only the bank differs
    window = batch.bank
    window["features"][:, :, 0] += torch.where(torch.arange(8) % 2 == 0, 1.0, -1.0)[:, None]
    window["features"] *= window["mask"][..., None]
    signal = (window["features"][:, :, 0].sum(1) > 0).float()  # (B,)
    targets = signal[batch.batch_index][:, None].expand(-1, K).clone()
    head = tiny_head(fbo, input_dropout=0.0, nl_dropout=0.0, dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=1e-2, steps=150)
    assert loss.item() < 0.05
    # without the bank every actor gets the same logits, half of them wrong
    empty = with_bank(batch, {**window, "mask": torch.zeros_like(window["mask"])})
    assert ava_bce(head(empty).logits, targets).item() > 0.3


def test_init_from_stage1_linear_head_predicts_what_it_did() -> None:
    torch.manual_seed(0)
    stage1 = build_head("linear", in_channels=C, num_classes=K).eval()
    head = tiny_head()
    fresh = head.init_from_stage1(stage1.state_dict())
    assert "project_bank.weight" in fresh and not any(k.startswith("classifier.") for k in fresh)
    batch = banked([2, 1], [3, 2])
    torch.testing.assert_close(head.eval()(batch).logits, stage1(batch).logits)
    with pytest.raises(ValueError, match="linear head"):
        head.init_from_stage1({"classifier.weight": torch.zeros(K, C + 1)})
