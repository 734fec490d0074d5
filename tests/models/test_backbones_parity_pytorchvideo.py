"""Parity with pytorchvideo (the reference code itself, a test-only dependency): reference
networks with random weights, saved as pytorchvideo saves them, loaded through
``build_backbone``; res5 maps of one clip compared in fp32 on CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from models.backbones import ArchitectureUnknownError, build_backbone
from tests.models.parity_testing import linspace_slow, max_abs_diff, randomize_

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pytorchvideo.models.resnet import create_resnet_with_roi_head
    from pytorchvideo.models.slowfast import create_slowfast, create_slowfast_with_roi_head

TOL = 1e-5


def _clip(frames: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def _reference_res5(blocks: torch.nn.ModuleList, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs
    with torch.no_grad():
        for block in blocks[:5]:  # stem+fusion, res2..res5 (the head follows)
            x = block(x)
    return x


@pytest.fixture(scope="module")
def detection_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """``slowfast_r50_detection``'s network (``create_slowfast_with_roi_head`` defaults),
    random weights, saved as its ``state_dict`` (keys under ``model.``)."""
    torch.manual_seed(0)
    reference = randomize_(create_slowfast_with_roi_head(), seed=3)
    path = tmp_path_factory.mktemp("ptv") / "slowfast_r50_detection.pyth"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_slowfast_r50_detection_res5_maps_equal(detection_checkpoint) -> None:
    path, reference = detection_checkpoint
    model = build_backbone(
        "slowfast_r50", weights=path, source_config="pytorchvideo:slowfast_r50_detection"
    )
    assert model.config.dilations == (1, 1, 1, 2) and model.config.fusion_kernel == 7
    clip = _clip(16)
    expected = _reference_res5(reference.model.blocks, [linspace_slow(clip, 4), clip])
    with torch.no_grad():
        slow, fast = model.eval()(clip, return_temporal=True)
    assert max_abs_diff(slow, expected[0]) <= TOL
    assert max_abs_diff(fast, expected[1]) <= TOL
    assert slow.abs().mean() > 0.1  # a real signal, not a collapsed map


def test_the_same_file_into_a_differently_dilated_network_differs(detection_checkpoint) -> None:
    # The check above can fail: dilation 1 (what MMAction2's AVA configs use) changes res5.
    path, reference = detection_checkpoint
    model = build_backbone(
        "slowfast_r50", weights=path, spatial_strides=(1, 2, 2, 1), dilations=(1, 1, 1, 1),
        alpha=4, slow_sampling="linspace",
    )  # fmt: skip
    clip = _clip(16)
    expected = _reference_res5(reference.model.blocks, [linspace_slow(clip, 4), clip])
    with torch.no_grad():
        slow, _ = model.eval()(clip, return_temporal=True)
    assert max_abs_diff(slow, expected[0]) > 1e-2


def test_pytorchvideo_weights_without_a_config_are_refused(detection_checkpoint) -> None:
    path, _ = detection_checkpoint
    with pytest.raises(ArchitectureUnknownError, match=r"pytorchvideo naming.*dilations"):
        build_backbone("slowfast_r50", weights=path)


def test_kinetics_create_slowfast_res5_maps_equal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = randomize_(create_slowfast(slowfast_fusion_conv_kernel_size=(7, 1, 1)), seed=4)
    path = tmp_path / "slowfast_r50.pyth"
    torch.save(reference.state_dict(), path)
    model = build_backbone("slowfast_r50", weights=path, source_config="pytorchvideo:slowfast_r50")
    assert (model.config.spatial_strides, model.stride) == ((1, 2, 2, 2), 32)
    clip = _clip(16)
    expected = _reference_res5(reference.blocks, [linspace_slow(clip, 4), clip])
    with torch.no_grad():
        slow, fast = model.eval()(clip, return_temporal=True)
    assert max_abs_diff(slow, expected[0]) <= TOL
    assert max_abs_diff(fast, expected[1]) <= TOL


def test_slow_r50_detection_res5_map_equal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = randomize_(create_resnet_with_roi_head(), seed=5)
    path = tmp_path / "slow_r50_detection.pyth"
    torch.save(reference.state_dict(), path)
    model = build_backbone(
        "slowonly_r50", weights=path, source_config="pytorchvideo:slow_r50_detection"
    )
    clip = _clip(4)
    expected = _reference_res5(reference.model.blocks, clip)
    with torch.no_grad():
        slow, fast = model.eval()(clip, return_temporal=True)
    assert fast.shape[1] == 0 and model.out_channels == 2048
    assert max_abs_diff(slow, expected) <= TOL
