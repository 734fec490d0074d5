"""The head contract (models/heads/contract.py), checked over every entry of ``HEADS``.

Every head, stage 1 and stage 2, in each variant its own tests build:

- declares what the stages read from it (``reads``, bank kinds, ``classifier``, ...), and
  its ``head_kwargs`` pass the config-time validation;
- reads only the feature-store arrays it declares;
- is permutation equivariant over the actors of a keyframe (logits, features, per-actor
  attention maps), and a keyframe alone gives what it gives inside a batch (other
  keyframes and their padding change nothing);
- has logits that are exactly ``classifier(input)``, so cRT can swap its classifier;
- draws the attention picture it declares, with the maps of that picture's shape;
- fills every bank kind it declares as a source, one row per actor, in actor order;
- with ``ONLINE_MEMORY``, writes features as wide as ``memory_dim`` says.

The per-head copies of the permutation and keyframe-alone tests live here now.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from models.heads import (
    BANK_KINDS,
    FEATURE_ARRAYS,
    HEADS,
    ONLINE_KINDS,
    ActorBatch,
    Head,
    HeadData,
    bank_rows,
    build_from_data,
    head_class,
    head_reads,
    validate_head_kwargs,
)
from tests.models.bank_testing import random_window, with_bank
from tests.models.heads_testing import offset_boxes, random_actor_batch

C, K, H, W, T = 12, 4, 4, 6, 3
COUNTS, SIZES = [3, 1, 2], [4, 0, 3]  # actors and bank entries per keyframe
ORDER = torch.tensor([2, 0, 1, 3, 5, 4])  # a permutation within each keyframe
ACFB_RELEASE = {"maps": (6, (H - 1) // 2, (W - 1) // 2)}  # after its 3x3 + stride-2 pool

# case: (head name, head_kwargs, bank arrays per entry for a stage-2 head)
CASES: dict[str, tuple[str, dict, dict | None]] = {
    "linear": ("linear", {}, None),
    "acrn": ("acrn", {"dim": 6}, None),
    "acrn-paper": ("acrn", {"variant": "paper", "reduce_dim": 8, "dim": 6}, None),
    "acar": ("acar", {"reduce_dim": 8, "dim": 6}, None),
    "acar-paper-nl": ("acar", {"variant": "paper", "reduce_dim": 8, "dim": 6}, None),
    "acar-paper-rn": ("acar", {"variant": "paper", "hr2o": "rn", "reduce_dim": 8, "dim": 6}, None),
    "acrn-box_mask": ("acrn", {"dim": 6, "actor_position": "box_mask"}, None),
    "acar-box_mask": ("acar", {"reduce_dim": 8, "dim": 6, "actor_position": "box_mask"}, None),
    "amcr": ("amcr", {"hidden_dim": 16, "num_layers": 2, "num_heads": 2,
                      "classifier_dropout": 0}, None),
    "amcr_slim": ("amcr_slim", {"hidden_dim": 16, "num_heads": 2, "pos_input_size": [4, 6]}, None),
    "amcr-box_bias": ("amcr", {"hidden_dim": 16, "num_layers": 2, "num_heads": 2,
                               "actor_position": "box_bias"}, None),
    "pcca": ("pcca", {"dim": 16, "num_layers": 1, "num_heads": 2}, None),
    "sonly": ("sonly", {"hidden_dim": 8, "num_heads": 2, "num_layers": 2}, None),
    "tonly": ("tonly", {"hidden_dim": 8, "num_heads": 2, "num_layers": 2}, None),
    "igmn_dam": ("igmn_dam", {"attention_hidden": 8, "fuse_hidden": 16}, None),
    "lfb-nl": ("lfb", {"hidden_dim": 16, "fbo": "nl"}, {"features": (6,)}),
    "lfb-max": ("lfb", {"hidden_dim": 16, "fbo": "max"}, {"features": (6,)}),
    "lfb-avg": ("lfb", {"hidden_dim": 16, "fbo": "avg"}, {"features": (6,)}),
    "acar_acfb": ("acar_acfb", {"reduce_dim": 8, "dim": 6}, ACFB_RELEASE),
    "acar_acfb-paper": ("acar_acfb", {"reduce_dim": 8, "dim": 6, "variant": "paper"},
                        {"maps": (6, H, W)}),
    "tonly_memory": ("tonly_memory", {"hidden_dim": 16, "num_heads": 2}, {"features": (C,)}),
    "amcr_hafb": ("amcr_hafb", {"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
                  {"interaction": (16,), "movement": (C,)}),
    "amcr_hafb-box_bias": ("amcr_hafb", {"hidden_dim": 16, "num_layers": 1, "num_heads": 2,
                                         "actor_position": "box_bias"},
                           {"interaction": (16,), "movement": (C,)}),
    "igmn": ("igmn", {"hidden_dim": 16, "memory_dim": 8, "num_layers": 2, "attention_hidden": 8,
                      "fuse_hidden": 16}, {"features": (C,)}),
}  # fmt: skip
IDS = sorted(CASES)

pytestmark = pytest.mark.usefixtures("one_thread")


def build(case: str) -> Head:
    name, kwargs, arrays = CASES[case]
    torch.manual_seed(0)
    data = HeadData(in_channels=C, num_classes=K, exclusive=(0,), bank_arrays=arrays)
    head, _ = build_from_data(name, data, kwargs)
    return head.eval()


def batch_for(case: str, seed: int = 0) -> ActorBatch:
    """``COUNTS`` actors (track = slot in the keyframe) and, for a stage-2 head, a bank
    window of ``SIZES`` entries."""
    batch = random_actor_batch(COUNTS, channels=C, height=H, width=W, roi_steps=T, corner=0.5,
                               far_corner=offset_boxes, seed=seed)  # fmt: skip
    slots = torch.cat([torch.arange(c) for c in COUNTS]).long()
    batch = replace(batch, track=slots)
    arrays = CASES[case][2]
    if arrays is not None:
        batch = with_bank(batch, random_window(SIZES, arrays, seed=seed + 100))
    return batch


def select(batch: ActorBatch, index: torch.Tensor, batch_index: torch.Tensor,
           keyframes: slice) -> ActorBatch:  # fmt: skip
    """Actors ``index`` (with their RoI maps and tracks) on the contexts and bank windows of
    ``keyframes``."""

    def rows(x):
        return None if x is None else x[index]

    bank = {k: v[keyframes] for k, v in batch.bank.items()}
    return replace(batch, context=batch.context[keyframes], pooled=batch.pooled[index],
                   boxes=batch.boxes[index], batch_index=batch_index, roi=rows(batch.roi),
                   roi_t=rows(batch.roi_t), track=rows(batch.track), bank=bank)  # fmt: skip


def per_actor_maps(head: Head, out) -> list[str]:
    """The attention maps indexed by actor alone ([N, ...] without actor slots)."""
    picture = head.ATTENTION
    if picture is None or picture.style == "actor_pairs":
        return []
    return list(picture.maps)


def test_every_head_is_covered() -> None:
    assert {name for name, _, _ in CASES.values()} == set(HEADS)
    stage2 = {n for n, e in HEADS.items() if head_class(e).BANK_KIND is not None}
    assert stage2 == {name for name, _, arrays in CASES.values() if arrays is not None}


@pytest.mark.parametrize("case", IDS)
def test_declarations(case: str) -> None:
    name, kwargs, arrays = CASES[case]
    validate_head_kwargs(name, kwargs)  # what the config loader runs
    head = build(case)
    assert isinstance(head, head_class(HEADS[name]))
    assert head.reads is not None, f"{case} does not declare what it reads"
    assert "pooled" in head_reads(head) and head_reads(head) <= FEATURE_ARRAYS
    assert isinstance(head.classifier, nn.Linear)
    assert set(head.BANK_SOURCES) <= set(BANK_KINDS)
    if arrays is None:
        assert head.BANK_KIND is None
    else:
        assert head.BANK_KIND in BANK_KINDS
        assert (head.BANK_KIND in ONLINE_KINDS) == head.ONLINE_MEMORY


@pytest.mark.parametrize("case", IDS)
def test_output_depends_only_on_declared_arrays(case: str) -> None:
    head = build(case)
    reads = head_reads(head)
    batch = batch_for(case)
    stripped = replace(
        batch,
        context=batch.context if "context" in reads else torch.zeros((len(COUNTS), 0, 0, 0)),
        roi=batch.roi if "roi" in reads else None,
        roi_t=batch.roi_t if "roi_t" in reads else None,
    )
    with torch.no_grad():
        torch.testing.assert_close(head(stripped).logits, head(batch).logits)


@pytest.mark.parametrize("case", IDS)
def test_permuting_actors_permutes_outputs(case: str) -> None:
    head = build(case)
    batch = batch_for(case)
    with torch.no_grad():
        out = head(batch)
        permuted = head(select(batch, ORDER, batch.batch_index, slice(None)))
    torch.testing.assert_close(permuted.logits, out.logits[ORDER], atol=1e-5, rtol=1e-5)
    assert out.features is not None and permuted.features is not None
    torch.testing.assert_close(permuted.features, out.features[ORDER], atol=1e-5, rtol=1e-5)
    for name in per_actor_maps(head, out):
        torch.testing.assert_close(permuted.attention[name], out.attention[name][ORDER])


@pytest.mark.parametrize("case", IDS)
def test_keyframe_alone_equals_keyframe_in_a_batch(case: str) -> None:
    head = build(case)
    batch = batch_for(case)
    with torch.no_grad():
        together = head(batch)
        for k in range(len(COUNTS)):
            index = torch.nonzero(batch.batch_index == k)[:, 0]
            alone = head(select(batch, index, torch.zeros_like(index), slice(k, k + 1)))
            torch.testing.assert_close(alone.logits, together.logits[index], atol=1e-5, rtol=1e-5)
            assert alone.features is not None and together.features is not None
            torch.testing.assert_close(
                alone.features, together.features[index], atol=1e-5, rtol=1e-5
            )
            for name in per_actor_maps(head, together):
                torch.testing.assert_close(
                    alone.attention[name], together.attention[name][index], atol=1e-5, rtol=1e-5
                )
    # and the window is really read: another bank changes a stage-2 head's logits
    if batch.bank:
        other = with_bank(batch, batch_for(case, seed=5).bank)
        with torch.no_grad():
            assert not torch.allclose(head(other).logits, together.logits)


@pytest.mark.parametrize("case", IDS)
def test_logits_are_the_classifier_output_and_it_can_be_swapped(case: str) -> None:
    head = build(case)
    batch = batch_for(case)
    seen: list[torch.Tensor] = []
    hook = head.classifier.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    try:
        with torch.no_grad():
            logits = head(batch).logits
            assert len(seen) == 1  # the classifier runs once per forward
            x = seen[0]
            torch.testing.assert_close(head.classifier(x), logits)
            # cRT re-trains the classifier in place; the head then predicts with the new one
            g = torch.Generator().manual_seed(1)
            head.classifier.weight.copy_(torch.randn(head.classifier.weight.shape, generator=g))
            swapped = head(batch).logits
    finally:
        hook.remove()
    torch.testing.assert_close(swapped, head.classifier(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(swapped, logits)


PICTURED = [c for c in IDS if head_class(HEADS[CASES[c][0]]).ATTENTION is not None]


def test_pictured_heads() -> None:
    assert {CASES[c][0] for c in PICTURED} == {"acar", "amcr", "amcr_slim", "igmn_dam"}


@pytest.mark.parametrize("case", PICTURED)
def test_attention_picture_maps(case: str) -> None:
    head = build(case)
    picture = head.ATTENTION
    assert picture is not None
    batch = batch_for(case)
    with torch.no_grad():
        attention = head(batch).attention
    n, b, most = batch.num_actors, len(COUNTS), max(COUNTS)
    if case == "acar-paper-rn":  # the relation-network HR2O has no map (the picture refuses)
        assert not set(picture.maps) & set(attention)
        return
    for name in picture.maps:
        shape = tuple(attention[name].shape)
        if picture.style == "actor_pairs":  # [B, layers, Nmax, Nmax, H', W']
            assert shape[0] == b and shape[2:4] == (most, most) and len(shape) == 6, shape
        elif picture.style == "context_tokens":  # [N, tokens of the context scales]
            assert shape == (n, sum(s * s for s in head.context_scales))  # type: ignore[attr-defined]
        else:  # enlarged_box: [N, R, R] over the box scaled by context_scale
            assert shape == (n, head.roi_size, head.roi_size)  # type: ignore[attr-defined]
            assert float(head.context_scale) >= 1.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", [c for c in IDS if CASES[c][2] is None])
def test_bank_sources_give_one_row_per_actor(case: str) -> None:
    head = build(case)
    batch = batch_for(case)
    assert "lfb" in head.BANK_SOURCES
    for kind in head.BANK_SOURCES:
        rows = bank_rows(head, kind, batch)
        permuted = bank_rows(head, kind, select(batch, ORDER, batch.batch_index, slice(None)))
        for name, value in rows.items():
            assert value.shape[0] == batch.num_actors, (kind, name)
            torch.testing.assert_close(permuted[name], value[ORDER], atol=1e-5, rtol=1e-5)
    for kind in sorted(set(BANK_KINDS) - set(head.BANK_SOURCES)):
        with pytest.raises(ValueError, match=type(head).__name__):
            bank_rows(head, kind, batch)


@pytest.mark.parametrize("case", [c for c in IDS if CASES[c][2] is not None])
def test_online_memory_width(case: str) -> None:
    name, kwargs, _ = CASES[case]
    cls = head_class(HEADS[name])
    data = HeadData(in_channels=C, num_classes=K, online_memory=True)
    if not cls.ONLINE_MEMORY:
        with pytest.raises(ValueError, match="cannot read an online memory"):
            build_from_data(name, data, kwargs)
        return
    torch.manual_seed(0)
    head, full = build_from_data(name, data, kwargs)
    dim = full["bank_dim"]
    assert dim == cls.memory_dim(C, kwargs)
    batch = with_bank(batch_for(case), random_window(SIZES, {"features": (dim,)}))
    with torch.no_grad():
        out = head.eval()(batch)
    assert out.features is not None and out.features.shape == (batch.num_actors, dim)


@pytest.mark.parametrize("case", IDS)
def test_labels_only_for_heads_that_need_them(case: str) -> None:
    head = build(case).train()
    batch = batch_for(case)
    labels = torch.rand(batch.num_actors, K, generator=torch.Generator().manual_seed(2)) < 0.5
    if head.needs_labels:
        out = head(batch, labels=labels.float())
        assert {"cls_sem", "cls_idt"} <= set(out.aux_losses)
    else:
        with pytest.raises(TypeError):
            head(batch, labels=labels.float())


def test_head_kwargs_are_checked_against_the_constructor() -> None:
    with pytest.raises(ValueError, match=r"head 'lfb' takes no 'fob' \(it takes bank_dim, "):
        validate_head_kwargs("lfb", {"fob": "nl"})
    with pytest.raises(ValueError, match="'num_classes' comes from the data"):
        validate_head_kwargs("linear", {"num_classes": 3})
    with pytest.raises(ValueError, match="unknown head 'lineer'"):
        validate_head_kwargs("lineer", {})
    # partials: the fixed mode can still be given, the slim defaults too
    validate_head_kwargs("tonly", {"mode": "temporal", "hidden_dim": 8})
    validate_head_kwargs("amcr_slim", {"num_layers": 2})


def test_data_fills_what_the_config_does_not_give() -> None:
    data = HeadData(in_channels=C, num_classes=3, exclusive=(1,), bank_arrays={"features": (5,)})
    _, full = build_from_data("igmn", data, {"fuse_hidden": 8, "attention_hidden": 8})
    assert full["aux_class_mask"] == [True, False, True] and full["bank_dim"] == 5
    _, given = build_from_data("lfb", data, {"bank_dim": 5, "hidden_dim": 4})
    assert given == {"bank_dim": 5, "hidden_dim": 4}
    hafb = HeadData(C, 3, bank_arrays={"interaction": (7,), "movement": (9,)})
    _, full = build_from_data("amcr_hafb", hafb, {"hidden_dim": 16, "num_heads": 2})
    assert (full["interaction_dim"], full["movement_dim"]) == (7, 9)


def test_head_without_declaration_reads_everything() -> None:
    class Legacy(torch.nn.Module):
        pass

    assert head_reads(Legacy()) == FEATURE_ARRAYS


def test_unknown_declared_array_is_named() -> None:
    class Typo(torch.nn.Module):
        reads = frozenset({"pooled", "contxt"})

    with pytest.raises(ValueError, match=r"Typo.reads names unknown arrays \['contxt'\]"):
        head_reads(Typo())
