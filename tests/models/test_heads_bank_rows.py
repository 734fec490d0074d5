"""bank_rows: what each stage-1 head gives each bank kind, per actor, in batch order."""

from __future__ import annotations

import pytest
import torch

from models.heads import BANK_KINDS, bank_rows, build_head
from models.heads.bank_features import bank_window
from tests.models.bank_testing import random_window, with_bank
from tests.models.heads_testing import offset_boxes, permute_actors, random_actor_batch

C, K, H, W, T = 12, 4, 4, 6, 3

pytestmark = pytest.mark.usefixtures("one_thread")


def batch(counts=(2, 1, 3)):
    return random_actor_batch(
        list(counts),
        channels=C,
        height=H,
        width=W,
        roi_steps=T,
        corner=0.5,
        far_corner=offset_boxes,
    )


def stage1(name: str, **kw):
    torch.manual_seed(0)
    tiny = {
        "linear": {},
        "acrn": {"dim": 6},
        "acar": {"reduce_dim": 8, "dim": 6, "variant": "paper"},
        "acar_release": {"reduce_dim": 8, "dim": 6},
        "amcr": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "pos_input_size": (4, 6)},
        "tonly": {"hidden_dim": 16, "num_heads": 2},
        "sonly": {"hidden_dim": 16, "num_heads": 2},
        "igmn_dam": {"attention_hidden": 8, "fuse_hidden": 16},
    }[name]
    return build_head(name.removesuffix("_release"), in_channels=C, num_classes=K, **{**tiny, **kw})


@pytest.mark.parametrize(
    ("name", "kind", "shapes"),
    [
        ("linear", "lfb", {"features": (C,)}),
        ("acar", "lfb", {"features": (8 + 6,)}),
        ("acar", "acfb", {"maps": (6, H, W)}),
        # the released ACAR: [ReLU(fc1 A), GAP] and maps after its unpadded 3x3 + pool
        ("acar_release", "lfb", {"features": (6 + 6,)}),
        ("acar_release", "acfb", {"maps": (6, (H - 1) // 2, (W - 1) // 2)}),
        ("acrn", "acfb", {"maps": (6, H, W)}),
        ("amcr", "hrafb", {"interaction": (16,), "movement": (C,)}),
        ("tonly", "memory", {"features": (C,)}),
        ("sonly", "memory", {"features": (C,)}),
        ("igmn_dam", "identity", {"features": (C,)}),
    ],
)
def test_rows_per_actor(name: str, kind: str, shapes: dict) -> None:
    head = stage1(name).train()
    b = batch()
    rows = bank_rows(head, kind, b)
    assert head.training  # the mode is restored
    assert {k: tuple(v.shape) for k, v in rows.items()} == {k: (6, *s) for k, s in shapes.items()}
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in rows.values())
    # deterministic (eval: no dropout) and aligned with the actors: permuting them permutes rows
    again = bank_rows(head, kind, b)
    order = torch.tensor([1, 0, 2, 5, 3, 4])
    permuted = bank_rows(head, kind, permute_actors(b, order))
    for key, value in rows.items():
        assert torch.equal(value, again[key]), key
        assert torch.allclose(permuted[key], value[order], atol=1e-5), key


def test_rows_are_what_the_heads_compute() -> None:
    b = batch()
    linear = stage1("linear")
    assert torch.equal(bank_rows(linear, "lfb", b)["features"], b.pooled)
    acar = stage1("acar").eval()
    assert torch.equal(bank_rows(acar, "acfb", b)["maps"], acar.first_order(b))
    assert torch.equal(bank_rows(acar, "lfb", b)["features"], acar(b).features)
    amcr = stage1("amcr").eval()
    rows = bank_rows(amcr, "hrafb", b)
    assert torch.allclose(rows["interaction"], amcr(b).features, atol=1e-5)  # MHA fast path
    assert torch.equal(rows["movement"], b.pooled)
    tonly = stage1("tonly")
    assert b.roi_t is not None
    expected = b.roi_t.mean(dim=(2, 3, 4))  # space-avg tokens, then the mean over time
    assert torch.allclose(bank_rows(tonly, "memory", b)["features"], expected, atol=1e-6)
    dam = stage1("igmn_dam")
    node = bank_rows(dam, "identity", b)["features"]
    assert torch.equal(node, dam.actor_maps(b).amax(dim=(2, 3)))


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("linear", "acfb", "LinearHead"),
        ("linear", "hrafb", "LinearHead"),
        ("acar", "memory", "ACARHead"),
        ("amcr", "identity", "AMCRHead"),
        ("linear", "nope", "unknown bank kind"),
    ],
)
def test_kind_that_does_not_fit_the_head(name: str, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bank_rows(stage1(name), kind, batch())


def test_kinds() -> None:
    assert BANK_KINDS == ("lfb", "acfb", "hrafb", "memory", "identity")


def test_bank_window_checks_and_defaults() -> None:
    b = batch((2, 1))
    window = random_window([3, 0], {"features": (5,)})
    del window["dt"], window["track"], window["current"]
    out = bank_window(with_bank(b, window), {"features": 1}, "SomeHead")
    assert torch.equal(out["dt"], torch.zeros(2, 3))
    assert torch.equal(out["track"], torch.full((2, 3), -1))
    assert out["mask"].dtype == torch.bool
    assert torch.equal(out["current"], torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"SomeHead.*maps"):
        bank_window(with_bank(b, window), {"maps": 3}, "SomeHead")
    with pytest.raises(ValueError, match=r"SomeHead: bank 'features' must be \[B=2, L=3\]"):
        bad = {**window, "features": torch.zeros(2, 3, 5, 1)}
        bank_window(with_bank(b, bad), {"features": 1}, "SomeHead")
    empty = bank_window(
        with_bank(b, random_window([0, 0], {"features": (5,)})), {"features": 1}, "X"
    )
    assert empty["features"].shape == (2, 1, 5) and not empty["mask"].any()
    assert torch.equal(empty["track"], torch.full((2, 1), -1))
