"""Overlap probe for IGMN-DAM's own stage-1 claim (one run, CPU): separating the
representative actor from an interfering actor inside its (enlarged) box.

The ``overlap`` world (``tests/stages/relational_probes.py``): two actors per keyframe whose
boxes share one or two of their four map columns; the label is the actor's own marker,
and the other actor's marker is painted in the shared columns, inside the actor's box.
Each head is trained with its probe recipe (``probe_recipe``: its paper recipe scaled to
the probe) and, as a second row, with the loop's default AdamW 1e-3, 20 epochs. Copied into
docs/findings-probes.md.
"""

from __future__ import annotations

import os

import pytest
import torch

from stages.train.optim import OptimConfig
from stages.train.recipes import probe_recipe
from tests.stages.relational_probes import OVERLAP, probe_world, run_probe

pytestmark = pytest.mark.bench


def test_overlap_probe(tmp_path):
    heads = os.environ.get("BANKFLOW_OVERLAP_HEADS", "linear,igmn_dam,acrn,pcca").split(",")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world = probe_world(tmp_path / "world", OVERLAP)
        rows = []
        for head in heads:
            for recipe_name in ("paper", "adamw"):
                recipe = probe_recipe(head)
                if recipe_name == "adamw":
                    adamw = OptimConfig(epochs=20, batch_keyframes=32)
                    recipe = recipe.model_copy(update={"optim": adamw})
                result = run_probe(head, world, tmp_path / head / recipe_name, recipe=recipe)
                rows.append((f"{head} ({recipe_name})", result.chance, result.ap))
                print(f"{head} {recipe_name}: AP {result.ap:.3f} ({result.seconds:.0f} s)")
    finally:
        torch.set_num_threads(threads)
    print(f"\n| head | overlap AP (chance {rows[0][1]:.3f}) |\n|---|---|")
    for name, _, ap in rows:
        print(f"| {name} | {ap:.3f} |")
    assert all(0.0 <= ap <= 1.0 for *_, ap in rows)
