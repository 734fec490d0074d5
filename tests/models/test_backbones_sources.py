"""Reading checkpoints and source configs without running anything from them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import SlowFastConfig, read_architecture, slowfast_tiny
from models.backbones.formats import CAFFE2_PICKLE, read_checkpoint_file
from models.backbones.naming import caffe2_name
from models.backbones.presets import PRESETS
from models.backbones.source_config import (
    UNEVALUATED,
    SourceConfigError,
    parse_mmaction2_text,
    read_mmaction2_config,
    read_pyslowfast_yaml,
    read_source_config,
)


class _Exploit:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/c2_should_never_exist",))


def test_caffe2_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {"blobs": {"conv1_w": np.zeros((1, 3, 1, 7, 7), np.float32)}, "x": _Exploit()}, f
        )
    with pytest.raises(ValueError, match=r"evil\.pkl: refusing to load (os|posix)\.makedirs"):
        read_checkpoint_file(path)
    assert not Path("/tmp/c2_should_never_exist").exists()


def test_caffe2_pickle_of_numpy_blobs_reads(tmp_path: Path) -> None:
    model = slowfast_tiny()
    depths = model.config.depths
    blobs = {
        caffe2_name(k, depths): np.full(tuple(v.shape), 0.5, np.float32)
        for k, v in model.state_dict().items()
        if caffe2_name(k, depths) is not None
    }
    assert "t_res2_0_branch2c_bn_subsample_w" in blobs  # lateral after res2 (1 block)
    assert "res_conv1_bn_riv" in blobs and "t_conv1_w" in blobs
    path = tmp_path / "SLOWFAST.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "model_iter": np.array(3)}, f, protocol=2)
    file = read_checkpoint_file(path)
    assert file.container == CAFFE2_PICKLE
    arch = read_architecture(file.tensors)
    assert arch["depths"] == (1, 1, 1, 1) and arch["width"] == 8 and arch["fusion_kernel"] == 5


def test_legacy_torch_pickle_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    assert read_checkpoint_file(path).tensors["a"].tolist() == [1.0, 1.0]


def test_mmaction2_config_is_parsed_not_run(tmp_path: Path) -> None:
    text = (
        "import os\n"
        f"os.makedirs({str(tmp_path / 'ran')!r})\n"
        "norm = dict(mean=[1.0, 2.0], std=[3.0, -4.0])\n"
        "model = dict(backbone=dict(type='ResNet3dSlowOnly', depth=50), norm=norm,\n"
        "             lr=0.1 * 8, hook=__import__('os'))\n"
    )
    names = parse_mmaction2_text(text, source="cfg.py")
    assert names["model"]["norm"] == {"mean": [1.0, 2.0], "std": [3.0, -4.0]}
    assert names["model"]["lr"] is UNEVALUATED and names["model"]["hook"] is UNEVALUATED
    assert not (tmp_path / "ran").exists()


def test_mmaction2_base_is_merged_one_level(tmp_path: Path) -> None:
    (tmp_path / "base.py").write_text(
        "model = dict(backbone=dict(type='ResNet3dSlowOnly', depth=50, dilations=(1, 1, 1, 2)))\n"
    )
    child = tmp_path / "child.py"
    child.write_text("_base_ = './base.py'\nmodel = dict(backbone=dict(dilations=(1, 1, 1, 1)))\n")
    merged = read_mmaction2_config(child)
    assert merged["model"]["backbone"] == {
        "type": "ResNet3dSlowOnly", "depth": 50, "dilations": [1, 1, 1, 1],
    }  # fmt: skip
    arch = read_source_config(child)
    assert arch["family"] == "slowonly" and arch["dilations"] == (1, 1, 1, 1)
    (tmp_path / "bad.py").write_text("_base_ = ['missing.py']\n")
    with pytest.raises(SourceConfigError, match=r"bad\.py: _base_ file .*missing\.py not found"):
        read_source_config(tmp_path / "bad.py")


def test_unsupported_sources_are_named() -> None:
    with pytest.raises(SourceConfigError, match=r"x\.yaml: MODEL\.ARCH 'i3d' is not slowfast"):
        read_pyslowfast_yaml("MODEL:\n  ARCH: i3d\n", source="x.yaml")
    with pytest.raises(SourceConfigError, match=r"NONLOCAL\.GROUP other than 1"):
        read_pyslowfast_yaml("NONLOCAL:\n  GROUP: [[2, 2], [1, 1], [1, 1], [1, 1]]\n", source="y")
    with pytest.raises(SourceConfigError, match="unknown pytorchvideo hub model 'x3d_s'"):
        read_source_config("pytorchvideo:x3d_s")
    with pytest.raises(SourceConfigError, match="is not a file, a preset"):
        read_source_config("pyslowfast/NOPE")


def test_every_preset_builds_a_valid_config() -> None:
    kinetics = {"pyslowfast/SLOWFAST_8x8_R50", "pyslowfast/SLOWFAST_4x16_R50",
                "pytorchvideo/slowfast_r50", "pytorchvideo/slowfast_r101",
                "pytorchvideo/slowfast_16x8_r101_50_50", "pytorchvideo/slow_r50"}  # fmt: skip
    for name, arch in PRESETS.items():
        fields = {k: v for k, v in arch.items() if k != "family"}
        fields["fast_pathway"] = arch["family"] == "slowfast"
        config = SlowFastConfig(**fields)
        # Detection (AVA) entries keep output stride 16; Kinetics classifiers stride 32.
        assert config.stride == (32 if name in kinetics else 16), name
        assert config.dilations[3] == (1 if name in kinetics or "mmaction2" in name else 2), name


def test_per_block_kernels_and_non_local_validation() -> None:
    config = SlowFastConfig(depths=(1, 1, 3, 1), slow_temporal_kernels=(1, 1, (3, 1, 1), 3))
    assert config.block_temporal_kernels("slow", 2) == (3, 1, 1)
    assert config.block_temporal_kernels("fast", 2) == (3, 3, 3)
    with pytest.raises(
        ValueError, match=r"slow_temporal_kernels\[2\] must be a positive odd int or 3"
    ):
        SlowFastConfig(depths=(1, 1, 3, 1), slow_temporal_kernels=(1, 1, (3, 1), 3))
    with pytest.raises(ValueError, match=r"slow_nonlocal\[2\] holds block indices outside 0\.\.2"):
        SlowFastConfig(depths=(1, 1, 3, 1), slow_nonlocal=((), (), (3,), ()))
    with pytest.raises(ValueError, match=r"SlowOnly network .* takes alpha=1"):
        SlowFastConfig(fast_pathway=False, alpha=4)
