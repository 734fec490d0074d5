"""Video backbones: clip ``[B, 3, T, H, W]`` in, feature map ``[B, C, H/stride, W/stride]`` out.

Every backbone has ``out_channels`` and ``stride`` attributes. Weights come from local
files only (``weights=`` / ``weights_path=``); nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from models.backbones.builders import (
    ArchitectureUnknownError,
    resolve_architecture,
    slowfast_r50,
    slowfast_r101,
    slowfast_tiny,
    slowonly_r50,
    slowonly_r101,
)
from models.backbones.checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    ShapeMismatch,
    detect_scheme,
    infer_config_overrides,
    load_slowfast_checkpoint,
    read_architecture,
    read_checkpoint,
)
from models.backbones.slowfast import SlowFast, SlowFastConfig, pool_pathways
from models.backbones.torchvision_video import TorchvisionVideoBackbone, TorchvisionVideoName


def _torchvision(name: TorchvisionVideoName) -> Callable[..., nn.Module]:
    return lambda **kw: TorchvisionVideoBackbone(name, **kw)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "slowfast_r50": slowfast_r50,
    "slowfast_r101": slowfast_r101,
    "slowfast_tiny": slowfast_tiny,
    "slowonly_r50": slowonly_r50,
    "slowonly_r101": slowonly_r101,
    "r3d_18": _torchvision("r3d_18"),
    "r2plus1d_18": _torchvision("r2plus1d_18"),
    "mvit_v2_s": _torchvision("mvit_v2_s"),
    "swin3d_t": _torchvision("swin3d_t"),
    "s3d": _torchvision("s3d"),
}


def build_backbone(name: str, **kw: Any) -> nn.Module:
    """Build a backbone by name (``BACKBONES`` keys); ``kw`` go to its builder.

    SlowFast / SlowOnly builders take ``weights=`` and ``source_config=`` (a PySlowFast
    YAML, an MMAction2 Python config, ``pytorchvideo:<hub name>`` or a preset name from
    ``models.backbones.presets.PRESETS``) plus any ``SlowFastConfig`` field; torchvision
    models take ``weights_path=``.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kw)


__all__ = [
    "BACKBONES",
    "ArchitectureUnknownError",
    "CheckpointMismatchError",
    "LoadReport",
    "ShapeMismatch",
    "SlowFast",
    "SlowFastConfig",
    "TorchvisionVideoBackbone",
    "TorchvisionVideoName",
    "build_backbone",
    "detect_scheme",
    "infer_config_overrides",
    "load_slowfast_checkpoint",
    "pool_pathways",
    "read_architecture",
    "read_checkpoint",
    "resolve_architecture",
    "slowfast_r50",
    "slowfast_r101",
    "slowfast_tiny",
    "slowonly_r50",
    "slowonly_r101",
]
