"""ACARHead: ACRN first-order maps -> HR2O (non-local or relation network) -> FC."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models.heads.acar import ACARHead
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    random_actor_batch,
)

C, K, H, W, D = 16, 5, 4, 6, 8
# logits[0, :3] of seed-0 tiny heads on make_batch([2]) (torch 2.14 CPU).
PINNED = {"nl": [0.140818, 0.328448, -0.491533], "rn": [0.146889, 0.067924, 0.196831]}


pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(random_actor_batch, channels=C, height=H, width=W)


def tiny_head(kind: str = "nl", **kwargs) -> ACARHead:
    kwargs.setdefault("variant", "paper")  # bankflow's reading of the paper
    return ACARHead(in_channels=C, num_classes=K, reduce_dim=12, dim=D, hr2o=kind, **kwargs)


@pytest.mark.parametrize("kind", ["nl", "rn"])
@pytest.mark.parametrize("counts", [[1], [4], [2, 1, 3]])
def test_shapes(kind: str, counts: list[int]) -> None:
    head = tiny_head(kind)
    batch = make_batch(counts)
    out = head(batch)
    n = sum(counts)
    assert out.logits.shape == (n, K)
    assert out.features is not None and out.features.shape == (n, 12 + D)
    assert head.first_order(batch).shape == (n, D, H, W)
    if kind == "nl":
        assert out.attention["hr2o"].shape == (len(counts), 2, max(counts), max(counts), H, W)
    else:
        assert out.attention == {}


def test_attention_is_a_distribution_over_real_actors() -> None:
    att = tiny_head().eval()(make_batch([2, 1, 3])).attention["hr2o"]  # [B, L, N, M, H, W]
    sums = att.sum(dim=3)
    assert torch.allclose(sums[0, :, :2], torch.ones_like(sums[0, :, :2]), atol=1e-6)
    assert torch.equal(att[0, :, :, 2], torch.zeros_like(att[0, :, :, 2]))  # padded key slot
    assert torch.allclose(att[1, :, 0, 0], torch.ones(2, H, W))  # a lone actor attends to itself


@pytest.mark.parametrize("kind", ["nl", "rn"])
def test_actors_of_a_keyframe_interact(kind: str) -> None:
    head = tiny_head(kind).eval()
    batch = make_batch([2, 1])
    before = head(batch).logits
    batch.pooled[1] += 2.0  # another actor of keyframe 0
    after = head(batch).logits
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[2], after[2])  # keyframe 1 is untouched


def test_hr2o_with_separate_keys_and_values() -> None:
    head = tiny_head().eval()
    g = torch.Generator().manual_seed(3)
    query = torch.randn(2, 3, D, H, W, generator=g)
    bank = torch.randn(2, 5, D, H, W, generator=g)
    mask = torch.tensor([[True, True, False, True, False], [False] * 5])
    out, att = head.hr2o(query, bank, mask)
    assert out.shape == query.shape and att.shape == (2, 2, 3, 5, H, W)
    # Masked bank slots change nothing; an empty bank window leaves F^i as it was.
    bank2 = bank.clone()
    bank2[0, 2] += 10.0
    bank2[1] += 10.0
    out2, _ = head.hr2o(query, bank2, mask)
    assert torch.allclose(out, out2, atol=1e-6)
    assert torch.equal(out[1], query[1])
    # Keys/values stay the bank in every block: its content matters for the real slots.
    bank2[0, 0] += 1.0
    assert not torch.allclose(head.hr2o(query, bank2, mask)[0][0], out[0])


def test_hr2o_self_mode_matches_forward() -> None:
    head = tiny_head().eval()
    batch = make_batch([2, 2])
    maps = head.first_order(batch).view(2, 2, D, H, W)
    refined, att = head.hr2o(maps, None, torch.ones(2, 2, dtype=torch.bool))
    out = head(batch)
    assert torch.allclose(att, out.attention["hr2o"])
    assert out.features is not None
    assert torch.allclose(refined.mean(dim=(3, 4)).flatten(0, 1), out.features[:, 12:], atol=1e-6)


def test_hr2o_entry_rejects_relation_network_and_bad_mask() -> None:
    maps = torch.zeros(1, 2, D, H, W)
    with pytest.raises(ValueError, match="hr2o='nl'"):
        tiny_head("rn").hr2o(maps, None, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        tiny_head().hr2o(maps, maps, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="'nl'"):
        tiny_head("avg")


@pytest.mark.parametrize("kind", ["nl", "rn"])
def test_gradients_reach_every_parameter(kind: str) -> None:
    head = tiny_head(kind)
    head(make_batch([2, 3])).logits.square().sum().backward()
    assert_grads_reach_every_parameter(head)


def test_overfits_tiny_set() -> None:
    torch.manual_seed(0)
    batch = make_batch([2, 3, 1], seed=1)
    targets = (torch.rand(6, K) > 0.5).float()
    head = tiny_head(dropout=0.0, hr2o_dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=1e-2, steps=60)
    assert loss.item() < 0.05


@pytest.mark.parametrize("kind", ["nl", "rn"])
def test_pinned_values(kind: str) -> None:
    torch.manual_seed(0)
    logits = tiny_head(kind).eval()(make_batch([2])).logits
    assert torch.allclose(logits[0, :3], torch.tensor(PINNED[kind]), atol=1e-5)
