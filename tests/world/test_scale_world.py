"""The features-only scale world (stages.world.scale): AVA's cardinality × F, read by the
store reader and the pipeline (extract pre-seeded at its real key), in bounded memory."""

from __future__ import annotations

import csv
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from stages.config import load_config
from stages.extract.stage import store_path
from stages.pipeline import PipelineRun, dry_runner, run_pipeline
from stages.train.data import open_split
from stages.world import scale
from stages.world.scale import (
    AVA_EVAL_IDS,
    AVA_KEYFRAMES_PER_VIDEO,
    ScaleWorldConfig,
    build_scale_world,
    labelmap_text,
)

F_TINY = 1 / 2000
F_SMALL = 8 / 235  # 8 train videos, 3 val videos


def test_cardinality_at_full_and_tiny_scale() -> None:
    full = ScaleWorldConfig(scale=1.0)
    assert full.split_shape("train") == (235, AVA_KEYFRAMES_PER_VIDEO)
    assert full.split_shape("val") == (64, AVA_KEYFRAMES_PER_VIDEO)
    assert AVA_KEYFRAMES_PER_VIDEO == 897  # timestamps 902..1798
    assert ScaleWorldConfig(scale=1 / 16).split_shape("train") == (15, 878)
    assert ScaleWorldConfig(scale=F_TINY).split_shape("train") == (1, 105)
    assert len(AVA_EVAL_IDS) == len(set(AVA_EVAL_IDS)) == 60
    assert labelmap_text().count("label_id:") == 60
    with pytest.raises(ValueError, match="--scale"):
        ScaleWorldConfig(scale=0)


def build_measured(out: Path, config: ScaleWorldConfig) -> tuple[dict, int]:
    """The world's summary and the Python-heap peak (numpy included) of writing its store."""
    real = scale._write_store_compute
    peaks: list[int] = []

    def measured(cfg: ScaleWorldConfig):
        compute = real(cfg)

        def run(ctx):
            tracemalloc.reset_peak()
            summary = compute(ctx)
            peaks.append(tracemalloc.get_traced_memory()[1])
            return summary

        return run

    scale._write_store_compute = measured
    tracemalloc.start()
    try:
        summary = build_scale_world(out, config)
    finally:
        tracemalloc.stop()
        scale._write_store_compute = real
    return summary, peaks[0]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, int]:
    """8+3 videos with 64-d features, and the peak memory of writing their store."""
    out = tmp_path_factory.mktemp("scale") / "w"
    summary, peak = build_measured(out, ScaleWorldConfig(scale=F_SMALL, pooled_dim=64))
    return out, summary, peak


def gt_rows(path: Path) -> list[list[str]]:
    with path.open() as f:
        return list(csv.reader(f))


def test_scale_world_counts_and_long_tail(small_world) -> None:
    out, summary, _ = small_world
    for split, videos in (("train", 8), ("val", 3)):
        rows = gt_rows(out / "world" / "annotations" / f"{split}.csv")
        keyframes = {(r[0], int(r[1])) for r in rows}
        boxes = {(r[0], r[1], r[7]) for r in rows}
        assert len({r[0] for r in rows}) == videos
        assert summary["dataset"][split]["videos"] == videos
        assert len(boxes) == summary["dataset"][split]["gt_boxes"]
        assert min(t for _, t in keyframes) == 902 and max(t for _, t in keyframes) <= 1798
        per_kf = Counter(
            (r[0], r[1]) for r in rows if int(r[6]) in (11, 12, 14, 1, 3, 4, 5, 6, 7, 8, 9, 10, 13)
        )
        assert 1.8 < np.mean(list(per_kf.values())) < 2.6  # persons per keyframe (one pose each)
        assert max(per_kf.values()) >= 6
    counts = Counter(int(r[6]) for r in gt_rows(out / "world" / "annotations" / "train.csv"))
    assert set(counts) <= set(AVA_EVAL_IDS) and len(counts) >= 50
    frequent = sorted(counts.values(), reverse=True)
    assert frequent[0] > 100 * frequent[-1]  # AVA's long tail


def test_scale_world_store_is_read_by_the_reader_and_the_pipeline(small_world) -> None:
    out, summary, _ = small_world
    for split in ("train", "val"):
        path = store_path(summary["extract_uri"], split)
        store = FeatureStore.open(path)
        assert store.verify(quick=True).ok
        assert store.schema.pooled_dim == 64 and store.schema.context_shape == (64, 4, 4)
        assert store.schema.dtype == "float16"
        assert len(store.videos()) == summary["store"][split]["videos"]
        video = store.videos()[0]
        window = store.read_window(video, 902, 910)
        assert window.pooled.dtype == np.float16 and window.pooled.shape[1] == 64
        assert open_split(path).schema == store.schema
    train_kf = {(r[0], int(r[1])) for r in gt_rows(out / "world" / "annotations" / "train.csv")}
    assert summary["store"]["train"]["keyframes"] == len(train_kf)  # train actors: GT boxes
    # `bankflow status`: the extract output is published at the key the real stage has.
    config = load_config(Path(summary["config"]), [])
    run = PipelineRun(config=config, work_root=Path(summary["work_root"]), runner=dry_runner,
                      with_cache=False)  # fmt: skip
    run_pipeline(run, write=False)
    assert [run.records[s]["cached"] for s in ("detect", "track", "extract")] == [True] * 3
    assert not run.records["train:linear"]["cached"]


def test_scale_world_is_written_in_bounded_memory(small_world, tmp_path: Path) -> None:
    """Writing the store holds one video at a time: 11 videos peak no higher than 3 do."""
    _, summary, peak = small_world
    few, few_peak = build_measured(tmp_path / "w", ScaleWorldConfig(scale=2 / 235, pooled_dim=64))
    many_bytes = sum(summary["store"][s]["bytes"] for s in ("train", "val"))
    few_bytes = sum(few["store"][s]["bytes"] for s in ("train", "val"))
    assert many_bytes > 3 * few_bytes
    assert peak < 1.25 * few_peak, (peak, few_peak)
    assert peak < 0.5 * many_bytes, (peak, many_bytes)
