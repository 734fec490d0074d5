"""Parity with MMAction2: res5 maps its own code computed (fixtures made by
tests/fixtures/parity/make_mmaction2_fixtures.py from mmaction2 1.2.0, AVA backbones at
base width 8, random weights drawn by tensor name) against bankflow loading the same
weights from an MMAction2 ``.pth`` with the architecture read from an MMAction2 config
that is parsed, never executed."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import ArchitectureUnknownError, build_backbone
from tests.models.parity_testing import max_abs_diff, named_random_tensor

FIXTURES = Path(__file__).parents[1] / "fixtures" / "parity"
TOL = 1e-5

SLOWFAST_BACKBONE = """dict(
        type='ResNet3dSlowFast', pretrained=None, resample_rate=8, speed_ratio=8,
        channel_ratio=8,
        slow_pathway=dict(
            type='resnet3d', depth=50, pretrained=None, lateral=True, base_channels=8,
            conv1_kernel=(1, 7, 7), dilations=(1, 1, 1, 1), conv1_stride_t=1,
            pool1_stride_t=1, inflate=(0, 0, 1, 1), spatial_strides=(1, 2, 2, 1)),
        fast_pathway=dict(
            type='resnet3d', depth=50, pretrained=None, lateral=False, base_channels=1,
            conv1_kernel=(5, 7, 7), conv1_stride_t=1, pool1_stride_t=1,
            spatial_strides=(1, 2, 2, 1)))"""
SLOWONLY_BACKBONE = """dict(
        type='ResNet3dSlowOnly', depth=50, pretrained=None, base_channels=8,
        conv1_kernel=(1, 7, 7), conv1_stride_t=1, pool1_stride_t=1,
        spatial_strides=(1, 2, 2, 1))"""


def _write_configs(tmp_path: Path, backbone: str) -> Path:
    """A base file with the model and a child that inherits it (MMAction2's layout), plus
    lines that would leave a trace if the config were ever executed."""
    base = tmp_path / "ava_base.py"
    base.write_text(
        "model = dict(\n"
        "    type='FastRCNN', _scope_='mmdet',\n"
        f"    backbone={backbone},\n"
        "    roi_head=dict(type='AVARoIHead', bbox_head=dict(num_classes=81)),\n"
        "    data_preprocessor=dict(type='ActionDataPreprocessor',\n"
        "        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],\n"
        "        format_shape='NCTHW'))\n"
    )
    child = tmp_path / "ava_child.py"
    child.write_text(
        "import os\n"
        "_base_ = ['ava_base.py']\n"
        f"os.makedirs({str(tmp_path / 'executed')!r})\n"
        "val_pipeline = [dict(type='SampleAVAFrames', clip_len=32, frame_interval=2)]\n"
        "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1 * 8 / 16))\n"
        "model = dict(roi_head=dict(bbox_head=dict(dropout_ratio=0.5)))\n"
    )
    return child


def _checkpoint(tmp_path: Path, fixture: dict, meta: dict | None = None) -> Path:
    state = {
        f"backbone.{k}": named_random_tensor(k, tuple(shape))
        for k, shape in fixture["shapes"].items()
    }
    state = {k: v.long() if k.endswith("num_batches_tracked") else v for k, v in state.items()}
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 288)
    path = tmp_path / "mmaction2.pth"
    # mmengine writes numpy scalars and arrays into meta; they must load with weights_only.
    meta = meta or {"epoch": np.int64(20), "seed": np.array([3, 4]), "mmengine_version": "0.10.7"}
    torch.save({"meta": meta, "state_dict": state}, path)
    return path


def _maps(model, fixture: dict):
    clip = named_random_tensor(
        "clip", (1, 3, fixture["frames"], fixture["size"], fixture["size"]), fan_in=2
    )
    with torch.no_grad():
        return model.eval()(clip, return_temporal=True)


def test_slowfast_ava_res5_maps_equal(tmp_path: Path) -> None:
    fixture = torch.load(FIXTURES / "mmaction2_slowfast_r50_ava.pt", weights_only=True)
    config = _write_configs(tmp_path, SLOWFAST_BACKBONE)
    model = build_backbone(
        "slowfast_r50", weights=_checkpoint(tmp_path, fixture), source_config=config
    )
    assert not (tmp_path / "executed").exists()  # parsed, not run
    assert model.config.dilations == (1, 1, 1, 1) and model.config.lateral_norm is False
    assert model.config.input_mean == pytest.approx((0.485, 0.456, 0.406), abs=1e-6)
    slow, fast = _maps(model, fixture)
    assert max_abs_diff(slow, fixture["res5"][0]) <= TOL
    assert max_abs_diff(fast, fixture["res5"][1]) <= TOL
    assert slow.abs().mean() > 0.1


def test_slowfast_ava_weights_refused_without_config_and_differ_when_dilated(
    tmp_path: Path,
) -> None:
    fixture = torch.load(FIXTURES / "mmaction2_slowfast_r50_ava.pt", weights_only=True)
    path = _checkpoint(tmp_path, fixture)
    # What used to happen silently: the file loads fully into the res5-dilated network.
    with pytest.raises(ArchitectureUnknownError, match=r"mmaction2 naming\) does not say its"):
        build_backbone("slowfast_r50", weights=path)
    dilated = build_backbone(
        "slowfast_r50", weights=path, spatial_strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
        alpha=8, slow_sampling="stride",
    )  # fmt: skip
    slow, _ = _maps(dilated, fixture)
    assert max_abs_diff(slow, fixture["res5"][0]) > 1e-2


def test_slowonly_ava_res5_map_equal(tmp_path: Path) -> None:
    fixture = torch.load(FIXTURES / "mmaction2_slowonly_r50_ava.pt", weights_only=True)
    config = _write_configs(tmp_path, SLOWONLY_BACKBONE)
    model = build_backbone(
        "slowonly_r50", weights=_checkpoint(tmp_path, fixture), source_config=config
    )
    slow, fast = _maps(model, fixture)
    assert fast.shape[1] == 0
    assert max_abs_diff(slow, fixture["res5"][0]) <= TOL


def test_config_embedded_in_meta_is_read(tmp_path: Path) -> None:
    fixture = torch.load(FIXTURES / "mmaction2_slowonly_r50_ava.pt", weights_only=True)
    text = f"model = dict(type='FastRCNN', backbone={SLOWONLY_BACKBONE})\n"
    for key in ("config", "cfg"):  # mmcv 1.x, mmengine
        path = _checkpoint(tmp_path, fixture, meta={key: text, "epoch": np.int64(1)})
        model = build_backbone("slowonly_r50", weights=path)
        slow, _ = _maps(model, fixture)
        assert max_abs_diff(slow, fixture["res5"][0]) <= TOL


def test_other_python_objects_in_meta_are_refused(tmp_path: Path) -> None:
    fixture = torch.load(FIXTURES / "mmaction2_slowonly_r50_ava.pt", weights_only=True)
    path = _checkpoint(tmp_path, fixture, meta={"args": argparse.Namespace(lr=0.1)})
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*mmaction2\.pth.*allow_pickle"):
        build_backbone("slowonly_r50", weights=path)


def test_a_slowonly_file_into_a_slowfast_builder_is_refused(tmp_path: Path) -> None:
    fixture = torch.load(FIXTURES / "mmaction2_slowonly_r50_ava.pt", weights_only=True)
    config = _write_configs(tmp_path, SLOWONLY_BACKBONE)
    with pytest.raises(ValueError, match="describes a slowonly network"):
        build_backbone("slowfast_r50", weights=_checkpoint(tmp_path, fixture), source_config=config)
