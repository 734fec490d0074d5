"""Relational probe table: val AP of every stage-1 head on every probe (one run, CPU).

Each head is trained with the project's loop and its paper recipe at probe size
(:func:`stages.train.recipes.probe_recipe`) on the probe worlds of
``tests/stages/relational_probes.py``; chance is the positive rate of the scored val
actors. A row ``acrn+box_mask`` is ``acrn`` with ``actor_position: box_mask`` (likewise
``amcr+box_bias``). Set
``BANKFLOW_PROBE_HEADS=linear,acar`` to run a subset. The table is copied into
docs/findings-probes.md.
"""

from __future__ import annotations

import os

import pytest
import torch

from stages.train.loop import OptimConfig
from stages.train.recipes import HeadRecipe, probe_recipe, scaled_recipe
from tests.stages.relational_probes import (
    PROBES,
    probe_world,
    run_probe,
    scene_level_ap,
)

pytestmark = pytest.mark.bench

HEADS = ("linear", "acrn", "acrn+box_mask", "acar", "acar+box_mask", "pcca", "sonly", "tonly",
         "igmn_dam", "amcr_slim", "amcr", "amcr+box_bias")  # fmt: skip


def row_recipe(row: str) -> tuple[str, HeadRecipe]:
    """(head, its probe recipe) of a table row ``head`` or ``head+<actor_position>``."""
    head, _, position = row.partition("+")
    recipe = probe_recipe(head)
    if position:
        kwargs = {**recipe.head_kwargs, "actor_position": position}
        recipe = recipe.model_copy(update={"head_kwargs": kwargs})
    return head, recipe


def test_probe_table(tmp_path):
    heads = os.environ.get("BANKFLOW_PROBE_HEADS", ",".join(HEADS)).split(",")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worlds = {p: probe_world(tmp_path / p, p) for p in PROBES}
        chance = {}
        rows = []
        for head in heads:
            row = []
            name, recipe = row_recipe(head)
            for probe in PROBES:
                ckpt = tmp_path / "ckpt" / head / probe
                result = run_probe(name, worlds[probe], ckpt, recipe=recipe)
                chance[probe] = result.chance
                row.append(result.ap)
                print(f"{head} {probe}: AP {result.ap:.3f} ({result.seconds:.0f} s)", flush=True)
            rows.append((head, row))
    finally:
        torch.set_num_threads(threads)
    print("\n| head | " + " | ".join(PROBES) + " |")
    print("|---" * (len(PROBES) + 1) + "|")
    print("| chance | " + " | ".join(f"{chance[p]:.3f}" for p in PROBES) + " |")
    scene = {p: scene_level_ap(worlds[p]) for p in ("actor_actor", "actor_context",
                                                   "actor_context_actor")}  # fmt: skip
    print("| scene-level | " + " | ".join(f"{scene[p]:.3f}" if p in scene else "—"
                                         for p in PROBES) + " |")  # fmt: skip
    for head, row in rows:
        print(f"| {head} | " + " | ".join(f"{ap:.3f}" for ap in row) + " |")
    assert all(0.0 <= ap <= 1.0 for _, row in rows for ap in row)


def test_location_diagnostic(tmp_path):
    """ACRN with and without the actor's box as an input channel, trained long (AdamW 3e-3,
    80 epochs) on actor_context: what the missing location costs the map heads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = probe_world(tmp_path / "actor_context", "actor_context")
        long = OptimConfig(epochs=80, batch_keyframes=32, lr=3e-3)
        aps = {}
        for name in ("acrn", "acrn+box_mask"):
            recipe = row_recipe(name)[1].model_copy(update={"optim": long})
            result = run_probe("acrn", world, tmp_path / name, recipe=recipe)
            aps[name] = result.ap
            print(f"{name}, AdamW 3e-3, 80 epochs, actor_context: AP {result.ap:.3f}")
    finally:
        torch.set_num_threads(threads)
    assert all(0.0 <= ap <= 1.0 for ap in aps.values())


def test_acar_position_diagnostic(tmp_path):
    """ACAR with and without its actor's box mask on actor_context_actor, its paper recipe
    scaled to 40 epochs (twice the table's): whether HR2O relates two located actors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = probe_world(tmp_path / "actor_context_actor", "actor_context_actor")
        aps = {}
        for name in ("acar", "acar+box_mask"):
            head, recipe = row_recipe(name)
            longer = scaled_recipe(head, batch_keyframes=32, epochs=40).optim
            recipe = recipe.model_copy(update={"optim": longer})
            aps[name] = run_probe(head, world, tmp_path / name, recipe=recipe).ap
            print(f"{name}, paper recipe over 40 epochs, actor_context_actor: AP {aps[name]:.3f}")
        print(f"scene-level: {scene_level_ap(world):.3f}")
    finally:
        torch.set_num_threads(threads)
    assert all(0.0 <= ap <= 1.0 for ap in aps.values())


def test_amcr_seed_diagnostic(tmp_path):
    """AMCR, AMCR-slim and AMCR + ``box_bias`` on actor_context with other training seeds
    (model initialisation and data order; the same worlds): how reliably the scaled paper
    recipe's 240 steps learn to locate the context above the actor.
    ``BANKFLOW_PROBE_EPOCHS=40``: the same recipe scaled to 40 epochs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = probe_world(tmp_path / "actor_context", "actor_context")
        rows = os.environ.get("BANKFLOW_PROBE_HEADS", "amcr,amcr_slim,amcr+box_bias").split(",")
        epochs = int(os.environ.get("BANKFLOW_PROBE_EPOCHS", "20"))
        for row in rows:
            head, recipe = row_recipe(row)
            base = scaled_recipe(head, batch_keyframes=32, epochs=epochs).optim
            aps = []
            for seed in (1, 2):
                optim = base.model_copy(update={"seed": seed})
                seeded = recipe.model_copy(update={"optim": optim})
                ckpt = tmp_path / "ckpt" / row / str(seed)
                aps.append(run_probe(head, world, ckpt, recipe=seeded).ap)
            ap = " / ".join(f"{ap:.3f}" for ap in aps)
            print(f"{row}, {epochs} epochs, seeds 1, 2, actor_context: AP {ap}")
            assert all(0.0 <= ap <= 1.0 for ap in aps)
        print(f"scene-level: {scene_level_ap(world):.3f}")
    finally:
        torch.set_num_threads(threads)
