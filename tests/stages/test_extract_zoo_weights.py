"""The extract stage with model-zoo weights: architecture stated or refused, normalisation
checked, weights / source config / resolved architecture recorded in the store schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import FeatureStore
from models.backbones import slowfast_tiny
from models.backbones.naming import mmaction2_name
from stages.extract import stage as extract
from stages.extract.video import build_schema, load_backbone
from stages.framework import StageError, run_stage, stage_key
from tests.models.parity_testing import named_random_tensor
from tests.models.test_backbones_parity_mmaction2 import (
    FIXTURES,
    SLOWONLY_BACKBONE,
    _checkpoint,
    _write_configs,
)
from tests.stages.extract_worker import stage_configs, track_input

MM_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
MM_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)


def _tiny_mmaction2_file(path: Path) -> Path:
    """The tiny demo SlowFast's tensors under MMAction2 names (no lateral BN), random."""
    model = slowfast_tiny(width=8, depths=(1, 1, 1, 1), alpha=4, t_slow=2, lateral_norm=False)
    state = {
        mmaction2_name(k): named_random_tensor(k, tuple(v.shape)).to(v.dtype)
        for k, v in model.state_dict().items()
    }
    torch.save({"meta": {"epoch": np.int64(1)}, "state_dict": state}, path)
    return path


def test_extract_with_zoo_weights_records_them_or_refuses(tiny_world: Path, tmp_path: Path) -> None:
    tracks = track_input(tiny_world, tmp_path / "inputs")
    weights = _tiny_mmaction2_file(tmp_path / "tiny_mmaction2.pth")
    _, _, refused = stage_configs(tiny_world, splits=["train"], weights=str(weights))
    with pytest.raises(StageError) as excinfo:
        run_stage(extract.STAGE, refused, {"track": tracks}, tmp_path / "work")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "mmaction2 naming) does not say its spatial_strides, dilations" in message
    assert f"bankflow checkpoint inspect {weights}" in message

    stated = {"width": 8, "depths": [1, 1, 1, 1], "alpha": 4, "t_slow": 2,
              "spatial_strides": [1, 2, 2, 1], "dilations": [1, 1, 1, 1], "slow_sampling": "stride"}  # fmt: skip
    _, _, cfg = stage_configs(
        tiny_world, splits=["train"], weights=str(weights), backbone_kwargs=stated
    )
    ref = run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path / "work")
    schema = FeatureStore.open(extract.store_path(ref.uri, "train")).schema
    assert schema.extra["weights"] == str(weights) and schema.extra["source_config"] is None
    assert schema.extra["architecture"]["dilations"] == [1, 1, 1, 1]
    assert schema.extra["architecture"]["lateral_norm"] is False  # read off the file
    assert schema.weights_sha256 is not None


def test_source_config_gives_the_architecture_and_its_normalisation(tmp_path: Path) -> None:
    fixture = torch.load(FIXTURES / "mmaction2_slowonly_r50_ava.pt", weights_only=True)
    config = _write_configs(tmp_path, SLOWONLY_BACKBONE)
    weights = _checkpoint(tmp_path, fixture)
    ex = extract.ExtractConfig(
        backbone="slowonly_r50", weights=str(weights), source_config=str(config),
        num_frames=4, frame_stride=16,
    )  # fmt: skip
    with pytest.raises(StageError, match=r"normalises input with mean \[0\.485, 0\.456, 0\.406\]"):
        load_backbone(ex, weights)
    ex = ex.model_copy(update={"mean": MM_MEAN, "std": MM_STD})
    # The config's sampler (clip_len=32, frame_interval=2 in _write_configs) is for a
    # SlowFast; a 4-frame SlowOnly clip every 16 frames is refused with both named.
    with pytest.raises(StageError, match=r"takes clips of 32 frames every 2 source frames.* 4/16"):
        load_backbone(ex, weights)
    ex = ex.model_copy(update={"num_frames": 32, "frame_stride": 2})
    model, sha = load_backbone(ex, weights)
    assert model.config.dilations == (1, 1, 1, 1) and sha is not None
    schema = build_schema(ex, (2048, 2, 2), None, sha, None, architecture=model.config)
    assert schema.extra["source_config"] == str(config)
    assert schema.extra["architecture"]["fast_pathway"] is False


def test_source_config_enters_the_key_by_name_or_by_file_content(tmp_path) -> None:
    ex = extract.ExtractConfig()
    assert ex.model_dump()["source_config"] is None
    with_preset = ex.model_copy(update={"source_config": "pyslowfast/SLOWFAST_32x2_R50_SHORT"})
    assert with_preset.model_dump()["source_config"] == "pyslowfast/SLOWFAST_32x2_R50_SHORT"
    assert stage_key(extract.STAGE, ex, {}) != stage_key(extract.STAGE, with_preset, {})
    # A source config file enters by its bytes: the same file elsewhere keeps the key,
    # an edited one changes it.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "cfg.yaml").write_text("MODEL:\n  ARCH: slowfast\n")
    keys = [
        stage_key(extract.STAGE, ex.model_copy(update={"source_config": str(p)}), {})
        for p in (tmp_path / "a" / "cfg.yaml", tmp_path / "b" / "cfg.yaml")
    ]
    assert keys[0] == keys[1]
    (tmp_path / "b" / "cfg.yaml").write_text("MODEL:\n  ARCH: slow\n")
    edited = stage_key(
        extract.STAGE, ex.model_copy(update={"source_config": str(tmp_path / "b" / "cfg.yaml")}), {}
    )
    assert edited != keys[0]
