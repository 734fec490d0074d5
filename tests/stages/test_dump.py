"""The dump stage and the bank store on the tiny world (detect → track → extract → linear once).

Bank rows align with the feature store's actors and equal what the stage-1 head computes
for them; a killed dump resumes to a bitwise equal bank; a dump over features where one
video changed recomputes only that video and copies the others from the earlier dump.

Also runnable as ``python -m tests.stages.test_dump spec.json``: the worker process of the
kill-and-resume test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from featurestore import StoreError
from featurestore.banks import BankStore, feature_video_digest
from models.heads.bank_features import bank_rows
from stages.config import load_config
from stages.extract.stage import store_path
from stages.framework import STAGING_DIR, StageRef, read_output, run_stage, stage_key
from stages.pipeline import PipelineRun, prepare_dataset, run_pipeline
from stages.train import dump as dump_stage
from stages.train.data import collate, open_split
from stages.train.run import load_trained_head

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"


@dataclass(frozen=True)
class Stage1:
    """The tiny world's features and stage-1 heads, shared by the bank test modules."""

    config: Any  # PipelineConfig
    work: Path
    extract: StageRef
    linear: StageRef
    acar: StageRef
    dataset: Any  # DatasetConfig (root resolved)
    fingerprint: str

    def dump_config(self, name: str = "lfb", **bank: Any) -> dump_stage.DumpStageConfig:
        bank.setdefault("from", "linear")
        return dump_stage.DumpStageConfig(name=name, bank=dump_stage.BankDumpConfig(**bank))

    def inputs(self, run: str = "linear") -> dict[str, StageRef]:
        return {"train": getattr(self, run), "extract": self.extract}

    def store(self, split: str):
        return open_split(store_path(self.extract.uri, split))


_STAGE1: dict[str, Stage1] = {}


def stage1_outputs(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Stage1:
    """Built once per session (the bank test modules call this from their fixtures)."""
    if str(tiny_world) not in _STAGE1:
        cfg = load_config(
            TINY_YAML,
            [
                f"dataset.root={tiny_world}", "world=null", "extract.store_roi=true",
                "train.runs.linear.optim.epochs=3",
                "train.runs.acar={head: acar, head_kwargs: {reduce_dim: 16, dim: 8}, "
                "optim: {epochs: 2, batch_keyframes: 8}}",
            ],
        )  # fmt: skip
        work = tmp_path_factory.mktemp("banks_stage1")
        run = PipelineRun(config=cfg, work_root=work, until="train")
        run_pipeline(run, write=False)
        dataset, fingerprint = prepare_dataset(cfg)
        _STAGE1[str(tiny_world)] = Stage1(
            config=cfg, work=work, extract=run.refs["extract"],
            linear=run.refs["train:linear"], acar=run.refs["train:acar"],
            dataset=dataset, fingerprint=fingerprint,
        )  # fmt: skip
    return _STAGE1[str(tiny_world)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stage1(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Stage1:
    return stage1_outputs(tiny_world, tmp_path_factory)


def bank_arrays_equal(a: BankStore, b: BankStore) -> None:
    assert a.videos() == b.videos()
    for video_id in a.videos():
        va, vb = a.read_video(video_id), b.read_video(video_id)
        assert va.keys() == vb.keys()
        for name in va:
            assert va[name].dtype == vb[name].dtype, (video_id, name)
            assert va[name].tobytes() == vb[name].tobytes(), (video_id, name)
        assert a.video_key(video_id) == b.video_key(video_id)


def test_lfb_rows_align_with_store_actors(stage1: Stage1, tmp_path: Path) -> None:
    ref = run_stage(dump_stage.STAGE, stage1.dump_config(), stage1.inputs(), tmp_path)
    assert set(ref.summary["splits"]) == {"train", "val"}  # every split of the store
    head, _ = load_trained_head(stage1.linear.path)
    for split in ("train", "val"):
        store = stage1.store(split)
        bank = BankStore.open(dump_stage.bank_path(ref.path, split))
        assert bank.kind == "lfb" and bank.verify() == []
        assert bank.videos() == store.videos()
        assert bank.arrays == {"features": (store.schema.pooled_dim,)}
        for video_id in store.videos():
            ts, off = store.index(video_id)
            bts, boff, btrack = bank.index(video_id)
            np.testing.assert_array_equal(bts, ts)
            np.testing.assert_array_equal(boff, off)
            np.testing.assert_array_equal(btrack, store.array(video_id, "track")[:])
            rows = bank.read_video(video_id)["features"]
            assert rows.dtype == np.float16
            # Row a of the bank is what the head gives actor row a of the store.
            k = len(ts) // 2
            kf = store.read_keyframes([(video_id, int(ts[k]))])
            expected = bank_rows(head, "lfb", collate(kf, use_roi=True, use_roi_t=False))
            np.testing.assert_array_equal(
                rows[off[k] : off[k + 1]], expected["features"].numpy().astype(np.float16)
            )
    summary = ref.summary["splits"]["val"]
    assert summary["computed"] == summary["videos"] and summary["reused"] == 0
    assert summary["keyframes_per_s"] > 0


def test_acfb_maps_from_acar(stage1: Stage1, tmp_path: Path) -> None:
    ref = run_stage(
        dump_stage.STAGE, stage1.dump_config("acfb", kind="acfb", splits=["val"], **{"from": "acar"}),
        stage1.inputs("acar"), tmp_path,
    )  # fmt: skip
    bank = BankStore.open(dump_stage.bank_path(ref.path, "val"))
    assert bank.kind == "acfb" and list(bank.arrays) == ["maps"]
    assert len(bank.arrays["maps"]) == 3  # d, H, W
    assert not dump_stage.bank_path(ref.path, "train").exists()
    assert bank.verify() == []


def test_kind_that_does_not_fit_the_head_is_refused(stage1: Stage1, tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"acfb.*LinearHead"):
        run_stage(dump_stage.STAGE, stage1.dump_config("bad", kind="acfb"), stage1.inputs(),
                  tmp_path)  # fmt: skip


def test_incomplete_bank_is_refused(stage1: Stage1, tmp_path: Path) -> None:
    store = stage1.store("val")
    video_id = store.videos()[0]
    ts, off = store.index(video_id)
    bank = BankStore.create(tmp_path / "b.zarr", kind="lfb", arrays={"features": (4,)},
                            provenance={}, expected_videos=store.videos())  # fmt: skip
    bank.write_video(video_id, timestamps=ts, actor_offset=off,
                     track=np.zeros(int(off[-1]), np.int32),
                     arrays={"features": np.ones((int(off[-1]), 4), np.float32)},
                     video_key="k")  # fmt: skip
    with pytest.raises(StoreError, match="incomplete"):
        BankStore.open(tmp_path / "b.zarr")
    with pytest.raises(StoreError, match="cannot finalize"):
        bank.finalize()
    with pytest.raises(StoreError, match=r"expected shape \(\d+, 4\)"):
        bank.write_video(store.videos()[1], timestamps=ts, actor_offset=off,
                         track=np.zeros(int(off[-1]), np.int32),
                         arrays={"features": np.ones((1, 4), np.float32)}, video_key="k")  # fmt: skip
    # A chunk deleted behind the bank's back is found by verify.
    chunk = next((tmp_path / "b.zarr" / "videos" / video_id / "features" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    problems = BankStore.open(tmp_path / "b.zarr", allow_incomplete=True).verify()
    assert any("misses 1 chunks" in p for p in problems), problems


def test_changed_video_alone_is_redumped(stage1: Stage1, tmp_path: Path) -> None:
    first = run_stage(dump_stage.STAGE, stage1.dump_config(), stage1.inputs(), tmp_path)
    assert first.summary["reused"] == 0

    # New features: the same stores, one val video's pooled features changed.
    changed_root = tmp_path / "changed_extract"
    shutil.copytree(stage1.extract.path, changed_root)
    val_store = open_split(store_path(changed_root, "val"))
    victim = val_store.videos()[0]
    before = feature_video_digest(val_store.zarr_store, victim)
    others = {v: feature_video_digest(val_store.zarr_store, v) for v in val_store.videos()[1:]}
    pooled = zarr.open_array(store_path(changed_root, "val") / "videos" / victim / "pooled",
                             mode="r+")  # fmt: skip
    pooled[0] = np.asarray(pooled[0]) + 1.0
    val_store = open_split(store_path(changed_root, "val"))
    assert feature_video_digest(val_store.zarr_store, victim) != before
    assert {v: feature_video_digest(val_store.zarr_store, v) for v in others} == others
    changed = stage1.extract.model_copy(update={"key": "changed0000000000",
                                                "uri": str(changed_root)})  # fmt: skip

    second = run_stage(dump_stage.STAGE, stage1.dump_config(),
                       {"train": stage1.linear, "extract": changed}, tmp_path)  # fmt: skip
    assert second.key != first.key and not second.cached
    n_videos = first.summary["splits"]["val"]["videos"] + first.summary["splits"]["train"]["videos"]
    assert second.summary["computed"] == 1 and second.summary["reused"] == n_videos - 1
    assert second.summary["splits"]["val"]["computed"] == 1
    a = BankStore.open(dump_stage.bank_path(first.path, "val"))
    b = BankStore.open(dump_stage.bank_path(second.path, "val"))
    assert b.verify() == []
    for video_id in a.videos():
        fa = a.read_video(video_id)["features"]
        fb = b.read_video(video_id)["features"]
        if video_id == victim:
            assert a.video_key(video_id) != b.video_key(video_id)
            assert not np.array_equal(fa[0], fb[0])  # the changed actor's row
            np.testing.assert_array_equal(fa[1:], fb[1:])  # linear head: rows independent
        else:
            assert a.video_key(video_id) == b.video_key(video_id)
            assert fa.tobytes() == fb.tobytes()


@pytest.mark.slow
def test_killed_dump_resumes_to_identical_bank(stage1: Stage1, tmp_path: Path) -> None:
    config = stage1.dump_config("resume", splits=["val"], batch_keyframes=4)
    inputs = stage1.inputs()
    whole = run_stage(dump_stage.STAGE, config, inputs, tmp_path / "whole")

    killed_root = tmp_path / "killed"
    key = stage_key(dump_stage.STAGE, config, inputs)
    staging_bank = dump_stage.bank_path(killed_root / "dump" / STAGING_DIR / key, "val")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "config": config.model_dump(mode="json", by_alias=True),
        "inputs": {k: v.model_dump(mode="json") for k, v in inputs.items()},
        "work_root": str(killed_root), "pause_before_video": 1, "pause": 60,
    }))  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-m", "tests.stages.test_dump", str(spec)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (staging_bank.exists()
                   and BankStore.open(staging_bank, allow_incomplete=True).videos()):  # fmt: skip
            if worker.poll() is not None:
                pytest.fail(f"worker ended early: {worker.stdout.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no dumped video within 120 s"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stdout.close()
    assert worker.returncode == -signal.SIGKILL
    assert read_output(killed_root, "dump", key) is None
    partial = BankStore.open(staging_bank, allow_incomplete=True)
    assert not partial.complete and len(partial.videos()) == 1

    resumed = run_stage(dump_stage.STAGE, config, inputs, killed_root)
    assert resumed.summary["resumed"] == 1
    assert resumed.summary["computed"] == whole.summary["computed"] - 1
    bank_arrays_equal(BankStore.open(dump_stage.bank_path(whole.path, "val")),
                      BankStore.open(dump_stage.bank_path(resumed.path, "val")))  # fmt: skip


def _worker(spec_path: str) -> None:
    """Run one dump, sleeping before the ``pause_before_video``-th computed video."""
    torch.set_num_threads(1)  # as in the test process: the same float sums
    spec = json.loads(Path(spec_path).read_text())
    real = dump_stage.dump_video
    calls = {"n": 0}

    def pausing(*args: Any, **kwargs: Any) -> Any:
        if calls["n"] == spec["pause_before_video"]:
            time.sleep(float(spec["pause"]))
        calls["n"] += 1
        return real(*args, **kwargs)

    dump_stage.dump_video = pausing
    config = dump_stage.DumpStageConfig.model_validate(spec["config"])
    inputs = {k: StageRef.model_validate(v) for k, v in spec["inputs"].items()}
    run_stage(dump_stage.STAGE, config, inputs, Path(spec["work_root"]))


if __name__ == "__main__":
    _worker(sys.argv[1])
