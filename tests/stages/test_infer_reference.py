"""``bankflow infer`` with a PySlowFast-format backbone checkpoint gives the scores of the
reference path computed directly for the same clip and boxes.

The backbone checkpoint is a PySlowFast ``.pyth`` (``{"model_state": …}`` under PySlowFast's
tensor names, plus a classifier ``head.projection.*`` it must ignore) with random weights
at tiny width; the names were checked against PySlowFast's own modules in
``tests/models/test_backbones_parity_pyslowfast.py``. The run is trained on the tiny world
with that file as ``extract.weights``; ``infer`` then runs on carphone.mp4 with a random
person detector (its person score biased up so that it finds boxes).

The reference path, written here from PySlowFast's AVA conventions rather than through
the stages: decord frames ``center + (-T/2 … T/2-1)·stride`` (clamped) around each
keyframe, ``(x/255 - mean)/std``, the network loaded from the ``.pyth`` by PySlowFast names,
each pathway averaged over time, RoIAlign 7×7 (``spatial_scale`` 1/16, ``aligned``,
adaptive sampling) on the boxes infer stored, spatial max, Slow then Fast channels, the
run's head, sigmoid. The store keeps float16 features, so the pooled features are rounded
to float16 before the head, as the store does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from featurestore import FeatureStore
from flows.cli import main as cli_main
from models.backbones import SlowFast, SlowFastConfig, load_slowfast_checkpoint
from models.backbones.naming import pyslowfast_name
from models.detector import build_person_detector, detector_checkpoint
from models.heads import ActorBatch
from models.losses import ava_scores
from stages.config import load_config
from stages.data import read_detections_csv
from stages.pipeline import PipelineRun, run_pipeline
from stages.train.run import TrainedRun

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"
DET_ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
ARCH = {  # the tiny network, every field the .pyth cannot reveal stated
    "width": 8, "depths": (1, 1, 1, 1), "alpha": 4, "t_slow": 2, "frame_stride": 1,
    "spatial_strides": (1, 2, 2, 1), "dilations": (1, 1, 1, 2), "slow_sampling": "linspace",
    "fusion_kernel": 7,
}  # fmt: skip
MEAN, STD = 0.45, 0.225


def _pyslowfast_file(path: Path) -> None:
    net = SlowFast(SlowFastConfig(**ARCH))
    g = torch.Generator().manual_seed(5)
    state = {}
    for key, value in net.state_dict().items():
        name = pyslowfast_name(key)
        assert name is not None, key
        if key.endswith("num_batches_tracked"):
            state[name] = value
        elif key.endswith("running_var"):
            state[name] = 0.5 + torch.rand(value.shape, generator=g)
        elif value.dim() > 1:
            fan_in = math.prod(value.shape[1:])
            state[name] = torch.randn(value.shape, generator=g) / math.sqrt(fan_in)
        else:
            base = 1.0 if key.endswith("weight") else 0.0
            state[name] = base + 0.3 * torch.randn(value.shape, generator=g)
    state["head.projection.weight"] = torch.randn(80, 288, generator=g)  # Kinetics head
    state["head.projection.bias"] = torch.zeros(80)
    torch.save({"epoch": 20, "model_state": state}, path)


def _random_detector(path: Path) -> None:
    torch.manual_seed(11)
    model = build_person_detector(DET_ARCH, weights_path=None, min_size=64, max_size=128)
    with torch.no_grad():  # every proposal reads as a person
        model.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    torch.save(detector_checkpoint(model, DET_ARCH), path)


@pytest.fixture(scope="module")
def reference_run(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("infer_reference")
    weights, detector = root / "SLOWFAST_TINY.pyth", root / "detector.pt"
    _pyslowfast_file(weights)
    _random_detector(detector)
    kwargs = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(TINY_YAML, [
            f"dataset.root={tiny_world}", "world=null", "train.runs.linear.optim.epochs=1",
            f"extract.weights={weights}", f"extract.backbone_kwargs={kwargs}",
        ])  # fmt: skip
        run = PipelineRun(config=cfg, work_root=root / "work", until="train")
        run_pipeline(run, write=False)
    finally:
        torch.set_num_threads(before)
    return {"run": run.refs["train:linear"].path, "weights": weights, "detector": detector}


def _reference_scores(video: Path, weights: Path, timestamps, offsets, boxes, run: Path):
    """[A, K] scores of the actors (store order) by the reference path."""
    net = SlowFast(SlowFastConfig(**ARCH)).eval()
    report = load_slowfast_checkpoint(net, weights)
    assert report.scheme == "pyslowfast" and report.ok and len(report.ignored) == 2
    reader = decord.VideoReader(str(video))
    fps, n = reader.get_avg_fps(), len(reader)
    t = ARCH["t_slow"] * ARCH["alpha"]
    trained = TrainedRun.open(run, stages=("train",))
    head = trained.build_head().eval()
    _, exclusive = trained.classes()
    pooled = []
    for k, second in enumerate(timestamps):
        center = math.floor(float(second) * fps + 0.5)  # offset 0: seconds of the video
        index = np.clip(center + np.arange(-(t // 2), t - t // 2) * ARCH["frame_stride"], 0, n - 1)
        frames = torch.from_numpy(reader.get_batch(index.tolist()).asnumpy())  # [T, H, W, 3]
        x = (frames.permute(3, 0, 1, 2)[None].float() / 255 - MEAN) / STD
        with torch.no_grad():
            slow, fast = net(x, return_temporal=True)
            fmap = torch.cat([slow.mean(dim=2), fast.mean(dim=2)], dim=1)  # [1, C, h, w]
            b = torch.from_numpy(boxes[offsets[k] : offsets[k + 1]]).float()
            height, width = x.shape[-2:]
            rois = torch.cat([torch.zeros(len(b), 1), b * torch.tensor([width, height] * 2)], 1)
            roi = roi_align(fmap, rois, (7, 7), spatial_scale=1 / 16, sampling_ratio=0,
                            aligned=True)  # fmt: skip
        pooled.append(roi.amax(dim=(2, 3)))
    features = torch.cat(pooled).half().float()  # as the float16 store holds them
    batch = ActorBatch(
        context=torch.zeros(1, 1, 1, 1),
        pooled=features,
        boxes=torch.zeros(len(features), 4),
        batch_index=torch.zeros(len(features), dtype=torch.long),
    )
    with torch.no_grad():
        return ava_scores(head(batch).logits, exclusive).numpy(), [
            int(i) for i in trained.saved["classes"]
        ]


@pytest.mark.slow
def test_infer_scores_equal_the_reference_path(
    reference_run: dict[str, Path], carphone_mp4: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "out"
    code = cli_main([
        "infer", str(carphone_mp4), "--run", str(reference_run["run"]), "--out", str(out),
        "--detector", str(reference_run["detector"]), "--detector-arch", DET_ARCH,
        "--max-seconds", "3", "--score-threshold", "0.5",
        "--max-persons", "3",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "infer.json").read_text())
    assert report["persons"] >= 3

    feats = FeatureStore.open(out / "features.zarr").read_video(video_id := report["video_id"])
    assert FeatureStore.open(out / "features.zarr").schema.weights_sha256 is not None
    expected, classes = _reference_scores(
        carphone_mp4, reference_run["weights"], feats.timestamps, feats.actor_offset,
        feats.boxes, reference_run["run"],
    )  # fmt: skip
    table = read_detections_csv(out / "predictions.csv")
    assert len(table) == len(feats.boxes) * len(classes) and set(table.video) == {video_id}
    keyframe = np.repeat(np.arange(len(feats.timestamps)), np.diff(feats.actor_offset))
    compared = 0
    for row in range(len(table)):
        actor = np.flatnonzero(
            (feats.timestamps[keyframe] == table.timestamp[row])
            & (np.abs(feats.boxes - table.boxes[row]).max(axis=1) < 6e-4)
        )
        assert len(actor) == 1, row
        column = classes.index(int(table.action[row]))
        got, want = float(table.score[row]), float(expected[actor[0], column])
        assert got == pytest.approx(want, rel=2e-5, abs=1e-6), (row, got, want)
        compared += 1
    assert compared == len(feats.boxes) * len(classes)
    assert expected.std() > 1e-3  # the scores differ between actors and classes
