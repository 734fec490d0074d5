"""Keyword-only SlowFast builders (torchvision style), optionally loading local weights.

``slowfast_r50()`` is the 8×8 detection backbone (α=4, 8 Slow / 32 Fast frames);
``slowfast_r50(alpha=8, t_slow=4)`` is 4×16. Both sample the Fast clip every 2nd source
frame (``frame_stride = τ/α``). ``weights`` is a local PySlowFast/MMAction2/bankflow
checkpoint: its lateral kernel size and lateral BN are read off the file, then it is loaded
strictly. Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.backbones.checkpoint import (
    infer_config_overrides,
    load_slowfast_checkpoint,
    read_checkpoint,
)
from models.backbones.slowfast import SlowFast, SlowFastConfig


def _build(
    *,
    weights: str | Path | None,
    fusion_kernel: int | None,
    lateral_norm: bool | None,
    allow_pickle: bool,
    **fields: Any,
) -> SlowFast:
    """The body of every builder, called with the builder's arguments (``**locals()``).

    ``fields`` are ``SlowFastConfig`` fields; the named arguments say how to load weights.
    """
    explicit = {"fusion_kernel": fusion_kernel, "lateral_norm": lateral_norm}
    explicit = {k: v for k, v in explicit.items() if v is not None}
    if weights is None:
        return SlowFast(SlowFastConfig(**fields, **explicit))
    state = read_checkpoint(weights, allow_pickle=allow_pickle)
    # What the caller passed wins over what the checkpoint suggests.
    model = SlowFast(SlowFastConfig(**fields, **{**infer_config_overrides(state), **explicit}))
    report = load_slowfast_checkpoint(model, state, strict=False)
    if not report.ok:
        report.source = str(weights)
        raise ValueError(f"weights do not fit this SlowFast:\n{report}")
    return model


def slowfast_r50(
    *,
    alpha: int = 4,
    t_slow: int = 8,
    frame_stride: int = 2,
    weights: str | Path | None = None,
    frozen_bn: bool = False,
    fusion_kernel: int | None = None,
    lateral_norm: bool | None = None,
    allow_pickle: bool = False,
) -> SlowFast:
    """SlowFast-R50 (3, 4, 6, 3), β=1/8, res5 dilated: ``[B, 3, α·t_slow, H, W] ->
    [B, 2304, H/16, W/16]``."""
    return _build(depths=(3, 4, 6, 3), **locals())


def slowfast_r101(
    *,
    alpha: int = 4,
    t_slow: int = 8,
    frame_stride: int = 2,
    weights: str | Path | None = None,
    frozen_bn: bool = False,
    fusion_kernel: int | None = None,
    lateral_norm: bool | None = None,
    allow_pickle: bool = False,
) -> SlowFast:
    """SlowFast-R101 (3, 4, 23, 3), β=1/8, res5 dilated: ``[B, 3, α·t_slow, H, W] ->
    [B, 2304, H/16, W/16]``."""
    return _build(depths=(3, 4, 23, 3), **locals())


def slowfast_tiny(
    *,
    width: int = 8,
    depths: tuple[int, int, int, int] = (1, 1, 1, 1),
    alpha: int = 4,
    t_slow: int = 4,
    frame_stride: int = 2,
    spatial_strides: tuple[int, int, int, int] = (1, 2, 2, 1),
    dilations: tuple[int, int, int, int] = (1, 1, 1, 2),
    weights: str | Path | None = None,
    frozen_bn: bool = False,
    fusion_kernel: int | None = None,
    lateral_norm: bool | None = None,
    allow_pickle: bool = False,
) -> SlowFast:
    """The same SlowFast with few channels and blocks, for CPU demos and tests.

    Defaults: width 8 (Fast width 1), one bottleneck per stage, a 16-frame clip;
    ``[B, 3, 16, H, W] -> [B, 288, H/16, W/16]``. ``spatial_strides=(1, 1, 2, 1)`` gives
    an output stride of 8, for small frames where a person spans only a few cells at 16.
    """
    return _build(
        **{
            **locals(),
            "depths": tuple(depths),
            "spatial_strides": tuple(spatial_strides),
            "dilations": tuple(dilations),
        }
    )
