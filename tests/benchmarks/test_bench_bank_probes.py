"""Identity probe for the stage-2 bank heads: val AP of ``igmn`` and ``lfb`` over a bank
dumped from the probe stores, beside the stage-1 linear head (one run, CPU).

The identity probe (``tests/stages/relational_probes.py``): actor i's label is whether its
track was marked at the video's first keyframe; later keyframes, the only ones scored, show
an independent marker. Videos are short (``KEYFRAMES`` = 4: the marked keyframe and three
scored ones) and the window reaches the whole video from every keyframe
(``bank_window``: 3 s before and after), so the first keyframe is always in the window.
The same number of keyframes as the stage-1 table (384 train, 192 val) is cut into more
videos (96 train, 48 val), which also gives ~120 independent val tracks instead of ~15.

Banks are dumped with the dump stage's per-video code (``tests/stages/bank_probes.py``):
``identity`` from a stage-1 ``igmn_dam`` for ``igmn``, ``lfb`` from the trained stage-1
linear head for ``lfb``. Each stage-2 head is trained from scratch with the project's loop
and the bank stage's window reader. Recipes: ``paper`` (IGMN §4.1 for igmn; the SlowFast
AVA recipe of its stage-1 linear for lfb, scaled to 32 keyframes per step, 20 epochs) and
``adamw`` (the loop's default AdamW 1e-3, 20 epochs). ``BANKFLOW_BANK_PROBE_KEYFRAMES=32``
runs the stage-1 table's identity world (12 x 32 train, 6 x 32 val keyframes) instead. ``bank oracle``: the marker channel
of the actor's own track's bank row at the first keyframe (the bank holds the cue).

``test_identity_reach`` repeats igmn (AdamW) with longer videos (the window still the whole
video), with each track's own look and with one look for all, its AP per scored
timestamp and its train AP; ``test_identity_more_tracks`` runs 8-keyframe videos with 4x
the training tracks. Copied into
docs/findings-probes.md.
"""

from __future__ import annotations

import os

import pytest
import torch

from stages.train.recipes import build_recipe_head, probe_recipe
from tests.stages.bank_probes import (
    BANK_SOURCE,
    ap_by_timestamp,
    bank_window,
    dump_world_banks,
    first_keyframe_oracle_ap,
    run_bank_probe,
    stage2_optim,
)
from tests.stages.relational_probes import CHANNELS, probe_world, run_probe

pytestmark = pytest.mark.bench

KEYFRAMES = int(os.environ.get("BANKFLOW_BANK_PROBE_KEYFRAMES", "4"))  # 32: the table's world
TRAIN_KEYFRAMES, VAL_KEYFRAMES = 384, 192  # as the stage-1 table's worlds


def identity_world(root, keyframes: int, *, same_look: bool = False):
    return probe_world(
        root, "identity", train_videos=TRAIN_KEYFRAMES // keyframes,
        val_videos=VAL_KEYFRAMES // keyframes, keyframes=keyframes, same_look=same_look,
    )  # fmt: skip


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage1_and_banks(world, root):
    """The trained stage-1 linear (its AP: the baseline), and each stage-2 head's banks."""
    model = build_recipe_head("linear", probe_recipe("linear"), in_channels=CHANNELS, num_classes=1)
    linear = run_probe("linear", world, root / "ckpt" / "linear", model=model)
    stage1 = {"linear": model}
    # igmn_dam's identity rows are its RoIAlign max-pooled (no learned weight enters them):
    # the head is built with its probe recipe, not trained.
    stage1["igmn_dam"] = build_recipe_head(
        "igmn_dam", probe_recipe("igmn_dam"), in_channels=CHANNELS, num_classes=1
    )
    probes = {}
    for head, (source, kind) in BANK_SOURCE.items():
        probes[head] = dump_world_banks(world, stage1[source], kind, root / "banks" / head)
    return linear, probes


@pytest.mark.parametrize("same_look", [False, True], ids=["own_look", "same_look"])
def test_identity_bank_table(tmp_path, one_thread, same_look):
    world = identity_world(tmp_path / "world", KEYFRAMES, same_look=same_look)
    linear, probes = stage1_and_banks(world, tmp_path)
    window = bank_window(KEYFRAMES)
    rows = [("chance", linear.chance), ("bank oracle", first_keyframe_oracle_ap(probes["igmn"]))]
    rows.append(("linear (stage 1)", linear.ap))
    recipes = os.environ.get("BANKFLOW_BANK_PROBE_RECIPES", "paper,adamw").split(",")
    for head in ("lfb", "igmn"):
        for recipe in recipes:
            result = run_bank_probe(
                head, probes[head], tmp_path / "ckpt" / f"{head}-{recipe}",
                optim=stage2_optim(head, recipe), window=window,
            )  # fmt: skip
            rows.append((f"{head} ({recipe})", result.ap))
            print(f"{head} {recipe}: AP {result.ap:.3f} ({result.seconds:.0f} s)", flush=True)
    look = "every actor the same look" if same_look else "own look per track"
    print(f"\nidentity probe, {KEYFRAMES} keyframes per video, {look}")
    print("| row | AP |\n|---|---|")
    for name, ap in rows:
        print(f"| {name} | {ap:.3f} |")
    assert all(0.0 <= ap <= 1.0 for _, ap in rows)


def test_identity_reach(tmp_path, one_thread):
    """igmn (AdamW, 20 epochs) on videos of 2-32 keyframes, the window the whole video, with
    each track's own look and with one look for every actor; AP on val and on its own
    train split, and val AP per scored timestamp."""
    lengths = [int(k) for k in os.environ.get("BANKFLOW_REACH", "2,4,8,16,32").split(",")]
    stage1 = build_recipe_head(
        "igmn_dam", probe_recipe("igmn_dam"), in_channels=CHANNELS, num_classes=1
    )
    rows = []
    for same_look in (False, True):
        look = "same look" if same_look else "own look"
        for k in lengths:
            root = tmp_path / f"{look}-{k}"
            world = identity_world(root / "world", k, same_look=same_look)
            probe = dump_world_banks(world, stage1, "identity", root / "bank")
            result = run_bank_probe(
                "igmn", probe, root / "ckpt", optim=stage2_optim("igmn", "adamw"),
                window=bank_window(k),
            )  # fmt: skip
            rows.append((look, k, result.chance, result.ap, result.train_ap))
            print(f"igmn, {look}, {k} keyframes: AP {result.ap:.3f} (train {result.train_ap:.3f},"
                  f" {result.seconds:.0f} s)", flush=True)  # fmt: skip
            by_t = ap_by_timestamp(world.val, result.scores)
            print("  per scored timestamp t: " + ", ".join(
                f"t={t} {ap:.2f} (chance {chance:.2f})" for t, (ap, chance) in by_t.items()
            ), flush=True)  # fmt: skip
    print("\n| look | keyframes per video | chance | igmn val AP | igmn train AP |")
    print("|---|---|---|---|---|")
    for look, k, chance, ap, train_ap in rows:
        print(f"| {look} | {k} | {chance:.3f} | {ap:.3f} | {train_ap:.3f} |")
    assert all(0.0 <= ap <= 1.0 for *_, ap, _ in rows)


def test_identity_more_tracks(tmp_path, one_thread):
    """igmn (AdamW, 20 epochs), own look, 8-keyframe videos, with 4x the train videos of
    ``test_identity_reach`` (192; val 96): more tracks than the head can learn by look."""
    world = probe_world(tmp_path / "world", "identity", train_videos=192, val_videos=96,
                        keyframes=8)  # fmt: skip
    stage1 = build_recipe_head(
        "igmn_dam", probe_recipe("igmn_dam"), in_channels=CHANNELS, num_classes=1
    )
    probe = dump_world_banks(world, stage1, "identity", tmp_path / "bank")
    result = run_bank_probe(
        "igmn", probe, tmp_path / "ckpt", optim=stage2_optim("igmn", "adamw"),
        window=bank_window(8),
    )  # fmt: skip
    print(f"igmn, own look, 8 keyframes, 192 train videos: AP {result.ap:.3f} (chance "
          f"{result.chance:.3f}, train {result.train_ap:.3f}, {result.seconds:.0f} s)")  # fmt: skip
    assert 0.0 <= result.ap <= 1.0
