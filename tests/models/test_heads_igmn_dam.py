"""IGMN Dual Attention Module head: geometry, relaxed BCE, losses, masking, training."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from models.heads.igmn_dam import (
    IGMNDAMHead,
    enlarge_boxes,
    relaxed_bce,
    relaxed_targets,
    standard_bce,
)
from tests.models.heads_testing import (
    assert_grads_reach_every_parameter,
    fit,
    offset_boxes,
    random_actor_batch,
)

C, K, H, W = 16, 5, 4, 6


pytestmark = pytest.mark.usefixtures("one_thread")
make_batch = partial(
    random_actor_batch, channels=C, height=H, width=W, corner=0.5, far_corner=offset_boxes
)


def tiny_head(**kw) -> IGMNDAMHead:
    args = dict(in_channels=C, num_classes=K, attention_hidden=8, fuse_hidden=16)
    return IGMNDAMHead(**{**args, **kw})


def labels_for(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, K, generator=g) < 0.4).float()


@pytest.mark.parametrize("counts", [[1], [3], [1, 4, 2], [2, 0, 1]])
def test_shapes(counts: list[int]) -> None:
    torch.manual_seed(0)
    head = tiny_head().eval()
    n = sum(counts)
    out = head(make_batch(counts), labels=labels_for(n))
    assert out.logits.shape == (n, K)
    assert out.features is not None and out.features.shape == (n, 16)
    assert out.attention["semantic"].shape == (n, 7, 7)
    assert out.attention["identity"].shape == (n, 7, 7)
    assert set(out.aux_losses) == {"prior_sem", "prior_idt", "cls_sem", "cls_idt"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.aux_losses.values())
    torch.testing.assert_close(head.classifier(out.features), out.logits)


def test_without_labels_only_the_label_free_priors_are_returned() -> None:
    out = tiny_head()(make_batch([2, 1]))
    assert set(out.aux_losses) == {"prior_sem", "prior_idt"}


def test_geometry_of_a_lone_actor() -> None:
    head = tiny_head()
    boxes = torch.tensor([[0.2, 0.2, 0.6, 0.6]])
    f_geo, p_hat = head.geometry(boxes, torch.zeros(1, dtype=torch.long), 1, H, W)
    assert f_geo.shape == (1, 4, 7, 7)
    # relative coordinates are the cell centres; x varies along columns, y along rows
    torch.testing.assert_close(f_geo[0, 0, 0], (torch.arange(7) + 0.5) / 7)
    torch.testing.assert_close(f_geo[0, 1, :, 0], (torch.arange(7) + 0.5) / 7)
    # polar angle around the own centre: right of it 0, below it +pi/2 (image y points down)
    assert f_geo[0, 2, 3, 6].item() == pytest.approx(0.0, abs=1e-6)
    assert f_geo[0, 2, 6, 3].item() == pytest.approx(0.5, abs=1e-6)
    assert f_geo[0, 2, 3, 0].item() == pytest.approx(1.0, abs=1e-6)
    # no interference actor: zero interference angle; p_hat is 1 only in the enlarged ring
    assert bool((f_geo[0, 3] == 0).all())
    ring = torch.ones(7, 7)
    ring[1:-1, 1:-1] = 0
    torch.testing.assert_close(p_hat[0], ring)


def test_geometry_sees_interference_actors_of_the_same_keyframe_only() -> None:
    head = tiny_head()
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.3, 0.1, 0.9, 0.9], [0.3, 0.1, 0.9, 0.9]])
    # actors 0 and 1 share a keyframe; actor 2 (same box as 1) is in another keyframe
    f_geo, p_hat = head.geometry(boxes, torch.tensor([0, 0, 1]), 2, H, W)
    # actor 0's right half is covered by actor 1: interference indicated, angle set
    assert bool((p_hat[0, :, -1] == 1).all()) and bool((f_geo[0, 3, 3, 4:] != 0).any())
    # cells left of actor 1's centre look towards angle pi around it
    cx1 = 0.6
    xa = 0.05 + (torch.arange(7) + 0.5) / 7 * 0.5  # actor 0's enlarged x range
    right_of_1 = xa > cx1
    covered = (xa >= 0.3) & (xa <= 0.9)
    row = f_geo[0, 3, 3]  # middle row, at actor 1's centre height
    left = row[covered & ~right_of_1].abs()
    assert left.numel() > 0
    torch.testing.assert_close(left, torch.ones_like(left), atol=1e-5, rtol=0)
    # actor 2 is alone in its keyframe: nothing from actor 0 or 1 leaks in
    assert bool((f_geo[2, 3] == 0).all())
    inner = p_hat[2, 1:-1, 1:-1]
    assert bool((inner == 0).all())


def test_enlarged_boxes_are_clipped_to_the_image() -> None:
    big = enlarge_boxes(torch.tensor([[0.0, 0.2, 0.4, 0.6]]), 1.25)
    torch.testing.assert_close(big, torch.tensor([[0.0, 0.15, 0.45, 0.65]]))


def test_relaxed_bce_matches_eq_4_by_hand() -> None:
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.0, 0.0, 0.5, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    batch_index = torch.tensor([0, 0, 1])
    # IoU(b0, b1) = 0.125 / 0.375 = 1/3; actor 2 is in another keyframe
    expected = torch.tensor([[1.0, 1 / 3], [1 / 3, 1.0], [0.0, 1.0]])
    torch.testing.assert_close(relaxed_targets(labels, boxes, batch_index), expected)
    # at logits 0 each term costs log 2: sum_c [y + (1 - E)] per actor, mean over actors
    loss = relaxed_bce(torch.zeros(3, 2), labels, boxes, batch_index)
    weights = (labels + 1 - expected).sum(1)  # 5/3, 5/3, 2
    assert loss.item() == pytest.approx(math.log(2) * weights.mean().item(), rel=1e-6)
    # without overlap it is the standard BCE of eq. 5
    apart = torch.tensor([0, 1, 2])
    logits = torch.randn(3, 2)
    torch.testing.assert_close(
        relaxed_bce(logits, labels, boxes, apart), standard_bce(logits, labels)
    )
    # the class mask drops ignored (pose) classes
    only_second = torch.tensor([False, True])
    masked = relaxed_bce(torch.zeros(3, 2), labels, boxes, batch_index, only_second)
    assert masked.item() == pytest.approx(math.log(2) * (2 / 3 + 1 + 1) / 3, rel=1e-6)


def test_aux_losses_are_weighted_by_lambda_aux() -> None:
    batch, labels = make_batch([3, 2]), labels_for(5)
    torch.manual_seed(0)
    half = tiny_head(aux_weight=0.5).eval()(batch, labels=labels)
    torch.manual_seed(0)
    one = tiny_head(aux_weight=1.0).eval()(batch, labels=labels)
    for name, value in one.aux_losses.items():
        torch.testing.assert_close(half.aux_losses[name], 0.5 * value)


def test_priors_vanish_when_the_maps_follow_them() -> None:
    # a huge output bias drives both maps to 1: eq. 6 is then 0, and eq. 8 reduces to
    # max(0, margin - mean(2 p_hat - 1)), checked against the geometry's p_hat
    torch.manual_seed(0)
    head = tiny_head(prior_margin=0.1).eval()
    with torch.no_grad():
        for ffn in (head.ffn_sem, head.ffn_idt):
            ffn[2].bias.fill_(50.0)
    batch = make_batch([2, 1])
    out = head(batch)
    assert out.aux_losses["prior_idt"].item() == pytest.approx(0.0, abs=1e-6)
    _, p_hat = head.geometry(batch.boxes, batch.batch_index, 2, H, W)
    expected = F.relu(0.1 - (2 * p_hat - 1).mean(dim=(1, 2))).mean() * 0.5
    assert out.aux_losses["prior_sem"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = tiny_head().train()
    batch = make_batch([1, 3, 2])
    out = head(batch, labels=labels_for(6))
    loss = F.binary_cross_entropy_with_logits(out.logits, labels_for(6)) + sum(
        out.aux_losses.values()
    )
    loss.backward()
    assert_grads_reach_every_parameter(head)


def test_overfits_a_few_keyframes() -> None:
    torch.manual_seed(0)
    head = tiny_head().train()
    batch = make_batch([1, 2, 3, 2], seed=1)
    labels = labels_for(batch.num_actors, seed=1)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        out = head(batch, labels=labels)
        main = F.binary_cross_entropy_with_logits(out.logits, labels)
        return main + sum(out.aux_losses.values()), main

    _, main = fit(head, losses, lr=1e-2, steps=150)
    assert main.item() < 0.02


def test_bad_inputs_raise_clear_errors() -> None:
    head = tiny_head()
    batch = make_batch([2])
    with pytest.raises(ValueError, match=r"labels must be \[2, 5\]"):
        head(batch, labels=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="aux_class_mask must have one entry per class"):
        tiny_head(aux_class_mask=[True, False])


def test_pinned_values_under_seed_0() -> None:
    torch.manual_seed(0)
    out = tiny_head().eval()(make_batch([2]), labels=labels_for(2))
    expected = torch.tensor([-0.01002, -0.31191, -0.11440])
    torch.testing.assert_close(out.logits[0, :3], expected, atol=1e-4, rtol=1e-4)
    assert out.aux_losses["cls_sem"].item() == pytest.approx(1.69133, abs=1e-4)
    assert out.aux_losses["prior_idt"].item() == pytest.approx(0.03459, abs=1e-4)
