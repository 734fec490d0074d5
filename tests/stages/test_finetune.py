"""The finetune stage on the tiny world with a very small SlowFast (2 epochs of 2 steps)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import build_backbone
from models.heads.linear import LinearHead
from models.losses import ava_loss
from stages.data import BoxTable, DataError, Dataset, DatasetConfig, LabelMap
from stages.extract.finetune import (
    CHECKPOINT_DIR,
    HEAD_FILE,
    STAGE,
    ActorClassifier,
    ClipSupply,
    FinetuneConfig,
    FinetuneStageConfig,
    Sample,
    batch_logits,
    finetune,
    flip_sample,
    gt_actor_index,
)
from stages.extract.stage import WEIGHTS_FILE, ExtractConfig
from stages.framework import STAGING_DIR, Stage, StageError, StageRef, run_stage, stage_key

# Slow path 2 frames, Fast path 4, 64x48 pixels: a step on 2 clips takes ~0.05 s.
BACKBONE_KWARGS = {"width": 8, "depths": [1, 1, 1, 1], "alpha": 2, "t_slow": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """Intra-op threads spin-wait when the cores are shared (a 2-core box running several
    test sessions): a tiny step then takes ~10x longer with 2 threads than with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny world that ``Dataset.open`` accepts."""
    root = tmp_path_factory.mktemp("finetune") / "world"
    shutil.copytree(tiny_world, root)
    try:
        Dataset.open(DatasetConfig(root=root)).labelmap  # noqa: B018
    except DataError:
        # The world's dataset.yaml may still carry generator keys the reader rejects.
        (root / "dataset.yaml").write_text("timestamp_offset: 900\n")
    return root


def make_config(world: Path, **finetune: object) -> FinetuneStageConfig:
    defaults = {"epochs": 2, "batch_keyframes": 2, "max_keyframes": 4, "lr": 1e-3}
    return FinetuneStageConfig(
        dataset=DatasetConfig(root=world),
        dataset_fingerprint="test",
        finetune=FinetuneConfig(**{**defaults, **finetune}),
        extract=ExtractConfig(
            backbone="slowfast_tiny",
            backbone_kwargs=BACKBONE_KWARGS,
            num_frames=4,
            frame_stride=2,
            short_side=48,
            device="cpu",
        ),
    )


@pytest.fixture(scope="module")
def straight(world: Path, tmp_path_factory: pytest.TempPathFactory) -> StageRef:
    """An uninterrupted 2-epoch run."""
    torch.set_num_threads(1)
    return run_stage(STAGE, make_config(world), {}, tmp_path_factory.mktemp("straight"))


def test_publishes_weights_that_extract_loads(world: Path, straight: StageRef) -> None:
    ref = straight
    out = ref.path
    backbone = build_backbone("slowfast_tiny", weights=str(out / WEIGHTS_FILE), **BACKBONE_KWARGS)
    saved = torch.load(out / WEIGHTS_FILE, weights_only=True)
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    head_state = torch.load(out / HEAD_FILE, weights_only=True)
    channels, classes = (
        head_state["classifier.weight"].shape[1],
        head_state["classifier.weight"].shape[0],
    )
    LinearHead(in_channels=channels, num_classes=classes).load_state_dict(head_state)
    assert classes == len(Dataset.open(DatasetConfig(root=world)).labelmap)
    assert not (out / CHECKPOINT_DIR).exists()  # optimizer state is not part of the output
    summary = ref.summary
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert summary["keyframes"] == 4 and summary["clip_cache"] == "memory"
    assert all(np.isfinite(e["loss"]) for e in summary["epochs"])
    assert run_stage(STAGE, make_config(world), {}, Path(ref.uri).parents[1]).cached


class Interrupted(Exception):
    pass


def _interrupt_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 0:
        raise Interrupted


def test_resume_from_epoch_checkpoint_is_bitwise_equal(
    world: Path, straight: StageRef, tmp_path: Path
) -> None:
    config = make_config(world)

    killed = Stage(
        name=STAGE.name, code_version=STAGE.code_version, config_type=STAGE.config_type,
        compute=lambda ctx: finetune(ctx, on_epoch=_interrupt_after_first_epoch),
        resumable=True,
    )  # fmt: skip
    with pytest.raises(Interrupted):
        run_stage(killed, config, {}, tmp_path / "resumed")
    staging = tmp_path / "resumed" / STAGE.name / STAGING_DIR / stage_key(STAGE, config, {})
    assert sorted(p.name for p in (staging / CHECKPOINT_DIR).iterdir()) == ["epoch_0.pt"]
    resumed = run_stage(STAGE, config, {}, tmp_path / "resumed")

    losses = [[e["loss"] for e in ref.summary["epochs"]] for ref in (straight, resumed)]
    assert losses[0] == losses[1]
    for name in (WEIGHTS_FILE, HEAD_FILE):
        a = torch.load(straight.path / name, weights_only=True)
        b = torch.load(resumed.path / name, weights_only=True)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"


def test_loss_falls_when_overfitting_a_fixed_batch(world: Path) -> None:
    config = make_config(world, dropout=0.0)
    dataset = Dataset.open(config.dataset)
    index = gt_actor_index(dataset.gt("train"), dataset.labelmap)
    supply = ClipSupply(dataset, index, np.arange(2), config.extract, config.finetune)
    batch = next(supply.epoch(0))
    torch.manual_seed(0)
    backbone = build_backbone("slowfast_tiny", **BACKBONE_KWARGS)
    model = ActorClassifier(backbone, backbone.out_channels, len(dataset.labelmap), 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mean = torch.tensor(config.extract.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(config.extract.std).view(1, 3, 1, 1, 1)
    exclusive = [dataset.labelmap.index_of(int(i)) for i in dataset.exclusive_ids]
    losses = []
    for _ in range(12):
        logits, targets = batch_logits(model, batch, mean, std, torch.device("cpu"))
        loss = ava_loss(logits, targets, exclusive=exclusive)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def _labelmap() -> LabelMap:
    return LabelMap(
        ids=np.array([3, 1, 7]), names=("walk", "stand", "talk"),
        label_types=("PERSON_MOVEMENT", "PERSON_MOVEMENT", "PERSON_INTERACTION"),
    )  # fmt: skip


def test_gt_actor_index_merges_rows_of_one_box() -> None:
    box_a, box_b = [0.1, 0.1, 0.4, 0.9], [0.5, 0.2, 0.8, 0.95]
    gt = BoxTable(
        video=np.array(["v2", "v1", "v1", "v1"], dtype=object),
        timestamp=np.array([903, 902, 902, 902], dtype=np.int64),
        boxes=np.array([box_a, box_a, box_b, box_a], dtype=np.float64),
        action=np.array([1, 3, 1, 7], dtype=np.int64),
        person=np.array([0, 0, 1, 0], dtype=np.int64),
        score=np.ones(4), line=np.arange(1, 5), source="gt.csv",
    )  # fmt: skip
    index = gt_actor_index(gt, _labelmap())
    assert index.video.tolist() == ["v1", "v2"]
    assert index.timestamp.tolist() == [902, 903]
    assert index.actor_offset.tolist() == [0, 2, 3]
    np.testing.assert_allclose(index.boxes, np.array([box_a, box_b, box_a], np.float32))
    # dense order is the label map's id order: 3 -> 0, 1 -> 1, 7 -> 2
    assert index.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_each_epoch_visits_every_keyframe_once(world: Path, mode: str) -> None:
    config = make_config(world, clip_cache=mode, max_keyframes=5, batch_keyframes=2)
    dataset = Dataset.open(config.dataset)
    index = gt_actor_index(dataset.gt("train"), dataset.labelmap)
    rows = np.arange(len(index))[:: max(len(index) // 5, 1)][:5]
    supply = ClipSupply(dataset, index, rows, config.extract, config.finetune)
    assert supply.mode == mode
    seen = []
    for epoch in (0, 1):
        batches = list(supply.epoch(epoch))
        assert len(batches) == len(supply) == 3
        samples = [s for b in batches for s in b]
        assert all(s.clip.shape == (4, 48, 64, 3) and s.clip.dtype == np.uint8 for s in samples)
        seen.append(sorted(int(s.boxes.sum() * 1e4) for s in samples))
        assert sum(len(s.boxes) for s in samples) == int(
            sum(index.actor_offset[r + 1] - index.actor_offset[r] for r in rows)
        )
    assert seen[0] == seen[1]


def test_unknown_split_is_a_clear_error(world: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="split 'nope'"):
        run_stage(STAGE, make_config(world, split="nope"), {}, tmp_path)


def test_flip_mirrors_frames_and_boxes() -> None:
    clip = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    sample = Sample(clip, np.array([[0.1, 0.2, 0.3, 0.9]], np.float32), np.ones((1, 2)))
    flipped = flip_sample(sample)
    np.testing.assert_array_equal(flipped.clip[:, :, 0], clip[:, :, 3])
    np.testing.assert_allclose(flipped.boxes, [[0.7, 0.2, 0.9, 0.9]], atol=1e-6)
    twice = flip_sample(flipped)
    np.testing.assert_array_equal(twice.clip, clip)
    np.testing.assert_allclose(twice.boxes, sample.boxes, atol=1e-6)


KILL_WORKER = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from stages.extract.finetune import STAGE
from stages.framework import run_stage
from tests.stages.test_finetune import make_config
run_stage(STAGE, make_config(Path(sys.argv[1]), epochs=3), {}, Path(sys.argv[2]))
"""


@pytest.mark.slow
def test_sigkill_during_finetune_resumes_from_last_epoch_bitwise(
    world: Path, tmp_path: Path
) -> None:
    """A real SIGKILL (issue 20, fault injection) once epoch 0's checkpoint exists: the
    rerun starts at epoch 1 and ends bitwise equal to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = make_config(world, epochs=3)
    staging = tmp_path / "killed" / STAGE.name / STAGING_DIR / stage_key(STAGE, config, {})
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_WORKER, str(world), str(tmp_path / "killed")], cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not (staging / CHECKPOINT_DIR / "epoch_0.pt").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in (staging / CHECKPOINT_DIR).glob("epoch_*.pt"))
    assert "epoch_2.pt" not in done, "killed too late: the run had finished"
    resumed = run_stage(STAGE, config, {}, tmp_path / "killed")
    straight = run_stage(STAGE, config, {}, tmp_path / "straight")
    assert [e["epoch"] for e in resumed.summary["epochs"]] == [0, 1, 2]
    losses = [[e["loss"] for e in ref.summary["epochs"]] for ref in (straight, resumed)]
    assert losses[0] == losses[1]
    for name in (WEIGHTS_FILE, HEAD_FILE):
        a, b = (torch.load(p / name, weights_only=True) for p in (straight.path, resumed.path))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"


@pytest.fixture(scope="module")
def exact(world: Path, tmp_path_factory: pytest.TempPathFactory) -> StageRef:
    """One process, no dropout, frozen BN: what data-parallel ranks must reproduce."""
    torch.set_num_threads(1)
    config = make_config(world, dropout=0.0, freeze_bn=True, max_keyframes=5)
    return run_stage(STAGE, config, {}, tmp_path_factory.mktemp("exact"))


def _max_difference(a: Path, b: Path) -> float:
    diff = 0.0
    for name in (WEIGHTS_FILE, HEAD_FILE):
        x, y = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        assert x.keys() == y.keys()
        diff = max(diff, *(float((x[k].double() - y[k].double()).abs().max()) for k in x))
    return diff


@pytest.mark.slow  # two spawned processes import torch and build the backbone
def test_two_processes_finetune_like_one(world: Path, exact: StageRef, tmp_path: Path) -> None:
    # 5 keyframes in batches of 2: the last batch leaves rank 0 without a keyframe.
    config = make_config(world, dropout=0.0, freeze_bn=True, max_keyframes=5, devices=2)
    assert stage_key(STAGE, config, {}) == exact.key
    two = run_stage(STAGE, config, {}, tmp_path)
    diff = _max_difference(exact.path, two.path)
    print(f"finetune 2 processes vs 1: max |w diff| = {diff:.3g}")
    assert diff < 1e-5
    for a, b in zip(exact.summary["epochs"], two.summary["epochs"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["train_top1"] == b["train_top1"]


def test_bf16_finetune_trains_close_to_fp32(world: Path, exact: StageRef, tmp_path: Path) -> None:
    config = make_config(world, dropout=0.0, freeze_bn=True, max_keyframes=5, precision="bf16")
    assert stage_key(STAGE, config, {}) != exact.key
    bf16 = run_stage(STAGE, config, {}, tmp_path)
    got = [e["loss"] for e in bf16.summary["epochs"]]
    want = [e["loss"] for e in exact.summary["epochs"]]
    print(f"finetune bf16 losses {got} vs fp32 {want}")
    assert got[-1] < got[0]
    np.testing.assert_allclose(got, want, rtol=0.02)  # bf16: 8 mantissa bits
    assert _max_difference(exact.path, bf16.path) > 0
