"""One step of the scaling benchmark, run in its own process (its peak RSS is its own).

``python -m tests.benchmarks.scale_step CONFIG WORK STEP`` runs the pipeline of a scale
world's config (``stages.world.scale``) up to one stage with the in-process runner, after
narrowing the config to the runs that step measures (earlier outputs are cached), and
prints one JSON line: the step's records (stage seconds, output bytes) and ``ru_maxrss``.

Steps: ``status`` (every key, nothing run), ``train:<run>``, ``dump:<bank>``,
``train_bank``, ``rebalance``, ``evaluate``, ``ensemble``, ``report``. Extra train runs:
``linear_store`` (the linear head read from the store per batch, not preloaded) and
``acar_ram`` (ACAR with its context maps preloaded).

``BANKFLOW_BENCH_SCALE_MAX_STEPS=N`` caps every training epoch (stage 1 and stage 2) at
N steps (``optim.max_steps_per_epoch``): the rate and peak RSS of a run at F = 1 without
its hours-long epoch (setup, indexing and preloading still cover the whole split).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from stages.config import load_config
from stages.framework import output_dir
from stages.pipeline import PipelineRun, dry_runner, run_pipeline
from stages.train.stage import HISTORY_FILE


def narrowed(config, step: str):
    """``config`` with only the runs ``step`` measures (the others' outputs exist)."""
    stage, _, label = step.partition(":")
    runs = dict(config.train.runs)
    runs["linear"] = runs["linear"].model_copy(update={"preload": True})
    runs["acar"] = runs["acar"].model_copy(update={"preload": False})
    optim = runs["linear"].optim.model_copy(update={"seed": 1})
    runs["linear_store"] = runs["linear"].model_copy(update={"preload": False, "optim": optim})
    acar_optim = runs["acar"].optim.model_copy(update={"seed": 1})
    runs["acar_ram"] = runs["acar"].model_copy(update={"preload": True, "optim": acar_optim})
    banks = ["lfb"]
    if stage == "train":
        runs = {label: runs[label]}
    elif step == "dump:acfb":
        runs, banks = {k: runs[k] for k in ("linear", "acar")}, ["acfb"]
    else:  # ACAR (hours per epoch at F = 1/4 on 2 shared cores) only where asked for
        runs = {"linear": runs["linear"]}
    bank_runs = dict(config.train_bank.runs)
    if cap := os.environ.get("BANKFLOW_BENCH_SCALE_MAX_STEPS"):  # capped training epochs
        runs = {k: capped(r, int(cap)) for k, r in runs.items()}
        bank_runs = {k: capped(r, int(cap)) for k, r in bank_runs.items()}
    update = {
        "train": config.train.model_copy(update={"runs": runs}),
        "dump": config.dump.model_copy(update={"banks": {b: config.dump.banks[b] for b in banks}}),
        "train_bank": config.train_bank.model_copy(update={"runs": bank_runs}),
    }
    return config.model_copy(update=update)


def capped(run, steps: int):
    """``run`` with at most ``steps`` optimizer steps per epoch (``optim.max_steps_per_epoch``)."""
    return run.model_copy(
        update={"optim": run.optim.model_copy(update={"max_steps_per_epoch": steps})}
    )


def main(argv: list[str]) -> int:
    config_path, work, step = argv
    config = load_config(Path(config_path), [])
    stage = step.partition(":")[0]
    t0 = time.perf_counter()
    if step == "status":
        run = PipelineRun(config=config, work_root=Path(work), runner=dry_runner, with_cache=False)
        run_pipeline(run, write=False)
    else:
        run = PipelineRun(
            config=narrowed(config, step), work_root=Path(work), until=stage, with_cache=False
        )
        run_pipeline(run, write=False)
    wall = time.perf_counter() - t0
    records = {}
    for name, rec in run.records.items():
        if name.partition(":")[0] != stage and step != "status":
            continue
        out = output_dir(work, name.partition(":")[0], rec["key"])
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else 0
        records[name] = {
            "cached": rec["cached"],
            "seconds": rec["compute_seconds"] if not rec["cached"] else 0.0,
            "bytes": size,
            "summary": {k: v for k, v in rec["summary"].items() if not isinstance(v, dict | list)},
        }
        history = out / HISTORY_FILE  # a training run: the loop's own seconds, per epoch
        if history.is_file():
            epochs = json.loads(history.read_text())
            records[name]["loop_seconds"] = sum(e["seconds"] for e in epochs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"step": step, "wall": wall, "rss": rss, "records": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
