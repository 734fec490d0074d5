"""ACAR-Net's backbone architecture from its YAML config (``configs/AVA/*.yaml`` there).

ACAR-Net's ``SlowFast`` (its ``models/backbones/slowfast.py``) is PySlowFast's AVA network
written out by hand: 1×7×7 Slow / 5×7×7 Fast stems, Slow temporal kernel 3 from res4 on,
res5 with stride 1 and dilation 2, laterals of ``fuse_kernel_size``×1×1 with stride alpha
and ``2·beta·C`` channels. Its config (``model.backbone``) names ``arch`` (``slowfast50``,
``slowfast101``, …) and the constructor's keyword arguments; their defaults there are
``alpha=8, beta=0.125, fuse_only_conv=True, fuse_kernel_size=5, slow_full_span=False``.
``slow_full_span`` takes the Slow frames with ``linspace`` (else ``x[:, :, ::alpha]``),
``fuse_only_conv: False`` adds BN + ReLU after each lateral conv. The clip is
``TemporalCenterCrop`` ``size`` frames at ``step`` (both released configs: 64 at 2, i.e. a
32-frame Fast clip) normalised by ``Normalize`` mean / std after ``ToTensor(255)``.

The widths and depths are left to the tensors (a checkpoint reveals them), so a preset
also describes a reduced-width network built from ACAR-Net's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.backbones.slowfast import SlowFastConfig

_ARCH_DEPTHS = {
    "slowfast50": (3, 4, 6, 3),
    "slowfast101": (3, 4, 23, 3),
    "slowfast152": (3, 8, 36, 3),
    "slowfast200": (3, 24, 36, 3),
}
_DEFAULTS = {
    "alpha": 8,
    "beta": 0.125,
    "fuse_only_conv": True,
    "fuse_kernel_size": 5,
    "slow_full_span": False,
}


class ACARNetConfigError(ValueError):
    """An ACAR-Net config this reader cannot turn into a SlowFast architecture."""


def is_acar_net_config(cfg: Mapping[str, Any]) -> bool:
    """An ACAR-Net YAML (``model.backbone.arch``), not a PySlowFast one."""
    model = cfg.get("model")
    return isinstance(model, Mapping) and isinstance(model.get("backbone"), Mapping)


def acar_net_architecture(
    backbone: Mapping[str, Any],
    *,
    clip_size: int = 64,
    clip_step: int = 2,
    mean: Any = (0.45, 0.45, 0.45),
    std: Any = (0.225, 0.225, 0.225),
    source: str,
) -> dict[str, Any]:
    """:class:`SlowFastConfig` fields of ACAR-Net's ``model.backbone`` (plus ``family``).

    ``clip_size`` / ``clip_step``: its ``TemporalCenterCrop`` (source frames, stride);
    ``mean`` / ``std``: its ``Normalize`` (0-1 pixel units).
    """
    arch = backbone.get("arch")
    if arch not in _ARCH_DEPTHS:
        raise ACARNetConfigError(
            f"{source}: model.backbone.arch {arch!r} is not one of {sorted(_ARCH_DEPTHS)}"
        )
    kwargs = backbone.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or set(kwargs) - set(_DEFAULTS):
        raise ACARNetConfigError(
            f"{source}: model.backbone.kwargs may hold {sorted(_DEFAULTS)}, got {kwargs!r}"
        )
    kw = {**_DEFAULTS, **kwargs}
    beta_inv = round(1 / float(kw["beta"]))
    alpha = int(kw["alpha"])
    frames = int(clip_size) // int(clip_step)
    if abs(beta_inv * float(kw["beta"]) - 1) > 1e-6 or frames % alpha:
        raise ACARNetConfigError(
            f"{source}: beta {kw['beta']} must be 1/n and the {frames}-frame clip a multiple"
            f" of alpha {alpha}"
        )
    fields: dict[str, Any] = {
        "family": "slowfast",
        "spatial_strides": (1, 2, 2, 1),
        "dilations": (1, 1, 1, 2),
        "slow_temporal_kernels": (1, 1, 3, 3),
        "fast_temporal_kernels": (3, 3, 3, 3),
        "slow_stem_temporal_kernel": 1,
        "fast_stem_temporal_kernel": 5,
        "alpha": alpha,
        "beta_inv": beta_inv,
        "fusion_ratio": 2,
        "fusion_kernel": int(kw["fuse_kernel_size"]),
        "lateral_norm": not kw["fuse_only_conv"],
        "slow_sampling": "linspace" if kw["slow_full_span"] else "stride",
        "t_slow": frames // alpha,
        "frame_stride": int(clip_step),
        "input_mean": tuple(float(v) for v in mean),
        "input_std": tuple(float(v) for v in std),
    }
    SlowFastConfig(**{k: v for k, v in fields.items() if k != "family"})  # validates
    return fields


def read_acar_net_yaml(cfg: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Architecture fields of a parsed ACAR-Net YAML (``val`` augmentation for the clip)."""
    clip, mean, std = {}, (0.45,) * 3, (0.225,) * 3
    val: Mapping[str, Any] = cfg["val"] if isinstance(cfg.get("val"), Mapping) else {}
    augmentation = val.get("augmentation") or {}
    temporal = augmentation.get("temporal") or {}
    if temporal.get("type") == "TemporalCenterCrop":
        kwargs = temporal.get("kwargs") or {}
        clip = {"clip_size": kwargs.get("size", 64), "clip_step": kwargs.get("step", 2)}
    for step in augmentation.get("spatial") or []:
        if isinstance(step, Mapping) and step.get("type") == "Normalize":
            kwargs = step.get("kwargs") or {}
            mean, std = kwargs.get("mean", mean), kwargs.get("std", std)
    return acar_net_architecture(
        cfg["model"]["backbone"], **clip, mean=mean, std=std, source=source
    )
