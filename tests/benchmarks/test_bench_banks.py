"""Bank dump throughput, and stage-2 step time with the window read from disk vs preloaded.

A synthetic feature store (6 videos × 60 keyframes × 3 actors, C=256 pooled features,
4×4 context) and a stage-1 linear head are dumped into an LFB bank by the real dump stage
(keyframes/s). Then the lfb head (FBO-NL, 2 layers of 128) trains through
:func:`stages.train.loop.train` on a 60 s window (LFB's: 30 s each side, ~180 entries),
the window either read from the bank on disk for every batch (only its rows) or gathered
from the bank preloaded into RAM. Figure of merit: ``preloaded step / disk step``
(1.0: reading windows from disk costs nothing).

Run: ``.venv/bin/python -m pytest tests/benchmarks/test_bench_banks.py -m bench -s``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore, StoreSchema, VideoFeatures
from featurestore.banks import BankStore
from models.heads import build_head
from stages.data import LabelMap
from stages.extract.stage import store_path
from stages.framework import COMPLETE_MARKER, StageRef, run_stage
from stages.train import dump as dump_stage
from stages.train.bank import offline_attach
from stages.train.data import KeyframeSource, build_index
from stages.train.loop import OptimConfig, TrainData, train
from stages.train.stage import HEAD_FILE
from stages.train.window import BankWindowReader, WindowConfig

N_VIDEOS, N_KEYFRAMES, N_ACTORS, C, K = 6, 60, 3, 256, 20
BATCH, EPOCHS = 16, 3
WINDOW = WindowConfig(before=30, after=30)


def fake_output(path: Path, key: str) -> StageRef:
    """A directory that reads as a published stage output (for the stage's input check)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / COMPLETE_MARKER).write_text("{}")
    return StageRef(stage="bench", key=key, uri=str(path), digest="")


def make_store(path: Path) -> FeatureStore:
    schema = StoreSchema(
        backbone="bench", weights_sha256=None, detector_key=None,
        clip={"frames": 32, "stride": 2, "fps": 30.0, "short_side": 256},
        context_shape=(C, 4, 4), pooled_dim=C,
    )  # fmt: skip
    ids = [f"v{i:02d}" for i in range(N_VIDEOS)]
    store = FeatureStore.create(path, schema, provenance={"bench": True}, expected_videos=ids)
    rng = np.random.default_rng(0)
    a = N_KEYFRAMES * N_ACTORS
    for video_id in ids:
        xy = rng.uniform(0, 0.5, (a, 2))
        store.write_video(video_id, VideoFeatures(
            timestamps=np.arange(902, 902 + N_KEYFRAMES, dtype=np.int32),
            context=np.maximum(rng.standard_normal((N_KEYFRAMES, C, 4, 4)), 0).astype(np.float16),
            actor_offset=np.arange(0, a + 1, N_ACTORS, dtype=np.int64),
            boxes=np.concatenate([xy, xy + 0.3], axis=1).astype(np.float32),
            scores=np.ones(a, np.float32), track=np.tile(np.arange(N_ACTORS, dtype=np.int32), N_KEYFRAMES),
            pooled=np.maximum(rng.standard_normal((a, C)), 0).astype(np.float16),
        ))  # fmt: skip
    store.finalize()
    return FeatureStore.open(path, mode="r")


def step_seconds(store: FeatureStore, bank: BankStore, *, preload_bank: bool, tmp: Path) -> float:
    """Median seconds per training step over the epochs after the first (warm-up)."""
    labelmap = LabelMap(
        ids=np.arange(1, K + 1), names=[f"c{i}" for i in range(K)], label_types=[None] * K
    )
    index = build_index(store, None, labelmap)
    index.labels = (np.random.default_rng(1).random(index.labels.shape) < 0.2).astype(np.float32)
    torch.manual_seed(0)
    model = build_head("lfb", in_channels=C, num_classes=K, bank_dim=C, hidden_dim=128)
    source = KeyframeSource(store, index, preload=True)
    data = TrainData(train=source, val=None, exclusive=[0, 1, 2], use_roi=False, use_roi_t=False)
    data.attach = offline_attach({id(source): BankWindowReader(bank, WINDOW,
                                                               preload=preload_bank)})  # fmt: skip
    cfg = OptimConfig(epochs=EPOCHS, batch_keyframes=BATCH)
    history = train(model, data, cfg, tmp / f"ckpt_{preload_bank}")
    steps = -(-len(index) // BATCH)
    return statistics.median(r["seconds"] for r in history[1:]) / steps


@pytest.mark.bench
def test_bench_dump_and_window_reads(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    extract = fake_output(tmp_path / "extract", "benchextract")
    store = make_store(store_path(extract.uri, "train"))
    stage1 = fake_output(tmp_path / "stage1", "benchstage1")
    head = build_head("linear", in_channels=C, num_classes=K)
    torch.save({"head": "linear", "kwargs": {}, "state": head.state_dict(), "in_channels": C,
                "classes": list(range(1, K + 1))}, stage1.path / HEAD_FILE)  # fmt: skip
    config = dump_stage.DumpStageConfig(
        name="bench", bank=dump_stage.BankDumpConfig(**{"from": "linear", "kind": "lfb"})
    )
    t0 = time.perf_counter()
    ref = run_stage(dump_stage.STAGE, config, {"train": stage1, "extract": extract}, tmp_path)
    seconds = time.perf_counter() - t0
    n_kf = N_VIDEOS * N_KEYFRAMES
    split = ref.summary["splits"]["train"]
    print(f"\ndump (lfb, linear head, C={C}): {n_kf} keyframes in {seconds:.2f} s "
          f"= {n_kf / seconds:.0f} keyframes/s for the whole stage, "
          f"{split['keyframes_per_s']:.0f} keyframes/s computing; bank {split['bytes'] / 1e6:.1f} MB")  # fmt: skip
    bank = BankStore.open(dump_stage.bank_path(ref.path, "train"))
    assert split["computed"] == N_VIDEOS and bank.verify() == []

    disk = step_seconds(store, bank, preload_bank=False, tmp=tmp_path)
    ram = step_seconds(store, bank, preload_bank=True, tmp=tmp_path)
    window = BankWindowReader(bank, WINDOW).read([("v00", 902 + N_KEYFRAMES // 2)])
    print(
        f"lfb step ({BATCH} keyframes, window L={window['mask'].shape[1]}): "
        f"disk {1e3 * disk:.1f} ms, preloaded {1e3 * ram:.1f} ms, "
        f"preloaded/disk = {ram / disk:.2f}"
    )
    assert disk > 0 and ram > 0
