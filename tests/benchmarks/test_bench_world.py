"""Build time and size of the demo-size world (run with ``-m bench -s``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stages.world import WorldConfig, build_world


@pytest.mark.bench
@pytest.mark.parametrize("workers", [1, 2])
def test_bench_build_default_world(tmp_path: Path, workers: int) -> None:
    cfg = WorldConfig.default(seed=0)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = build_world(tmp_path / "world", cfg, workers=workers)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    videos = sorted(summary.videos_dir.glob("*.mp4"))
    megabytes = sum(p.stat().st_size for p in videos) / 1e6
    n_frames = len(videos) * cfg.n_frames
    print(
        f"\nworld build (workers={workers}): {wall:.1f} s wall, {cpu:.1f} s CPU in this "
        f"process; {len(videos)} videos, {n_frames} frames ({n_frames / wall:.0f} frames/s), "
        f"{megabytes:.2f} MB of mp4; keyframes {summary.n_keyframes}, "
        f"GT boxes {summary.n_gt_boxes}"
    )
    print(summary.class_table())
    assert len(videos) == cfg.n_train_videos + cfg.n_val_videos
