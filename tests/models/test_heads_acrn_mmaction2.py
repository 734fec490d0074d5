"""ACRNHead (variant="mmaction2", the default) loads MMAction2 ACRN checkpoints and
computes their logits: fixtures/reference_heads/mmaction2_acrn.pt comes from MMAction2's
own ``ACRNHead`` with random weights and BatchNorm statistics (README.md there)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.heads import ActorBatch, build_head
from models.heads.acrn import ACRNHead
from models.heads.acrn_mmaction2 import mmaction2_acrn_state

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/reference_heads/mmaction2_acrn.pt"
C, D, K = 8, 6, 7

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _batch(ref: dict) -> ActorBatch:
    n = ref["roi_feats"].shape[0]
    return ActorBatch(
        context=ref["context"][:, :, 0],  # [B, C, H, W]: one (pooled) frame
        pooled=ref["roi_feats"][:, :, 0].amax(dim=(2, 3)),  # RoIAlign 8x8, spatial max
        boxes=torch.tensor([[0.1, 0.1, 0.5, 0.5]]).repeat(n, 1),
        batch_index=ref["batch_index"],
    )


def _head(num_classes: int = K) -> ACRNHead:
    head = build_head("acrn", in_channels=C, num_classes=num_classes, dim=D, num_convs=2)
    assert isinstance(head, ACRNHead) and head.variant == "mmaction2"
    return head


def test_logits_and_maps_equal_mmaction2(reference) -> None:
    head = _head()
    assert set(head.load_mmaction2(reference["checkpoint"]["state_dict"])) == {
        "backbone.conv1.conv.weight"
    }
    head.eval()
    batch = _batch(reference)
    maps = head.first_order(batch)
    assert (maps - reference["maps"][:, :, 0]).abs().max().item() <= 1e-5
    out = head(batch)
    diff = (out.logits - reference["logits"]).abs().max().item()
    assert diff <= 1e-5, diff
    assert out.features is not None and out.features.shape == (6, D)


def test_class_rows_are_selected(reference) -> None:
    head = _head(num_classes=2)
    head.load_mmaction2(reference["checkpoint"]["state_dict"], class_index=[3, 0])
    logits = head.eval()(_batch(reference)).logits
    torch.testing.assert_close(logits, reference["logits"][:, [3, 0]], atol=1e-5, rtol=0)


def test_release_parts() -> None:
    head = ACRNHead(in_channels=C, num_classes=K)
    assert head.classifier.in_features == C  # dim defaults to in_channels (2C -> C)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules()) == 2


def test_bad_settings_and_keys() -> None:
    with pytest.raises(ValueError, match="no reduce step"):
        ACRNHead(in_channels=C, num_classes=K, reduce_dim=4)
    with pytest.raises(ValueError, match="variant"):
        ACRNHead(in_channels=C, num_classes=K, variant="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no counterpart"):
        mmaction2_acrn_state({"roi_head.shared_head.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="variant='mmaction2'"):
        ACRNHead(in_channels=C, num_classes=K, variant="paper").load_mmaction2({})
