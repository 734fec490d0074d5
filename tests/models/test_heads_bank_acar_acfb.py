"""ACARACFBHead: current first-order maps query the ACFB window through HR2O (ACAR eq. 5)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models.heads import bank_rows, build_head
from models.heads.acar import ACARHead
from models.heads.acar_acfb import ACARACFBHead
from models.heads.acrn import ACRNHead
from tests.models.bank_testing import poison_padding, random_window, with_bank
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    random_actor_batch,
)

C, K, H, W, R, D = 12, 4, 3, 4, 8, 6

pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C, height=H, width=W)


def tiny_head(**kw) -> ACARACFBHead:
    kw.setdefault("variant", "paper")  # the release variant is tested in test_heads_acar_release
    head = build_head("acar_acfb", in_channels=C, num_classes=K, reduce_dim=R, dim=D, **kw)
    assert isinstance(head, ACARACFBHead)
    return head


def banked(counts: list[int], sizes: list[int], seed: int = 0, **kw):
    window = random_window(sizes, {"maps": (D, H, W)}, seed=seed + 100, **kw)
    return with_bank(make_batch(counts, seed=seed), window)


@pytest.mark.parametrize(("counts", "sizes"), [([1], [3]), ([4], [1]), ([2, 1, 3], [5, 0, 2])])
def test_shapes(counts: list[int], sizes: list[int]) -> None:
    head = tiny_head()
    out = head(banked(counts, sizes))
    n = sum(counts)
    assert out.logits.shape == (n, K) and torch.isfinite(out.logits).all()
    assert out.features is not None and out.features.shape == (n, R + D)
    assert out.attention["hr2o"].shape == (len(counts), 2, max(counts), max(sizes), H, W)
    assert head.BANK_KIND == "acfb"


def test_attention_covers_the_real_entries_only() -> None:
    att = tiny_head().eval()(banked([2, 1], [3, 0], pad_to=5)).attention["hr2o"]
    sums = att.sum(dim=3)  # (B, layers, A, H, W)
    assert torch.allclose(sums[0], torch.ones_like(sums[0]))
    assert torch.equal(att[0, :, :, 3:], torch.zeros_like(att[0, :, :, 3:]))
    assert torch.equal(att[1], torch.zeros_like(att[1]))  # empty window


def test_padded_entries_change_nothing() -> None:
    head = tiny_head().eval()
    batch = banked([2, 3], [4, 2], pad_to=6)
    poisoned = with_bank(batch, poison_padding(batch.bank, ["maps"]))
    assert torch.allclose(head(batch).logits, head(poisoned).logits, atol=1e-6)


def test_empty_window_is_acrn_and_finite() -> None:
    head = tiny_head()
    batch = banked([2, 1], [0, 0])
    out = head(batch)
    assert torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    head.eval()
    acrn = ACRNHead(in_channels=C, num_classes=K, reduce_dim=R, dim=D, variant="paper").eval()
    acrn.load_state_dict(
        {k: v for k, v in head.acar.state_dict().items() if not k.startswith("reasoning.")}
    )
    assert torch.allclose(head(batch).logits, acrn(batch).logits, atol=1e-6)


def test_gradients_reach_every_parameter() -> None:
    head = tiny_head()
    head(banked([2, 3], [3, 4])).logits.square().sum().backward()
    assert_grads_reach_every_parameter(head, finite=True)


def test_reads_a_bank_dumped_by_a_stage1_acar() -> None:
    torch.manual_seed(0)
    stage1 = ACARHead(in_channels=C, num_classes=K, reduce_dim=R, dim=D, variant="paper")
    past = make_batch([2, 3], seed=5)
    maps = bank_rows(stage1, "acfb", past)["maps"]  # (5, D, H, W)
    window = {
        "mask": torch.ones(1, 5, dtype=torch.bool),
        "dt": torch.tensor([[-1.0, -1.0, 0.0, 0.0, 0.0]]),
        "track": torch.arange(5)[None],
        "current": torch.tensor([[False, False, True, True, True]]),
        "maps": maps[None],
    }
    head = tiny_head()
    missing = head.init_from_stage1(stage1.state_dict())
    assert missing == []
    out = head.eval()(with_bank(make_batch([3], seed=6), window))
    assert out.logits.shape == (3, K)
    # an ACRN state leaves HR2O fresh; anything else is refused
    acrn = ACRNHead(in_channels=C, num_classes=K, reduce_dim=R, dim=D, variant="paper")
    assert all(k.startswith("reasoning.") for k in tiny_head().init_from_stage1(acrn.state_dict()))
    with pytest.raises(ValueError, match="init_from_stage1"):
        tiny_head().init_from_stage1({"classifier.weight": torch.zeros(K, R + D)})


def test_rejects_bank_of_another_size() -> None:
    with pytest.raises(ValueError, match="bank maps"):
        window = random_window([2], {"maps": (D, H + 1, W)})
        tiny_head()(with_bank(make_batch([1]), window))
    with pytest.raises(ValueError, match="bank_dim"):
        tiny_head(bank_dim=D + 1)
    with pytest.raises(ValueError, match="maps"):
        tiny_head()(make_batch([1]))


def test_learns_a_label_only_the_bank_knows() -> None:
    """Every actor's label = sign of channel 0 of its keyframe's bank maps."""
    torch.manual_seed(0)
    counts, sizes = [1, 2, 1, 2, 1, 1], [3, 1, 4, 2, 3, 2]
    batch = banked(counts, sizes, seed=3)
    batch.pooled[:] = batch.pooled[0]  # actors and scenes all alike: only the bank differs
    batch.context[:] = batch.context[0]
    sign = torch.where(torch.arange(6) % 2 == 0, 1.0, -1.0)
    batch.bank["maps"][:, :, 0] += 2 * sign[:, None, None, None]
    batch.bank["maps"] *= batch.bank["mask"][:, :, None, None, None]
    targets = (sign[batch.batch_index] > 0).float()[:, None].expand(-1, K).clone()
    head = tiny_head(hr2o_dropout=0.0, dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=1e-2, steps=120)
    assert loss.item() < 0.05
    empty = with_bank(batch, {**batch.bank, "mask": torch.zeros_like(batch.bank["mask"])})
    assert ava_bce(head(empty).logits, targets).item() > 0.3


def test_width_follows_the_bank() -> None:
    head = build_head(
        "acar_acfb", in_channels=C, num_classes=K, reduce_dim=R, bank_dim=D, variant="paper"
    )
    assert isinstance(head, ACARACFBHead) and head.dim == D
    assert head(banked([2], [3])).logits.shape == (2, K)
