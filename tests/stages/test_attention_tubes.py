"""Attention pictures on a tube dataset (timestamps are 1-based frame numbers) and the
keyframe-to-frame rule for Kinetics clips (their own start second).

An acar head trained 1 epoch on the tiny tube world (10 fps): the picture of val frame t
is drawn over file frame t - 1, not over second t of the video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore import FeatureStore
from flows.cli import main as cli_main
from stages.config import load_config
from stages.data import Dataset
from stages.framework import StageError
from stages.pipeline import PipelineRun, run_pipeline
from stages.tools.attention import attention_picture, keyframe_frame, store_video_id

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"
SETTINGS = (
    "world=null",
    "dataset.exclusive_classes=[]",
    "track.boxes={train: detections, val: detections}",
    "train.runs={acar: {head: acar, head_kwargs: {reduce_dim: 16, dim: 8}, optim: {epochs: 1}}}",
)


@pytest.fixture(scope="module")
def tube_run(tiny_tube_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(TINY_YAML, [f"dataset.root={tiny_tube_world}", *SETTINGS])
        run = PipelineRun(config=cfg, work_root=tmp_path_factory.mktemp("attt"), until="train")
        run_pipeline(run, write=False)
    finally:
        torch.set_num_threads(before)
    return {name: ref.path for name, ref in run.refs.items()}


def _late_keyframe(store_path: Path) -> tuple[str, int]:
    """A val keyframe with actors past the world's 4th second (frame 41 would be 4 s)."""
    store = FeatureStore.open(store_path)
    for video in store.videos():
        stamps, offsets = store.index(video)
        counts = np.diff(offsets)
        late = [int(t) for t, n in zip(stamps, counts, strict=True) if n and 8 <= t <= 40]
        if late:
            return video, late[-1]
    raise AssertionError("no val keyframe with actors after frame 8")


def test_picture_on_a_tube_keyframe(tube_run, tiny_tube_world: Path, tmp_path: Path) -> None:
    val = tube_run["extract"] / "features" / "val.zarr"
    video, frame = _late_keyframe(val)
    path = Dataset.open(tiny_tube_world).video_path(video)
    out = tmp_path / "tube.png"
    info = attention_picture(tube_run["train:acar"], path, frame, out, max_actors=2)
    assert info["frame"] == frame - 1  # 1-based frame number -> file frame index
    assert info["image"] == [120, 160] and info["video_id"] == video
    with Image.open(out) as png:
        png.load()
        assert np.asarray(png.convert("RGB")).std() > 10
    # The same store given explicitly: timestamps are seconds unless --frame-numbers.
    code = cli_main([
        "attention", "--run", str(tube_run["train:acar"]), "--video", str(path),
        "--timestamp", str(frame), "--out", str(tmp_path / "cli.png"), "--store", str(val),
        "--frame-numbers",
    ])  # fmt: skip
    assert code == 0 and (tmp_path / "cli.png").is_file()
    with pytest.raises(StageError, match=rf"{video}.*timestamp {frame}"):
        attention_picture(tube_run["train:acar"], path, frame, tmp_path / "s.png", store=val)


def test_keyframe_frame_per_time_base(tube_run, tmp_path: Path) -> None:
    video = Path("v.mp4")
    # AVA: second 902 of a movie cut at 900 s, 30 fps
    assert keyframe_frame(902, 900.0, None, 30.0, 27000, video) == 60
    # Kinetics clip <id>_000010_000020: second 15 of the YouTube video, 25 fps
    assert keyframe_frame(15, 10.0, None, 25.0, 250, video) == 125
    # tube dataset: frame 125 of a 125-frame MultiSports clip, whatever the fps
    assert keyframe_frame(125, 1.0, 1.0, 25.0, 125, video) == 124
    with pytest.raises(ValueError, match=r"v\.mp4"):
        keyframe_frame(126, 1.0, 1.0, 25.0, 125, video)
    # A Kinetics clip file is found in a store under its YouTube id or its full name.
    val = tube_run["extract"] / "features" / "val.zarr"
    held = FeatureStore.open(val).videos()[0]
    assert store_video_id([val], f"{held}_000010_000020") == held
    assert store_video_id([val], held) == held
    assert store_video_id([val], "other_000010_000020") == "other_000010_000020"
