"""Test-time augmentation: flipped boxes and features agree, views align, scores average.

The flip must move boxes and features together: RoIAlign of a mirrored map at the
mirrored box is the mirrored RoI, and the extract stage's flipped view of a video equals
the unflipped one mirrored when the backbone itself commutes with mirroring (a 1×1 conv,
a temporal mean and an even average pool do). The predict stage runs a world-trained head
over three views (base, flipped, another scale) and writes their per-box mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.roi import actor_rois
from stages.config import load_config
from stages.data import Dataset
from stages.data.predictions import read_predictions_parquet
from stages.extract import stage as extract
from stages.extract.stage import ExtractConfig, ExtractStageConfig
from stages.extract.video import VideoExtractor, _probe_shapes, build_schema, flip_boxes
from stages.framework import StageError, StageRef, run_stage
from stages.framework.keys import key_payload
from stages.pipeline import PipelineRun, dataset_section, prepare_dataset, run_pipeline
from stages.predict import tta
from stages.train.data import open_split
from stages.train.run import TrainedRun
from stages.video import VideoReader

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_boxes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, b = rng.random((n, 2)), rng.random((n, 2))
    return np.concatenate([np.minimum(a, b), np.maximum(a, b) + 1e-3], axis=1).clip(0, 1)


def test_flip_boxes_twice_is_the_identity() -> None:
    boxes = random_boxes(50, 0).astype(np.float32)
    np.testing.assert_allclose(flip_boxes(flip_boxes(boxes)), boxes, atol=1e-7)
    np.testing.assert_allclose(
        flip_boxes(np.array([[0.1, 0.2, 0.4, 0.9]])), [[0.6, 0.2, 0.9, 0.9]], atol=1e-12
    )
    assert flip_boxes(boxes).dtype == np.float32
    flipped = flip_boxes(boxes)
    assert (flipped[:, 2] >= flipped[:, 0]).all()  # still x1 <= x2


def test_roi_of_the_flipped_map_at_the_flipped_box_is_the_flipped_roi() -> None:
    torch.manual_seed(0)
    fmap = torch.randn(2, 5, 12, 17)  # odd width: no accidental symmetry of the grid
    boxes = random_boxes(9, 1)
    batch = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0])
    roi, pooled = actor_rois(
        fmap, torch.from_numpy(boxes).float(), batch, input_size=(96, 136)
    )  # fmt: skip
    roi_f, pooled_f = actor_rois(
        fmap.flip(-1), torch.from_numpy(flip_boxes(boxes)).float(), batch, input_size=(96, 136)
    )  # fmt: skip
    torch.testing.assert_close(roi_f, roi.flip(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_f, pooled, atol=1e-5, rtol=1e-5)


class MirrorEquivariant(nn.Module):
    """A backbone that commutes with left-right flips: 1×1×1 conv, temporal mean, pool 4."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv3d(3, 6, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 6, H/4, W/4)
        return F.avg_pool2d(self.proj(x).mean(dim=2), 4)


def test_flipped_extraction_is_the_mirrored_extraction(tiny_world: Path) -> None:
    dataset = Dataset.open(tiny_world)
    gt = dataset.gt("train")
    video = str(gt.video[0])
    rows = gt.video.astype(str) == video
    boxes, keep = np.unique(gt.boxes[rows], axis=0, return_index=True)
    actors = {
        "timestamp": gt.timestamp[rows][keep],
        "boxes": boxes.astype(np.float32),
        "score": np.ones(len(keep), np.float32),
        "track": np.arange(len(keep), dtype=np.int32),
    }
    model = MirrorEquivariant().eval()
    got = {}
    for flip in (False, True):
        ex = ExtractConfig(num_frames=4, frame_stride=1, short_side=None, store_roi=True,
                           flip=flip, batch_size=4)  # fmt: skip
        with VideoReader(dataset.video_path(video)) as reader:
            assert reader.width % 4 == 0  # the pool tiles the width exactly
            shape, _ = _probe_shapes(model, ex, reader.height, reader.width)
            schema = build_schema(ex, shape, None, None, None)
            assert schema.clip.get("flip", False) is flip
            got[flip] = VideoExtractor(model, ex, schema).run(
                reader, video, actors, dataset.timestamp_offset
            )
    plain, mirrored = got[False], got[True]
    assert len(plain.boxes) == len(keep) and plain.context.std() > 0
    np.testing.assert_array_equal(mirrored.timestamps, plain.timestamps)
    np.testing.assert_allclose(mirrored.boxes, flip_boxes(plain.boxes), atol=1e-7)
    # float16 stores: compare at its precision
    np.testing.assert_allclose(mirrored.context, plain.context[..., ::-1], atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(mirrored.roi, plain.roi[..., ::-1], atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(mirrored.pooled, plain.pooled, atol=2e-3, rtol=2e-3)
    # and the flip did something: the scene is not symmetric
    assert np.abs(mirrored.context.astype(np.float32) - plain.context).max() > 0.05


def test_flip_enters_the_extract_key_and_only_flipped_schemas_say_so() -> None:
    """``flip`` is a key field like any other (stages.framework.keys); an unflipped store's schema
    stays as it was before flip existed."""
    plain = key_payload(ExtractConfig())
    assert plain["flip"] is False
    assert key_payload(ExtractConfig(flip=True))["flip"] is True
    assert "flip" not in build_schema(ExtractConfig(), (8, 2, 2), None, None, None).clip


# ------------------------------------------------------------------ views and the stage


@pytest.fixture(scope="module")
def world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny-world run up to train, and the extract config that fed it."""
    torch.set_num_threads(1)
    cfg = load_config(TINY_YAML, [f"dataset.root={tiny_world}", "world=null"])
    work = tmp_path_factory.mktemp("tta")
    run = PipelineRun(config=cfg, work_root=work, until="train")
    run_pipeline(run, write=False)
    dataset, fingerprint = prepare_dataset(cfg)
    section = dataset_section(cfg, dataset, fingerprint)
    return run, section(ExtractStageConfig, "extract"), work, dataset, fingerprint


def extract_view(world, view: tta.TTAView) -> StageRef:
    run, base, work, _, _ = world
    config = base.model_copy(
        update={"extract": tta.view_extract_config(base.extract, view, "val")}
    )  # fmt: skip
    inputs = {"track": run.refs["track"], "detect": run.refs["detect"]}
    return run_stage(extract.STAGE, config, inputs, work)


def test_predict_stage_averages_aligned_views(world) -> None:
    run, _, work, dataset, fingerprint = world
    views = [tta.TTAView(flip=True), tta.TTAView(short_side=64)]
    refs = [run.refs["extract"], *(extract_view(world, v) for v in views)]
    assert len({r.key for r in refs}) == 3
    flipped = open_split(extract.store_path(refs[1].uri, "val"))
    assert flipped.schema.clip["flip"] is True
    small = open_split(extract.store_path(refs[2].uri, "val"))
    assert (
        small.schema.context_shape
        != open_split(extract.store_path(refs[0].uri, "val")).schema.context_shape
    )

    config = tta.PredictStageConfig(
        dataset=dataset, dataset_fingerprint=fingerprint, split="val",
        tta=tta.TTAConfig(views=views),
    )  # fmt: skip
    inputs = {"train": run.refs["train:linear"], **{f"view{k}": r for k, r in enumerate(refs)}}
    ref = run_stage(tta.STAGE, config, inputs, work)
    summary = ref.summary
    assert [v["flip"] for v in summary["views"]] == [False, True, False]
    assert [v["short_side"] for v in summary["views"]] == [None, None, 64]
    # The base view alone is exactly what training predicted.
    trained = run.refs["train:linear"].summary["val_map"]
    assert summary["views"][0]["mAP"] == pytest.approx(trained, abs=1e-9)
    assert 0.0 <= summary["val_map"] <= 1.0

    # The written table is the per-box mean of the three views, on the base boxes.
    trained_run = TrainedRun.open(run.refs["train:linear"].path)
    labelmap, exclusive = trained_run.classes()
    stores = [open_split(extract.store_path(r.uri, "val")) for r in refs]
    index, mean, per_view = tta.predict_views(trained_run.build_head(), stores, labelmap, exclusive)
    np.testing.assert_allclose(mean, np.mean(per_view, axis=0), rtol=1e-6)
    assert not np.allclose(per_view[0], per_view[1])  # the flip changed the scores
    table = read_predictions_parquet(ref.path / "predictions" / "val.parquet")
    c = len(labelmap)
    np.testing.assert_allclose(table.score.reshape(-1, c), mean, rtol=1e-6)
    base_boxes = open_split(extract.store_path(refs[0].uri, "val"))
    want = np.concatenate([base_boxes.read_video(v).boxes for v in base_boxes.videos()])
    np.testing.assert_allclose(table.boxes[::c], want, atol=1e-6)
    np.testing.assert_allclose(index.boxes, want, atol=1e-6)  # unflipped, base order
    metrics = json.loads((ref.path / tta.METRICS_FILE).read_text())
    assert metrics["mAP"] == pytest.approx(summary["val_map"])


def test_misaligned_views_are_refused(world) -> None:
    run, *_ = world
    trained_run = TrainedRun.open(run.refs["train:linear"].path)
    labelmap, exclusive = trained_run.classes()
    val = open_split(extract.store_path(run.refs["extract"].uri, "val"))
    train = open_split(extract.store_path(run.refs["extract"].uri, "train"))
    with pytest.raises(StageError, match="same actors"):
        tta.predict_views(trained_run.build_head(), [val, train], labelmap, exclusive)
    index = tta.view_index(val, labelmap)
    moved = tta.view_index(val, labelmap)
    moved.boxes = moved.boxes.copy()
    moved.boxes[3, 0] += 0.01
    k = int(np.searchsorted(index.actor_offset, 3, side="right") - 1)
    with pytest.raises(StageError, match=f"{index.video[k]},{int(index.timestamp[k]):04d}"):
        tta.check_aligned(index, moved, "1")


@pytest.mark.slow
def test_pipeline_tta_section(world, tiny_world: Path) -> None:
    """``tta:`` in the config adds a flipped view, a predict run per head and its evaluation."""
    _, _, work, _, _ = world
    cfg = load_config(
        TINY_YAML, [f"dataset.root={tiny_world}", "world=null", "tta={views: [{flip: true}]}"]
    )
    run = PipelineRun(config=cfg, work_root=work)
    summary = run_pipeline(run, write=False)
    model = summary["models"]["linear_tta"]
    assert model["stage"] == "predict" and model["head"] == "linear"
    assert 0.0 <= model["val_map"] <= 1.0
    predict_rec = summary["stages"]["predict"]["runs"]["linear_tta"]
    assert [v["flip"] for v in predict_rec["summary"]["views"]] == [False, True]
    assert "linear_tta" in summary["stages"]["evaluate"]["runs"]
    evaluated = summary["stages"]["evaluate"]["runs"]["linear_tta"]["summary"]["mAP"]
    assert evaluated == pytest.approx(model["val_map"], abs=1e-6)
    # Upstream stages were served from the cache: TTA re-keys nothing before it.
    assert all(summary["stages"][s]["cached"] for s in ("detect", "track", "extract"))
    assert Path(model["predictions_csv"]).is_file()
