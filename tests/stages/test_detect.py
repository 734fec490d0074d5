"""The detect stage: imported proposals (CSV, MMAction2 pickle) and the Faster R-CNN path."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.detector import (
    DetectorCheckpointError,
    build_person_detector,
    detect_persons,
    detector_checkpoint,
)
from stages.data import DataError, Dataset, DatasetConfig
from stages.detect.stage import (
    DETECTOR_FILE,
    DETECTOR_REPORT,
    PERSONS_FILE,
    STAGE,
    DetectConfig,
    DetectStageConfig,
    detection_keyframes,
    read_persons,
)
from stages.detect.training import (
    DetectorFinetuneConfig,
    TrainingSet,
    decode_keyframes,
    finetune_detector,
    to_tensor,
)
from stages.framework import StageError, StageRef, run_stage
from stages.framework.fingerprint import dataset_fingerprint

SMALL_ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(autouse=True)
def one_thread():
    """Intra-op threads spin-wait on shared cores: one thread is much faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stage_config(world: Path, **detect: Any) -> DetectStageConfig:
    dataset = DatasetConfig(root=world.resolve())
    return DetectStageConfig(
        dataset=dataset,
        dataset_fingerprint=dataset_fingerprint(dataset),
        detect=DetectConfig.model_validate(detect),
    )


def run_detect(world: Path, work_root: Path, **detect: Any) -> StageRef:
    return run_stage(STAGE, stage_config(world, **detect), {}, work_root)


def check_persons(ref: StageRef, min_score: float) -> None:
    table = pq.read_table(ref.path / PERSONS_FILE)
    assert table.column_names == ["split", "video", "timestamp", "x1", "y1", "x2", "y2", "score"]
    boxes = np.stack([table[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1)
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all(table["score"].to_numpy() >= min_score)


# --- proposals --------------------------------------------------------------------------


def test_proposals_csv_reports_ap_and_recall(tiny_world: Path, tmp_path: Path) -> None:
    ref = run_detect(tiny_world, tmp_path, source="proposals")
    proposals = Dataset.open(tiny_world).proposals("val")
    assert ref.summary["val"]["boxes"] == len(proposals)
    # The world's proposals jitter GT boxes a little and miss a few: a good detector.
    assert 0.6 < ref.summary["val"]["ap50"] <= 1.0
    assert 0.6 < ref.summary["val"]["recall"] <= 1.0
    check_persons(ref, 0.0)
    val = read_persons(ref.uri, "val")
    assert set(val["split"].to_pylist()) == {"val"}
    assert len(val) == len(proposals)


def test_min_score_drops_low_scoring_proposals(tiny_world: Path, tmp_path: Path) -> None:
    everything = run_detect(tiny_world, tmp_path, source="proposals", splits=["val"])
    scores = Dataset.open(tiny_world).proposals("val").score
    threshold = float(np.median(scores))
    kept = run_detect(tiny_world, tmp_path, source="proposals", splits=["val"], min_score=threshold)
    assert kept.key != everything.key
    assert kept.summary["val"]["boxes"] == int((scores >= threshold).sum())
    assert kept.summary["val"]["boxes"] < everything.summary["val"]["boxes"]
    check_persons(kept, threshold)


def write_mmaction_pickle(world: Path, path: Path) -> None:
    proposals = Dataset.open(world).proposals("val")
    table: dict[str, np.ndarray] = {}
    for video, stamp in sorted(set(zip(proposals.video, proposals.timestamp, strict=True))):
        rows = (proposals.video == video) & (proposals.timestamp == stamp)
        table[f"{video},{stamp:04d}"] = np.column_stack(
            [proposals.boxes[rows], proposals.score[rows]]
        )
    path.write_bytes(pickle.dumps(table))


def test_mmaction_pickle_needs_trust(tiny_world: Path, tmp_path: Path) -> None:
    pkl = tmp_path / "val_proposals.pkl"
    write_mmaction_pickle(tiny_world, pkl)
    with pytest.raises(DataError, match="refusing to unpickle"):
        run_detect(tiny_world, tmp_path / "a", splits=["val"], proposals={"val": str(pkl)})
    from_pickle = run_detect(
        tiny_world, tmp_path / "b", splits=["val"], proposals={"val": str(pkl)}, trust_pickle=True
    )
    from_csv = run_detect(tiny_world, tmp_path / "c", splits=["val"])
    assert from_pickle.summary == from_csv.summary
    a, b = read_persons(from_pickle.uri), read_persons(from_csv.uri)
    np.testing.assert_allclose(a["x1"].to_numpy(), b["x1"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-6)


def test_unknown_split_is_named(tiny_world: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="'test' is not a split"):
        run_detect(tiny_world, tmp_path, splits=["test"])


# --- Faster R-CNN: errors and checkpoints -----------------------------------------------


def test_fasterrcnn_needs_checkpoint_or_finetune(tiny_world: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"needs detect\.checkpoint"):
        run_detect(tiny_world, tmp_path, source="fasterrcnn", arch=SMALL_ARCH)


def test_missing_checkpoint_is_named(tiny_world: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_detector.pth"
    with pytest.raises(
        DetectorCheckpointError, match=r"no_such_detector\.pth: detector checkpoint"
    ):
        build_person_detector(SMALL_ARCH, weights_path=missing)
    with pytest.raises(StageError, match=r"no_such_detector\.pth"):
        run_detect(
            tiny_world, tmp_path, source="fasterrcnn", arch=SMALL_ARCH, checkpoint=str(missing)
        )


def test_checkpoint_of_another_arch_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_person_detector(SMALL_ARCH)
    path = tmp_path / "det.pt"
    torch.save(detector_checkpoint(model, SMALL_ARCH), path)
    with pytest.raises(DetectorCheckpointError, match="saved for arch"):
        build_person_detector("fasterrcnn_mobilenet_v3_large_fpn", weights_path=path)
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, path)
    with pytest.raises(DetectorCheckpointError, match="1 unexpected keys"):
        build_person_detector(SMALL_ARCH, weights_path=path)


def test_coco_checkpoint_keeps_background_and_person(tmp_path: Path) -> None:
    """A 91-class (COCO-shaped) state dict, wrapped detectron-style with a module. prefix."""
    torch.manual_seed(0)
    coco = build_person_detector(SMALL_ARCH, num_classes=91)
    state = {f"module.{k}": v for k, v in coco.state_dict().items()}
    path = tmp_path / "coco.pth"
    torch.save({"model": state}, path)
    person = build_person_detector(SMALL_ARCH, weights_path=path, person_class=1)
    predictor, full = person.roi_heads.box_predictor, coco.roi_heads.box_predictor
    assert predictor.cls_score.weight.shape[0] == 2
    torch.testing.assert_close(predictor.cls_score.weight, full.cls_score.weight[[0, 1]])
    torch.testing.assert_close(predictor.bbox_pred.bias, full.bbox_pred.bias[:8])
    other = build_person_detector(SMALL_ARCH, weights_path=path, person_class=3)
    torch.testing.assert_close(
        other.roi_heads.box_predictor.bbox_pred.weight[4:], full.bbox_pred.weight[12:16]
    )
    with pytest.raises(DetectorCheckpointError, match="person_class 91"):
        build_person_detector(SMALL_ARCH, weights_path=path, person_class=91)
    kept = build_person_detector(SMALL_ARCH, weights_path=path, num_classes=91)
    torch.testing.assert_close(kept.roi_heads.box_predictor.cls_score.weight, full.cls_score.weight)


def tiny_training_set() -> TrainingSet:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    boxes = [np.array([[0.1, 0.2, 0.4, 0.9]], np.float32), np.zeros((0, 4), np.float32)]
    return TrainingSet(frames=frames, boxes=boxes)


def test_finetune_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Two epochs in one go == one epoch, a 'kill', and a resumed second epoch."""
    cfg = DetectorFinetuneConfig(epochs=2, batch_size=2, rois_per_image=8, lr=1e-3)
    data, cpu = tiny_training_set(), torch.device("cpu")

    def fresh():
        torch.manual_seed(1)
        return build_person_detector(SMALL_ARCH, min_size=48, max_size=64)

    straight = fresh()
    report = finetune_detector(straight, data, cfg, state_dir=tmp_path / "a", device=cpu)
    first = fresh()
    finetune_detector(
        first, data, cfg.model_copy(update={"epochs": 1}), state_dir=tmp_path / "b", device=cpu
    )
    resumed = fresh()
    again = finetune_detector(resumed, data, cfg, state_dir=tmp_path / "b", device=cpu)
    assert report["keyframes"] == 2 and report["boxes"] == 1 and len(report["epoch_loss"]) == 2
    assert again["epoch_loss"] == report["epoch_loss"]
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


# --- Faster R-CNN: the stage on the tiny world ------------------------------------------

FASTERRCNN = {
    "source": "fasterrcnn",
    "arch": SMALL_ARCH,
    "splits": ["val"],
    "image_short_side": 64,
    # Barely trained (1 epoch on 4 keyframes): a low threshold so that boxes come out.
    "score_threshold": 0.05,
    "finetune": {"epochs": 1, "max_keyframes": 4, "batch_size": 4, "rois_per_image": 16},
}


@pytest.fixture(scope="module")
def fasterrcnn_run(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> StageRef:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return run_detect(tiny_world, tmp_path_factory.mktemp("detect"), **FASTERRCNN)


def test_fasterrcnn_writes_valid_persons(fasterrcnn_run: StageRef, tiny_world: Path) -> None:
    check_persons(fasterrcnn_run, FASTERRCNN["score_threshold"])
    table = read_persons(fasterrcnn_run.uri)
    assert len(table) > 0 and set(table["split"].to_pylist()) == {"val"}
    videos, stamps = detection_keyframes(Dataset.open(tiny_world), "val")
    wanted = set(zip(videos.tolist(), stamps.tolist(), strict=True))
    found = set(zip(table["video"].to_pylist(), table["timestamp"].to_pylist(), strict=True))
    assert found <= wanted
    summary = fasterrcnn_run.summary["val"]
    assert summary["boxes"] == len(table) and summary["keyframes"] == len(found)
    assert 0.0 <= summary["ap50"] <= 1.0 and 0.0 <= summary["recall"] <= 1.0
    assert not (fasterrcnn_run.path / "parts").exists()
    assert not (fasterrcnn_run.path / "finetune").exists()


def test_fasterrcnn_reports_finetune(fasterrcnn_run: StageRef) -> None:
    import json

    report = json.loads((fasterrcnn_run.path / DETECTOR_REPORT).read_text())
    assert report["arch"] == SMALL_ARCH
    assert report["finetune"]["keyframes"] == 4 and report["finetune"]["steps"] == 1
    assert np.isfinite(report["finetune"]["epoch_loss"][0])


def test_saved_detector_reproduces_detections(fasterrcnn_run: StageRef, tiny_world: Path) -> None:
    model = build_person_detector(
        SMALL_ARCH,
        weights_path=fasterrcnn_run.path / DETECTOR_FILE,
        min_size=64,
        max_size=128,
        box_score_thresh=FASTERRCNN["score_threshold"],
    )
    dataset = Dataset.open(tiny_world)
    videos, stamps = detection_keyframes(dataset, "val")
    first = videos == videos[0]
    images = next(decode_keyframes(dataset, videos[first], stamps[first]))
    table = read_persons(fasterrcnn_run.uri, "val")
    video = np.array(table["video"].to_pylist())
    stamp_col = table["timestamp"].to_numpy()
    saved = np.stack([table[c].to_numpy() for c in ("x1", "y1", "x2", "y2", "score")], axis=1)
    for stamp, frame in zip(images.timestamp[:3], images.frames[:3], strict=True):
        ((boxes, scores),) = detect_persons(
            model, [to_tensor(frame)], score_threshold=FASTERRCNN["score_threshold"]
        )
        rows = saved[(video == images.video) & (stamp_col == stamp)]
        np.testing.assert_allclose(rows[:, 4], scores.numpy(), atol=1e-5)
        np.testing.assert_allclose(rows[:, :4], boxes.numpy(), atol=1e-5)
