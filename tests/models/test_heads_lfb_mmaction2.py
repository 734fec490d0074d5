"""LFBHead(pad_mode="zeros") loads MMAction2 LFB checkpoints and computes their logits.

fixtures/reference_heads/mmaction2_lfb.pt comes from MMAction2's own ``FBONonLocal``
(mmaction2 1.2.0 from PyPI, run outside this project; README.md there says how) with
random weights, windows of 0, 5 and 12 (full) entries out of 12 slots.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.heads import ActorBatch, build_head
from models.heads.lfb import LFBHead
from models.heads.lfb_mmaction2 import mmaction2_lfb_state
from tests.models.bank_testing import poison_padding, with_bank

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/reference_heads/mmaction2_lfb.pt"
C, LATENT, K = 16, 8, 7

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _batch(ref: dict, pad_to: int = 14) -> ActorBatch:
    """The fixture's actors, and each keyframe's bank entries as a masked window."""
    n_kf, c = len(ref["bank"]), ref["pooled"].shape[1]
    features = torch.zeros(n_kf, pad_to, c)
    mask = torch.zeros(n_kf, pad_to, dtype=torch.bool)
    for k, entries in enumerate(ref["bank"]):
        features[k, : len(entries)] = entries
        mask[k, : len(entries)] = True
    window = {
        "mask": mask,
        "dt": torch.zeros(n_kf, pad_to),
        "track": torch.full((n_kf, pad_to), -1),
        "current": torch.zeros(n_kf, pad_to, dtype=torch.bool),
        "features": features,
    }
    n = ref["pooled"].shape[0]
    batch = ActorBatch(
        context=torch.zeros(n_kf, c, 1, 1),
        pooled=ref["pooled"],
        boxes=torch.tensor([[0.1, 0.1, 0.5, 0.5]]).repeat(n, 1),
        batch_index=ref["batch_index"],
    )
    return with_bank(batch, window)


def _head(ref: dict, num_classes: int = K) -> LFBHead:
    head = build_head("lfb", in_channels=C, num_classes=num_classes, hidden_dim=LATENT,
                      pad_mode="zeros", num_slots=ref["slots"])  # fmt: skip
    assert isinstance(head, LFBHead)
    return head


def test_logits_equal_mmaction2(reference) -> None:
    head = _head(reference)
    rest = head.load_mmaction2(reference["checkpoint"]["state_dict"])
    assert set(rest) == {"backbone.conv1.conv.weight"}
    head.eval()
    batch = _batch(reference)
    logits = head(batch).logits
    diff = (logits - reference["logits"]).abs().max().item()
    assert diff <= 1e-5, diff
    # The window's own padding is not what MMAction2 pads with: poisoning it changes nothing.
    poisoned = with_bank(batch, poison_padding(batch.bank, ["features"]))
    torch.testing.assert_close(head(poisoned).logits, logits, atol=1e-6, rtol=0)
    # Masking instead of attending to the zeros is a different model (bankflow's default).
    masked = _head(reference)
    masked.pad_mode = "mask"
    masked.load_mmaction2(reference["checkpoint"]["state_dict"])
    assert (masked.eval()(batch).logits - reference["logits"]).abs().max() > 1e-3


def test_class_rows_are_selected(reference) -> None:
    head = _head(reference, num_classes=3)
    head.load_mmaction2(reference["checkpoint"]["state_dict"], class_index=[1, 4, 6])
    logits = head.eval()(_batch(reference)).logits
    torch.testing.assert_close(logits, reference["logits"][:, [1, 4, 6]], atol=1e-5, rtol=0)


def test_zero_slots_without_num_slots_pad_to_the_window() -> None:
    head = build_head("lfb", in_channels=4, num_classes=2, hidden_dim=4, pad_mode="zeros")
    ref = {"bank": [torch.randn(2, 4), torch.randn(0, 4)], "pooled": torch.randn(3, 4),
           "batch_index": torch.tensor([0, 0, 1])}  # fmt: skip
    out = head.eval()(_batch(ref, pad_to=5))
    assert out.attention["fbo"].shape == (3, 2, 5)  # every slot attended, zeros included
    assert (out.attention["fbo"][2] > 0).all()  # the empty window attends to its zeros


def test_bad_settings_and_keys() -> None:
    with pytest.raises(ValueError, match="pad_mode"):
        LFBHead(in_channels=4, num_classes=2, pad_mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_slots"):
        LFBHead(in_channels=4, num_classes=2, num_slots=3)
    with pytest.raises(ValueError, match="no counterpart"):
        mmaction2_lfb_state(
            {"roi_head.shared_head.fbo.non_local_layer_1.extra.weight": torch.zeros(1)}
        )
    with pytest.raises(ValueError, match="fbo='nl'"):
        LFBHead(in_channels=4, num_classes=2, fbo="max").load_mmaction2({})
    head = build_head("lfb", in_channels=4, num_classes=2, hidden_dim=4, pad_mode="zeros",
                      num_slots=1)  # fmt: skip
    ref = {
        "bank": [torch.randn(2, 4)],
        "pooled": torch.randn(1, 4),
        "batch_index": torch.zeros(1, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="num_slots=1"):
        head(_batch(ref, pad_to=2))
