"""Named architectures of the published SlowFast / SlowOnly zoo entries.

Each preset is the relevant part of the entry's own config (PySlowFast YAML keys,
MMAction2 ``model.backbone`` dict, pytorchvideo hub name) run through the same readers
as a config file, so a preset and the file it abbreviates give the same network.
Pass one as ``source_config="pyslowfast/SLOWFAST_32x2_R50_SHORT"``.
"""

from __future__ import annotations

from typing import Any

from models.backbones.acar_net_config import acar_net_architecture
from models.backbones.source_config import (
    PYTORCHVIDEO_HUB,
    mmaction2_architecture,
    pyslowfast_architecture,
)

_SF = [[1, 1], [2, 2], [2, 2], [1, 1]]  # PySlowFast AVA: res5 not strided ...
_DIL = [[1, 1], [1, 1], [1, 1], [2, 2]]  # ... but dilated
_KIN_SF = [[1, 1], [2, 2], [2, 2], [2, 2]]
_NO_DIL = [[1, 1]] * 4
_TEMP = [[3, 3], [4, 4], [6, 6], [3, 3]]


def _pysf(
    arch: str,
    depth: int,
    frames: int,
    rate: int,
    fusion: int = 5,
    alpha: int = 4,
    strides: Any = _SF,
    dilations: Any = _DIL,
    nonlocal_res4: list[int] | None = None,
    temp: Any = _TEMP,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "MODEL": {"ARCH": arch},
        "DATA": {"NUM_FRAMES": frames, "SAMPLING_RATE": rate},
        "RESNET": {
            "DEPTH": depth,
            "NUM_BLOCK_TEMP_KERNEL": temp,
            "SPATIAL_STRIDES": strides,
            "SPATIAL_DILATIONS": dilations,
        },
        "SLOWFAST": {"ALPHA": alpha, "BETA_INV": 8, "FUSION_KERNEL_SZ": fusion},
    }
    if nonlocal_res4:
        cfg["NONLOCAL"] = {
            "LOCATION": [[[], []], [[], []], [nonlocal_res4, []], [[], []]],
            "POOL": [[[2, 2, 2], [2, 2, 2]]] * 4,
            "INSTANTIATION": "dot_product",
        }
    return pyslowfast_architecture(cfg, source=f"preset {arch} R{depth}")


_MM_SLOW = dict(
    depth=50,
    lateral=True,
    conv1_kernel=(1, 7, 7),
    dilations=(1, 1, 1, 1),
    conv1_stride_t=1,
    pool1_stride_t=1,
    inflate=(0, 0, 1, 1),
    spatial_strides=(1, 2, 2, 1),
)
_MM_FAST = dict(
    depth=50,
    lateral=False,
    base_channels=8,
    conv1_kernel=(5, 7, 7),
    conv1_stride_t=1,
    pool1_stride_t=1,
    spatial_strides=(1, 2, 2, 1),
)
_MM_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])


def _mm_slowfast(rate: int, depth: int = 50) -> dict[str, Any]:
    backbone = dict(
        type="ResNet3dSlowFast",
        resample_rate=rate,
        speed_ratio=rate,
        channel_ratio=8,
        slow_pathway={**_MM_SLOW, "depth": depth},
        fast_pathway={**_MM_FAST, "depth": depth},
    )
    model = {"backbone": backbone, "data_preprocessor": _MM_NORM}
    arch = mmaction2_architecture({"model": model}, source=f"preset mmaction2 slowfast r{depth}")
    return {**arch, "t_slow": 32 // rate, "frame_stride": 2}


def _mm_slowonly(frames: int, stride: int, depth: int = 50) -> dict[str, Any]:
    backbone = dict(
        type="ResNet3dSlowOnly",
        depth=depth,
        lateral=False,
        conv1_kernel=(1, 7, 7),
        conv1_stride_t=1,
        pool1_stride_t=1,
        spatial_strides=(1, 2, 2, 1),
    )
    model = {"backbone": backbone, "data_preprocessor": _MM_NORM}
    arch = mmaction2_architecture({"model": model}, source=f"preset mmaction2 slowonly r{depth}")
    return {**arch, "t_slow": frames, "frame_stride": stride}


PRESETS: dict[str, dict[str, Any]] = {
    # PySlowFast AVA (configs/AVA/*.yaml, configs/AVA/c2/*.yaml)
    "pyslowfast/SLOWFAST_32x2_R50_SHORT": _pysf("slowfast", 50, 32, 2, fusion=7),
    "pyslowfast/SLOWFAST_32x2_R50": _pysf("slowfast", 50, 32, 2, fusion=7),
    "pyslowfast/SLOWFAST_32x2_R101_50_50": _pysf("slowfast", 101, 32, 2, nonlocal_res4=[6, 13, 20]),
    "pyslowfast/SLOWFAST_64x2_R101_50_50": _pysf("slowfast", 101, 64, 2, nonlocal_res4=[6, 13, 20]),
    "pyslowfast/SLOW_8x8_R50_SHORT": _pysf(
        "slow",
        50,
        4,
        16,
        strides=[[1], [2], [2], [1]],
        dilations=[[1], [1], [1], [2]],
        temp=[[3], [4], [6], [3]],
    ),
    # PySlowFast Kinetics (configs/Kinetics/c2/*.yaml)
    "pyslowfast/SLOWFAST_8x8_R50": _pysf(
        "slowfast", 50, 32, 2, fusion=7, strides=_KIN_SF, dilations=_NO_DIL
    ),
    "pyslowfast/SLOWFAST_4x16_R50": _pysf(
        "slowfast", 50, 32, 2, fusion=5, alpha=8, strides=_KIN_SF, dilations=_NO_DIL
    ),
    # MMAction2 AVA (configs/detection/slowfast, configs/detection/slowonly): dilation 1
    "mmaction2/slowfast_r50_4x16_ava": _mm_slowfast(8),
    "mmaction2/slowfast_r50_8x8_ava": _mm_slowfast(4),
    "mmaction2/slowonly_r50_4x16_ava": _mm_slowonly(4, 16),
    "mmaction2/slowonly_r101_8x8_ava": _mm_slowonly(8, 8, depth=101),
    # ACAR-Net AVA (configs/AVA/*.yaml there; widths and depths from the tensors)
    "acar-net/SLOWFAST_R50_ACAR_HR2O": acar_net_architecture(
        {
            "arch": "slowfast50",
            "kwargs": {
                "alpha": 4,
                "beta": 0.125,
                "fuse_only_conv": False,
                "fuse_kernel_size": 7,
                "slow_full_span": True,
            },
        },
        source="preset acar-net/SLOWFAST_R50_ACAR_HR2O",
    ),
    "acar-net/SLOWFAST_R101_ACAR_HR2O_DEPTH1": acar_net_architecture(
        {"arch": "slowfast101", "kwargs": {"alpha": 4, "beta": 0.125}},
        source="preset acar-net/SLOWFAST_R101_ACAR_HR2O_DEPTH1",
    ),
    # pytorchvideo hub
    **{f"pytorchvideo/{name}": arch for name, arch in PYTORCHVIDEO_HUB.items()},
}
