"""Runs the extract stage of the tiny pipeline in its own process (tests kill or race it).

    python -m tests.stages.extract_worker WORLD WORK_ROOT [--splits train val]
        [--barrier DIR --parties N] [--threads N]

Detect and track run first (cached when WORK_ROOT already has them). With ``--barrier``
the process waits, after its imports, until N processes have entered DIR, so that racing
workers really start together. Prints the extract StageRef as JSON on its last line.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from stages.config import load_config
from stages.detect import stage as detect
from stages.detect import track
from stages.extract import stage as extract
from stages.framework import StageRef, run_stage
from stages.pipeline import dataset_section, prepare_dataset

TINY_YAML = Path(__file__).resolve().parents[1] / "flows" / "tiny.yaml"


def stage_configs(world: Path, **extract_overrides: Any):
    """(detect, track, extract) stage configs of tests/flows/tiny.yaml on ``world``."""
    cfg = load_config(TINY_YAML, [f"dataset.root={world}"]).model_copy(update={"world": None})
    dataset, fingerprint = prepare_dataset(cfg)
    section = dataset_section(cfg, dataset, fingerprint)
    ext = section(extract.ExtractStageConfig, "extract")
    ext = ext.model_copy(update={"extract": ext.extract.model_copy(update=extract_overrides)})
    return (
        section(detect.DetectStageConfig, "detect"),
        section(track.TrackStageConfig, "track"),
        ext,
    )


def track_input(world: Path, work_root: Path) -> StageRef:
    """Run detect and track on ``world`` into ``work_root``; the track output's reference."""
    det_cfg, track_cfg, _ = stage_configs(world)
    persons = run_stage(detect.STAGE, det_cfg, {}, work_root)
    return run_stage(track.STAGE, track_cfg, {"detect": persons}, work_root)


def _barrier(directory: Path, parties: int, timeout_s: float = 120.0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(directory.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise SystemExit(f"barrier {directory}: fewer than {parties} workers arrived")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("world", type=Path)
    parser.add_argument("work_root", type=Path)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--barrier", type=Path)
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(process)d %(message)s")
    torch.set_num_threads(args.threads)
    tracks = track_input(args.world, args.work_root)
    _, _, ext_cfg = stage_configs(args.world, splits=args.splits)
    if args.barrier is not None:
        _barrier(args.barrier, args.parties)
    ref = run_stage(extract.STAGE, ext_cfg, {"track": tracks}, args.work_root)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    logging.getLogger("bankflow.extract").info("worker peak RSS %d kB", peak_kb)
    print(ref.model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
