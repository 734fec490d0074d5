"""Attention pictures of acar, amcr and igmn_dam heads trained (1 epoch) on the tiny world.

Each picture is a real PNG that decodes, has one panel row per actor, and every heat map
is laid over the whole keyframe image (the frame's size); IGMN's maps cover only the
actor's enlarged box. The CLI writes the same picture.
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
from stages.tools.attention import attention_picture, enlarged, paste_in_box, upsample

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"
RUNS = (
    "train.runs={"
    "acar: {head: acar, head_kwargs: {reduce_dim: 16, dim: 8}, optim: {epochs: 1}},"
    "amcr: {head: amcr, head_kwargs: {hidden_dim: 16, num_layers: 1, num_heads: 2},"
    " optim: {epochs: 1}},"
    "igmn: {head: igmn_dam, head_kwargs: {attention_hidden: 8, fuse_hidden: 16},"
    " optim: {epochs: 1}},"
    "linear: {head: linear, optim: {epochs: 1}}}"
)


@pytest.fixture(scope="module")
def runs(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(TINY_YAML, [f"dataset.root={tiny_world}", "world=null", RUNS])
        run = PipelineRun(config=cfg, work_root=tmp_path_factory.mktemp("att"), until="train")
        run_pipeline(run, write=False)
    finally:
        torch.set_num_threads(before)
    return {name: ref.path for name, ref in run.refs.items()}


@pytest.fixture(scope="module")
def crowded_keyframe(runs: dict[str, Path]) -> tuple[str, int, int]:
    """(video, timestamp, actors) of the val keyframe with the most actors."""
    ext = next((runs["extract"] / "features").glob("val.zarr"))
    store = FeatureStore.open(ext)
    best = ("", 0, -1)
    for video in store.videos():
        stamps, offsets = store.index(video)
        counts = np.diff(offsets)
        k = int(np.argmax(counts))
        if counts[k] > best[2]:
            best = (video, int(stamps[k]), int(counts[k]))
    assert best[2] >= 2, "the tiny world should have a keyframe with two persons"
    return best


@pytest.mark.parametrize("name", ["acar", "amcr", "igmn"])
def test_picture_for_each_head(
    name: str, runs: dict[str, Path], crowded_keyframe, tiny_world: Path, tmp_path: Path
) -> None:
    video, stamp, actors = crowded_keyframe
    path = Dataset.open(tiny_world).video_path(video)
    out = tmp_path / f"{name}.png"
    info = attention_picture(runs[f"train:{name}"], path, stamp, out, max_actors=3)
    with Image.open(out) as png:
        png.load()
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 10
    height, width = info["image"]
    assert (height, width) == (96, 128)  # the tiny world's frames
    assert info["overlays"] == [(height, width)]  # every heat map spans the frame
    n = min(actors, 3)
    if name == "acar":
        (shape,) = info["maps"].values()
        assert shape[:4] == [1, 2, actors, actors]  # B, L blocks, query slots, key slots
        assert info["panels"] == [n] * n
    elif name == "amcr":
        assert info["maps"] == {"bhoi": [actors, 9 + 25 + 49]}
        assert info["panels"] == [3] * n
    else:
        assert info["maps"] == {"semantic": [actors, 7, 7], "identity": [actors, 7, 7]}
        assert info["panels"] == [2] * n


def test_cli_writes_the_picture(
    runs: dict[str, Path], crowded_keyframe, tiny_world: Path, tmp_path: Path
) -> None:
    video, stamp, _ = crowded_keyframe
    path = Dataset.open(tiny_world).video_path(video)
    out = tmp_path / "cli.png"
    code = cli_main([
        "attention", "--run", str(runs["train:acar"]), "--video", str(path),
        "--timestamp", str(stamp), "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    with Image.open(out) as png:
        assert png.format == "PNG"


def test_head_without_maps_and_missing_keyframe_are_named(
    runs: dict[str, Path], crowded_keyframe, tiny_world: Path, tmp_path: Path
) -> None:
    video, stamp, _ = crowded_keyframe
    path = Dataset.open(tiny_world).video_path(video)
    with pytest.raises(StageError, match="'linear' has no attention picture"):
        attention_picture(runs["train:linear"], path, stamp, tmp_path / "x.png")
    with pytest.raises(StageError, match="no actors at timestamp 99999"):
        attention_picture(runs["train:acar"], path, 99999, tmp_path / "x.png")


def test_overlay_geometry() -> None:
    grid = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert upsample(grid, 40, 90).shape == (40, 90)
    cells = upsample(grid, 40, 90, smooth=False)
    assert cells[0, 0] == 0 and cells[-1, -1] == 5 and cells[0, 45] == 1
    box = np.array([0.25, 0.5, 0.5, 1.0])
    heat = paste_in_box(np.ones((7, 7)), box, 40, 80)
    inside = np.zeros((40, 80), bool)
    inside[20:40, 20:40] = True
    assert np.isfinite(heat[inside]).all() and np.isnan(heat[~inside]).all()
    np.testing.assert_allclose(
        enlarged(np.array([0.4, 0.4, 0.6, 0.6]), 1.5), [0.35, 0.35, 0.65, 0.65]
    )
    np.testing.assert_allclose(enlarged(np.array([0.0, 0.0, 0.2, 0.2]), 2.0), [0.0, 0.0, 0.3, 0.3])
