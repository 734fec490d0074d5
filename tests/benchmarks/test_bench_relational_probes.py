"""Relational probe table: val AP of every stage-1 head on every probe (one run, CPU).

Each head is trained with the project's loop and its paper recipe at probe size
(:func:`stages.recipes.probe_recipe`) on the probe worlds of
``tests/stages/relational_probes.py``; chance is the positive rate of the scored val
actors. Set ``BANKFLOW_PROBE_HEADS=linear,acar`` to run a subset. The table is copied
into docs/findings-probes.md.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.stages.relational_probes import PROBES, probe_world, run_probe

pytestmark = pytest.mark.bench

HEADS = ("linear", "acrn", "acar", "pcca", "sonly", "tonly", "igmn_dam", "amcr_slim", "amcr")


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
            for probe in PROBES:
                result = run_probe(head, worlds[probe], tmp_path / "ckpt" / head / probe)
                chance[probe] = result.chance
                row.append(result.ap)
                print(f"{head} {probe}: AP {result.ap:.3f} ({result.seconds:.0f} s)", flush=True)
            rows.append((head, row))
    finally:
        torch.set_num_threads(threads)
    print("\n| head | " + " | ".join(PROBES) + " |")
    print("|---" * (len(PROBES) + 1) + "|")
    print("| chance | " + " | ".join(f"{chance[p]:.3f}" for p in PROBES) + " |")
    for head, row in rows:
        print(f"| {head} | " + " | ".join(f"{ap:.3f}" for ap in row) + " |")
    assert all(0.0 <= ap <= 1.0 for _, row in rows for ap in row)
