"""IGMNHead: HGNN over the identity-bank window, fused with the DAM (IGMN eqs. 2, 9, 10)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch

from models.heads import bank_rows, build_head
from models.heads.batch import ActorBatch
from models.heads.igmn import IGMNHead, OrderedTemporalAggregator
from models.heads.igmn_dam import IGMNDAMHead
from tests.models.bank_testing import poison_padding, with_bank
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    ava_bce,
    fit_logits,
    offset_boxes,
    random_actor_batch,
)

C, K, H, W, HID, MEM = 12, 4, 4, 6, 16, 8
TINY = {"hidden_dim": HID, "memory_dim": MEM, "num_layers": 2, "attention_hidden": 8}
TINY_DAM = {"attention_hidden": 8, "fuse_hidden": 16}

pytestmark = pytest.mark.usefixtures("one_thread")
actor_batch = partial(
    random_actor_batch, channels=C, height=H, width=W, corner=0.5, far_corner=offset_boxes
)


def tiny_head(**kw) -> IGMNHead:
    head = build_head("igmn", in_channels=C, num_classes=K, fuse_hidden=16, **{**TINY, **kw})
    assert isinstance(head, IGMNHead)
    return head


def identity_window(sizes: list[int], *, seed: int = 0, pad_to: int | None = None):
    """Entries of tracks 0, 1, 2 at clips -2, -1, 1, 2 (in that order, 3 tracks per clip)."""
    g = torch.Generator().manual_seed(seed)
    b, length = len(sizes), max([*sizes, 1]) if pad_to is None else pad_to
    clips = torch.tensor([-2, -1, 1, 2])
    window = {
        "mask": torch.zeros(b, length, dtype=torch.bool),
        "dt": torch.zeros(b, length),
        "track": torch.full((b, length), -1, dtype=torch.long),
        "current": torch.zeros(b, length, dtype=torch.bool),
        "features": torch.zeros(b, length, C),
    }
    for k, n in enumerate(sizes):
        e = torch.arange(n)
        window["mask"][k, :n] = True
        window["dt"][k, :n] = clips[(e // 3) % 4].float()
        window["track"][k, :n] = e % 3
        window["features"][k, :n] = torch.randn(n, C, generator=g)
    return window


def banked(counts: list[int], sizes: list[int], seed: int = 0, **kw) -> ActorBatch:
    batch = actor_batch(counts, seed=seed)
    slots = torch.cat([torch.arange(c) for c in counts]) if counts else torch.zeros(0)
    return with_bank(
        replace(batch, track=slots.long()), identity_window(sizes, seed=seed + 9, **kw)
    )


def labels_for(n: int) -> torch.Tensor:
    return (torch.rand(n, K, generator=torch.Generator().manual_seed(1)) < 0.4).float()


@pytest.mark.parametrize(
    ("counts", "sizes"), [([1], [5]), ([3], [1]), ([1, 4, 2], [12, 0, 7]), ([2, 0, 1], [4, 6, 0])]
)
def test_shapes(counts: list[int], sizes: list[int]) -> None:
    torch.manual_seed(0)
    head = tiny_head()
    n = sum(counts)
    out = head(banked(counts, sizes), labels=labels_for(n))
    assert out.logits.shape == (n, K) and torch.isfinite(out.logits).all()
    assert out.features is not None and out.features.shape == (n, 16)
    assert out.attention["memory"].shape == (n, 2, max([*sizes, 1]))
    assert out.attention["semantic"].shape == (n, 7, 7)
    assert set(out.aux_losses) == {"prior_sem", "prior_idt", "cls_sem", "cls_idt"}
    assert all(torch.isfinite(v) for v in out.aux_losses.values())
    assert head.BANK_KIND == "identity" and head.needs_labels


def test_memory_attention_covers_the_kept_memory_nodes() -> None:
    head = tiny_head().eval()
    att = head(banked([2, 1], [12, 0], pad_to=14)).attention["memory"]  # (N, layers, L)
    assert torch.allclose(att[:2, 0].sum(-1), torch.ones(2))  # layer 1: every entry
    assert bool((att[:2, 0, :12] > 0).all()) and torch.equal(att[:, :, 12:], torch.zeros(3, 2, 2))
    # layer 2 after down-sampling: tracks 0, 1 (actors at t) keep clips -2 and 2 (2 hops
    # from the actor); track 2 (absent at t: chain -2, -1, 1, 2) keeps its node nearest t
    # (clip -1, earlier on the tie) and the one 2 hops away (clip 2)
    kept = (att[0, 1] > 0).nonzero()[:, 0].tolist()
    assert kept == [0, 1, 5, 9, 10, 11]
    assert torch.allclose(att[:2, 1].sum(-1), torch.ones(2))
    assert torch.equal(att[2], torch.zeros(2, 14))  # keyframe 1 has no memory


def test_padded_entries_change_nothing() -> None:
    head = tiny_head().eval()
    batch = banked([2, 3], [7, 4], pad_to=9)
    poisoned = with_bank(batch, poison_padding(batch.bank, ["features"]))
    assert torch.allclose(head(batch).logits, head(poisoned).logits, atol=1e-5)


def test_current_entries_are_not_memory_nodes() -> None:
    head = tiny_head().eval()
    batch = banked([2, 1], [6, 3])
    flagged = {k: v.clone() for k, v in batch.bank.items()}
    flagged["current"][0, 4] = flagged["current"][1, 0] = True
    flagged["features"][0, 4] += 5.0
    dropped = {k: v.clone() for k, v in batch.bank.items()}
    dropped["mask"][0, 4] = dropped["mask"][1, 0] = False
    a = head(with_bank(batch, flagged)).logits
    assert torch.allclose(a, head(with_bank(batch, dropped)).logits, atol=1e-6)
    assert not torch.allclose(a, head(batch).logits)


def test_track_identity_matters() -> None:
    head = tiny_head().eval()
    batch = banked([1], [12])
    assert batch.track is not None
    other = replace(batch, track=batch.track + 7)  # no memory node of the same identity
    assert not torch.allclose(head(batch).logits, head(other).logits)


def test_empty_window_is_finite() -> None:
    torch.manual_seed(0)
    head = tiny_head()
    out = head(banked([2, 1], [0, 0]), labels=labels_for(3))
    assert torch.isfinite(out.logits).all()
    (out.logits.sum() + sum(out.aux_losses.values())).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = tiny_head(bank_dim=C + 3)
    batch = banked([2, 3], [9, 8])
    batch.bank["features"] = torch.randn(2, 9, C + 3)
    out = head(batch, labels=labels_for(5))
    (out.logits.square().sum() + sum(out.aux_losses.values())).backward()
    assert_grads_reach_every_parameter(head, finite=True)


def test_aggregator_without_edges_changes_nothing() -> None:
    agg = OrderedTemporalAggregator(4)
    h = torch.randn(3, 4)
    assert torch.equal(agg(h, torch.zeros(0, 2, dtype=torch.long)), h)
    out = agg(h, torch.tensor([[0, 1]]))
    assert torch.equal(out[2], h[2]) and not torch.equal(out[1], h[1])
    assert torch.allclose(out[1], h[1] + agg.forward_fc(h[0]).relu(), atol=1e-6)


def test_init_from_stage1_starts_as_the_stage1_dam() -> None:
    torch.manual_seed(0)
    stage1 = IGMNDAMHead(in_channels=C, num_classes=K, **TINY_DAM).eval()
    head = tiny_head().eval()
    fresh = head.init_from_stage1(stage1.state_dict())
    assert fresh and not any(k.startswith("dam.") for k in fresh)
    batch = banked([2, 1], [6, 3])
    torch.testing.assert_close(head(batch).logits, stage1(batch).logits)
    # a bank dumped by the stage-1 DAM is what the head reads
    rows = bank_rows(stage1, "identity", actor_batch([3], seed=4))["features"]
    batch.bank["features"][0, :3] = rows
    assert torch.isfinite(head(batch).logits).all()
    with pytest.raises(ValueError, match="IGMNDAMHead"):
        head.init_from_stage1({"nope": torch.zeros(1)})


def test_learns_a_label_only_the_bank_knows() -> None:
    """Label = sign of feature 0 of the memory entries that share the actor's track."""
    torch.manual_seed(0)
    counts, sizes = [1, 1, 1, 1, 1, 1], [12, 9, 12, 6, 12, 9]
    batch = banked(counts, sizes, seed=3)
    batch.pooled[:] = batch.pooled[0]
    batch.boxes[:] = batch.boxes[0]
    batch.context[:] = batch.context[0]
    sign = torch.where(torch.arange(6) % 2 == 0, 1.0, -1.0)
    batch.bank["features"][:, :, 0] += 2 * sign[:, None]
    batch.bank["features"] *= batch.bank["mask"][..., None]
    targets = (sign > 0).float()[:, None].expand(-1, K).clone()
    head = tiny_head(nl_dropout=0.0)
    loss = fit_logits(head, batch, targets, ava_bce, lr=3e-3, steps=150)
    assert loss.item() < 0.05
    empty = with_bank(batch, {**batch.bank, "mask": torch.zeros_like(batch.bank["mask"])})
    assert ava_bce(head(empty).logits, targets).item() > 0.3
