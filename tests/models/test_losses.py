"""ava_loss / ava_scores against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import ava_loss, ava_scores, loss_normalizers

# Two actors, four classes; classes 0 and 1 are the exclusive pose group.
LOGITS = [[2.0, 0.0, 1.0, -1.0], [0.5, 0.5, -2.0, 3.0]]
TARGETS = [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]]  # actor 1 has two pose labels


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_ava_loss_matches_hand_computation() -> None:
    # Pose CE: actor 0 -> -log softmax([2, 0])_0; actor 1 -> target (1/2, 1/2) over equal
    # logits -> log 2. Averaged over the two actors.
    pose = (softplus(-2.0) + math.log(2.0)) / 2
    # Sigmoid BCE over classes 2, 3: -log sigmoid(z) = softplus(-z), -log(1-sigmoid(z)) = softplus(z).
    rest = (softplus(-1.0) + softplus(-1.0) + softplus(-2.0) + softplus(-3.0)) / 4
    got = ava_loss(torch.tensor(LOGITS), torch.tensor(TARGETS), exclusive=[0, 1])
    assert got.item() == pytest.approx(pose + rest, abs=1e-6)
    assert got.item() == pytest.approx(0.6105473, abs=1e-6)


def test_actor_without_pose_label_adds_no_pose_term() -> None:
    logits = torch.tensor(LOGITS)
    targets = torch.tensor(TARGETS)
    targets[1, :2] = 0.0  # actor 1 now has interactions only
    rest = (softplus(-1.0) + softplus(-1.0) + softplus(-2.0) + softplus(-3.0)) / 4
    got = ava_loss(logits, targets, exclusive=torch.tensor([0, 1]))
    assert got.item() == pytest.approx(softplus(-2.0) + rest, abs=1e-6)


def test_gradient_is_softmax_minus_target_distribution() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    ava_loss(logits, torch.tensor(TARGETS), exclusive=[0, 1]).backward()
    p0 = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    # Pose part averaged over 2 actors; actor 1's equal logits match its (1/2, 1/2) target.
    assert torch.allclose(logits.grad[0, :2], (p0 - torch.tensor([1.0, 0.0])) / 2, atol=1e-6)
    assert torch.allclose(logits.grad[1, :2], torch.zeros(2), atol=1e-6)
    # BCE part averaged over 2 actors x 2 classes: (sigmoid(z) - y) / 4.
    rest = torch.sigmoid(torch.tensor([[1.0, -1.0], [-2.0, 3.0]])) - torch.tensor(
        [[1.0, 0.0], [0.0, 1.0]]
    )
    assert torch.allclose(logits.grad[:, 2:], rest / 4, atol=1e-6)


def test_empty_exclusive_group_and_bce_mode_are_plain_bce() -> None:
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(ava_loss(logits, targets, exclusive=[]), bce)
    assert torch.allclose(ava_loss(logits, targets, exclusive=[0, 1], mode="bce"), bce)
    assert torch.allclose(ava_loss(logits, targets.bool(), exclusive=[]), bce)


def test_all_classes_exclusive_is_cross_entropy() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, 0, 1, 1])
    got = ava_loss(logits, F.one_hot(labels, 3).float(), exclusive=[0, 1, 2])
    assert torch.allclose(got, F.cross_entropy(logits, labels))


def test_no_actors_gives_zero_with_graph() -> None:
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = ava_loss(logits, torch.zeros(0, 3), exclusive=[0])
    loss.backward()
    assert loss.item() == 0.0


def test_ava_scores() -> None:
    scores = ava_scores(torch.tensor(LOGITS), [0, 1])
    assert torch.allclose(scores[:, :2].sum(1), torch.ones(2))
    assert scores[0, 0].item() == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)
    assert torch.allclose(scores[:, 2:], torch.sigmoid(torch.tensor(LOGITS)[:, 2:]))
    assert torch.allclose(ava_scores(torch.tensor(LOGITS), []), torch.sigmoid(torch.tensor(LOGITS)))


@pytest.mark.parametrize(
    ("exclusive", "mode", "message"),
    [([0, 4], "ava", r"\[0, 4\)"), ([1, 1], "ava", "repeat"), ([0], "softmax", "mode")],
)
def test_bad_arguments_are_named(exclusive: list[int], mode: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ava_loss(torch.zeros(2, 4), torch.zeros(2, 4), exclusive=exclusive, mode=mode)  # type: ignore[arg-type]


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4\) and \(2, 3\)"):
        ava_loss(torch.zeros(2, 4), torch.zeros(2, 3), exclusive=[])


@pytest.mark.parametrize("mode", ["ava", "bce"])
def test_shards_with_global_normalizers_sum_to_the_batch_loss(mode: str) -> None:
    """Data-parallel ranks: each slice's loss with the batch's normalisers sums to the
    loss of the whole batch (a slice without pose labels included)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen)
    targets = torch.zeros(7, 5)
    targets[[0, 1, 4, 6], [0, 1, 0, 1]] = 1  # pose classes 0, 1 (exclusive)
    targets[[2, 3, 5], [3, 2, 4]] = 1  # rows 2, 3 have no pose label
    exclusive = [0, 1]
    whole = ava_loss(logits, targets, exclusive=exclusive, mode=mode)
    norms = loss_normalizers(targets, exclusive, mode)
    parts = [ava_loss(logits[s], targets[s], exclusive=exclusive, mode=mode, normalizers=norms)
             for s in (slice(0, 2), slice(2, 4), slice(4, 7), slice(7, 7))]  # fmt: skip
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-6)
    assert float(parts[1]) > 0 and float(parts[3]) == 0
