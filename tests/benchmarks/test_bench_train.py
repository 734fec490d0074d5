"""Is data loading the bottleneck of head training? Step time, features in RAM vs the store.

A synthetic store (AVA-like per-keyframe shapes, scaled down: C=256, 8x8 context, 7x7 RoI
maps, 3 actors per keyframe) is trained through :func:`stages.train.loop.train` three
ways: preloaded into RAM, read from the store in the loop (``prefetch=0``), and read from
the store by the background prefetch thread (``prefetch=2``, the default). The figure of
merit is ``RAM step time / store step time`` (1.0: loading costs nothing; aim >= 0.8).
Prefetch can only hide a read that is shorter than the step it overlaps.

Run: ``.venv/bin/python -m pytest tests/benchmarks/test_bench_train.py -m bench -s``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore, StoreSchema, VideoFeatures
from models.heads import build_head, head_reads
from stages.data import LabelMap
from stages.train.data import KeyframeSource, build_index
from stages.train.loop import OptimConfig, TrainData, train

N_VIDEOS, N_KEYFRAMES, N_ACTORS, C, GRID, K = 6, 40, 3, 256, 8, 20
BATCH, EPOCHS = 16, 3

# The cheapest head (the worst case for the loader) and a relation head with real compute.
HEADS = {
    "linear": {},
    "acrn": {"dim": 128},  # MMAction2's ACRN: 2 x 256 -> 128, then 3x3
}


def make_store(path: Path) -> FeatureStore:
    schema = StoreSchema(
        backbone="bench", weights_sha256=None, detector_key=None,
        clip={"frames": 32, "stride": 2, "fps": 30.0, "short_side": 256},
        context_shape=(C, GRID, GRID), pooled_dim=C, roi_shape=(C, 7, 7),
    )  # fmt: skip
    ids = [f"v{i:02d}" for i in range(N_VIDEOS)]
    store = FeatureStore.create(path, schema, provenance={"bench": True}, expected_videos=ids)
    rng = np.random.default_rng(0)
    a = N_KEYFRAMES * N_ACTORS
    for video_id in ids:
        relu = lambda *shape: np.maximum(rng.standard_normal(shape), 0).astype(np.float16)  # noqa: E731
        xy = rng.uniform(0, 0.5, (a, 2))
        store.write_video(
            video_id,
            VideoFeatures(
                timestamps=np.arange(902, 902 + N_KEYFRAMES, dtype=np.int32),
                context=relu(N_KEYFRAMES, C, GRID, GRID),
                actor_offset=np.arange(0, a + 1, N_ACTORS, dtype=np.int64),
                boxes=np.concatenate([xy, xy + 0.3], axis=1).astype(np.float32),
                scores=np.ones(a, np.float32),
                track=np.full(a, -1, np.int32),
                pooled=relu(a, C),
                roi=relu(a, C, 7, 7),
            ),
        )
    store.finalize()
    return FeatureStore.open(path, mode="r")


def step_seconds(store: FeatureStore, head: str, *, preload: bool, prefetch: int, tmp: Path):
    """Median seconds per training step over the epochs after the first (warm-up)."""
    labelmap = LabelMap(
        ids=np.arange(1, K + 1), names=[f"c{i}" for i in range(K)], label_types=[None] * K
    )
    index = build_index(store, None, labelmap)
    index.labels = (np.random.default_rng(1).random(index.labels.shape) < 0.2).astype(np.float32)
    torch.manual_seed(0)
    model = build_head(head, in_channels=C, num_classes=K, **HEADS[head])
    arrays = head_reads(model)  # what the train stage reads for this head
    data = TrainData(
        train=KeyframeSource(store, index, preload=preload, arrays=arrays), val=None,
        exclusive=[0, 1, 2], use_roi="roi" in arrays, use_roi_t=False,
    )  # fmt: skip
    cfg = OptimConfig(epochs=EPOCHS, batch_keyframes=BATCH)
    history = train(model, data, cfg, tmp / f"{head}-{preload}-{prefetch}", prefetch=prefetch)
    steps = -(-len(index) // BATCH)
    return float(np.median([r["seconds"] for r in history[1:]])) / steps


@pytest.mark.bench
def test_bench_train_loading(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    store = make_store(tmp_path / "bench.zarr")
    print(
        f"\nstore: {N_VIDEOS} videos x {N_KEYFRAMES} keyframes x {N_ACTORS} actors, C={C}, "
        f"context {GRID}x{GRID}, roi 7x7, built in {time.perf_counter() - t0:.1f} s; "
        f"batch {BATCH} keyframes, {EPOCHS} epochs (first one dropped)"
    )
    print(
        f"{'head':<8} {'RAM ms':>8} {'store ms':>9} {'ratio':>6} {'prefetch ms':>12} {'ratio':>6}"
    )
    ratios = {}
    for head in HEADS:
        ram = step_seconds(store, head, preload=True, prefetch=0, tmp=tmp_path)
        plain = step_seconds(store, head, preload=False, prefetch=0, tmp=tmp_path)
        ahead = step_seconds(store, head, preload=False, prefetch=2, tmp=tmp_path)
        ratios[head] = ram / ahead
        print(
            f"{head:<8} {ram * 1e3:>8.2f} {plain * 1e3:>9.2f} {ram / plain:>6.2f} "
            f"{ahead * 1e3:>12.2f} {ram / ahead:>6.2f}"
        )
    # The figures above are the result. Measured here (2 shared cores): a store read of a
    # 16-keyframe batch costs ~40 ms (~0.8 ms of zarr overhead per array slice, 3 arrays
    # per keyframe), so prefetch hides it behind a ~100 ms ACRN step (ratio ~0.8) but not
    # behind the ~8 ms linear step (ratio ~0.15: preload such stores). A loose bound that
    # catches a broken prefetch path without failing on a busy machine:
    assert ratios["acrn"] > 0.5, ratios


# Issue 22, item 4: the relation heads on AVA-sized context maps (SlowFast-R50: 2304
# channels, 16×22), 1-4 actors per keyframe.
AVA_C, AVA_GRID, AVA_VIDEOS, AVA_KEYFRAMES, AVA_BATCH, AVA_EPOCHS = 2304, (16, 22), 4, 32, 16, 3
# Narrow heads: the shorter the step, the less of a read it can hide (the hard case).
AVA_HEADS = {
    "acrn": {"dim": 16},
    "acar": {"reduce_dim": 32, "dim": 16},
}


def make_ava_store(path: Path) -> FeatureStore:
    schema = StoreSchema(
        backbone="bench", weights_sha256=None, detector_key=None,
        clip={"frames": 32, "stride": 2, "fps": 30.0, "short_side": 256},
        context_shape=(AVA_C, *AVA_GRID), pooled_dim=AVA_C,
    )  # fmt: skip
    ids = [f"v{i:02d}" for i in range(AVA_VIDEOS)]
    store = FeatureStore.create(path, schema, provenance={"bench": True}, expected_videos=ids)
    rng = np.random.default_rng(0)
    for video_id in ids:
        relu = lambda *shape: np.maximum(rng.standard_normal(shape, np.float32), 0).astype(  # noqa: E731
            np.float16
        )
        counts = rng.integers(1, 5, AVA_KEYFRAMES)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        a = int(offsets[-1])
        xy = rng.uniform(0, 0.5, (a, 2))
        store.write_video(
            video_id,
            VideoFeatures(
                timestamps=np.arange(902, 902 + AVA_KEYFRAMES, dtype=np.int32),
                context=relu(AVA_KEYFRAMES, AVA_C, *AVA_GRID),
                actor_offset=offsets,
                boxes=np.concatenate([xy, xy + 0.3], axis=1).astype(np.float32),
                scores=np.ones(a, np.float32),
                track=np.full(a, -1, np.int32),
                pooled=relu(a, AVA_C),
            ),
        )
    store.finalize()
    return FeatureStore.open(path, mode="r")


def ava_step_seconds(store: FeatureStore, head: str, *, preload: bool, prefetch: int, tmp: Path):
    """Median seconds per step over the epochs after the first, on the AVA-sized store."""
    labelmap = LabelMap(
        ids=np.arange(1, K + 1), names=[f"c{i}" for i in range(K)], label_types=[None] * K
    )
    index = build_index(store, None, labelmap)
    index.labels = (np.random.default_rng(1).random(index.labels.shape) < 0.2).astype(np.float32)
    torch.manual_seed(0)
    model = build_head(head, in_channels=AVA_C, num_classes=K, **AVA_HEADS[head])
    arrays = head_reads(model)
    data = TrainData(
        train=KeyframeSource(store, index, preload=preload, arrays=arrays), val=None,
        exclusive=[0, 1, 2], use_roi=False, use_roi_t=False,
    )  # fmt: skip
    cfg = OptimConfig(epochs=AVA_EPOCHS, batch_keyframes=AVA_BATCH)
    run = tmp / f"ava-{head}-{preload}-{prefetch}"
    history = train(model, data, cfg, run, prefetch=prefetch)
    steps = -(-len(index) // AVA_BATCH)
    return float(np.median([r["seconds"] for r in history[1:]])) / steps


@pytest.mark.bench
def test_bench_train_loading_ava_maps(tmp_path: Path) -> None:
    """Store-fed ÷ RAM-fed step of ACRN and ACAR on AVA-sized context maps (target >= 0.9):
    the store is read by the prefetch thread while the head computes. Best of two
    interleaved repeats of each setting (the machine is shared)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    store = make_ava_store(tmp_path / "ava.zarr")
    print(
        f"\nAVA-sized store: {AVA_VIDEOS} videos x {AVA_KEYFRAMES} keyframes x 1-4 actors, "
        f"context {AVA_C}x{AVA_GRID[0]}x{AVA_GRID[1]} f16, built in "
        f"{time.perf_counter() - t0:.1f} s; batch {AVA_BATCH} keyframes, {AVA_EPOCHS} epochs "
        "(first one dropped)"
    )
    print(
        f"{'head':<8} {'RAM ms':>8} {'store ms':>9} {'ratio':>6} {'prefetch ms':>12} {'ratio':>6}"
    )
    ratios = {}
    for head in AVA_HEADS:
        best = {"ram": np.inf, "plain": np.inf, "ahead": np.inf}
        for rep in range(2):
            for key, preload, prefetch in (("ram", True, 0), ("plain", False, 0),
                                           ("ahead", False, 2)):  # fmt: skip
                seconds = ava_step_seconds(
                    store, head, preload=preload, prefetch=prefetch, tmp=tmp_path / str(rep)
                )
                best[key] = min(best[key], seconds)
        ram, plain, ahead = best["ram"], best["plain"], best["ahead"]
        ratios[head] = ram / ahead
        print(
            f"{head:<8} {ram * 1e3:>8.1f} {plain * 1e3:>9.1f} {ram / plain:>6.2f} "
            f"{ahead * 1e3:>12.1f} {ram / ahead:>6.2f}  (target >= 0.9)"
        )
    assert all(r > 0 for r in ratios.values()), ratios
