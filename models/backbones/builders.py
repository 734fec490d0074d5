"""Keyword-only SlowFast / SlowOnly builders (torchvision style), optionally loading weights.

``slowfast_r50()`` is the 8×8 detection backbone (α=4, 8 Slow / 32 Fast frames);
``slowfast_r50(alpha=8, t_slow=4)`` is 4×16. Keyword arguments are
:class:`~models.backbones.slowfast.SlowFastConfig` fields.

With ``weights`` (a local PySlowFast ``.pyth`` / Caffe2 ``.pkl``, MMAction2 ``.pth``,
pytorchvideo or bankflow file) the architecture is assembled, in rising precedence, from
the builder's defaults, the source's config (``source_config``: a file, a preset or
``pytorchvideo:<hub name>``; else the config the checkpoint embeds), what the tensors
reveal (:func:`~models.backbones.checkpoint.read_architecture`) and the keyword arguments;
then the weights load strictly. A foreign checkpoint whose strides, dilations, alpha and
Slow frame sampling no config states (and no keyword argument gives) is refused: loading
it into the default network would compute something else without any error.
Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.backbones.checkpoint import (
    BANKFLOW,
    detect_naming,
    load_slowfast_checkpoint,
    read_architecture,
)
from models.backbones.formats import CheckpointFile, read_checkpoint_file
from models.backbones.slowfast import SlowFast, SlowFastConfig
from models.backbones.source_config import (
    DEPTHS,
    UNREADABLE,
    SourceConfigError,
    mmaction2_architecture,
    parse_mmaction2_text,
    read_pyslowfast_yaml,
    read_source_config,
)

_SLOW_ONLY = {"fast_pathway": False, "alpha": 1, "t_slow": 8, "frame_stride": 8}


class ArchitectureUnknownError(ValueError):
    """Weights whose architecture neither a config nor the caller states."""


def _embedded(file: CheckpointFile) -> tuple[dict[str, Any], str | None]:
    """The architecture the checkpoint's own embedded config states, and where from."""
    where = f"the config embedded in {file.path}"
    try:
        if file.pyslowfast_cfg:
            return read_pyslowfast_yaml(file.pyslowfast_cfg, source=where), where
        if file.mmaction2_cfg:
            names = parse_mmaction2_text(file.mmaction2_cfg, source=where)
            return mmaction2_architecture(names, source=where), where
    except SourceConfigError:
        pass  # an embedded config we cannot read states nothing: the caller must
    return {}, None


def resolve_architecture(
    family: str,
    base: dict[str, Any],
    given: dict[str, Any],
    *,
    weights: str | Path | None = None,
    source_config: str | Path | None = None,
    allow_pickle: bool = False,
) -> tuple[SlowFastConfig, CheckpointFile | None, list[str]]:
    """The config of the network to build, the checkpoint file read on the way, and the
    fields nothing determined (non-empty only for a foreign checkpoint without a config:
    the caller must refuse to use it, see :func:`refuse_unknown`)."""
    declared, where = {}, None
    if source_config is not None:
        declared, where = read_source_config(source_config), f"source config {source_config}"
    file = read_checkpoint_file(weights, allow_pickle=allow_pickle) if weights else None
    revealed: dict[str, Any] = {}
    unknown: list[str] = []
    if file is not None:
        if where is None:
            declared, where = _embedded(file)
        revealed = read_architecture(file.tensors, source=file.path)
        _check_agreement(declared, revealed, where, file.path)
        scheme = detect_naming(file.tensors, source=file.path).scheme
        if scheme != BANKFLOW and where is None:
            unknown = _unknown_fields(revealed, given)
    declared_family = declared.pop("family", family)
    revealed_family = "slowfast" if revealed.get("fast_pathway", True) else "slowonly"
    for other, origin in ((declared_family, where), (revealed_family, weights)):
        if other != family:
            raise SourceConfigError(
                f"{origin} describes a {other} network; build it with a {other}_* backbone,"
                f" not a {family} one"
            )
    fields = {**base, **declared, **revealed, **given}
    try:
        return SlowFastConfig(**fields), file, unknown
    except TypeError as exc:
        raise ValueError(f"{family} backbone: {exc}") from exc


def _check_agreement(declared: dict, revealed: dict, where: str | None, path: str) -> None:
    for key in sorted(set(declared) & set(revealed)):
        if SlowFastConfig.__dataclass_fields__.get(key) is None:
            continue
        a, b = declared[key], revealed[key]
        if _tupled(a) != _tupled(b):
            raise SourceConfigError(
                f"{where} says {key}={a}, but the tensors of {path} have {key}={b}:"
                " is this the config the checkpoint was trained with?"
            )


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list | tuple) else value


def _unknown_fields(revealed: dict, given: dict) -> list[str]:
    needed = list(UNREADABLE)
    if not revealed.get("fast_pathway", True):
        needed = ["spatial_strides", "dilations"]
    if any(any(revealed.get(f"{p}_nonlocal", ())) for p in ("slow", "fast")):
        needed += ["nonlocal_pool", "nonlocal_instantiation"]
    return [k for k in needed if k not in given]


def refuse_unknown(path: str, scheme: str, missing: list[str]) -> ArchitectureUnknownError:
    """The error for a checkpoint whose ``missing`` fields nothing determined."""
    from models.backbones.presets import PRESETS

    return ArchitectureUnknownError(
        f"checkpoint {path} ({scheme} naming) does not say its {', '.join(missing)}, and"
        " loading it into a network that differs in them would silently compute something"
        " else: pass source_config=<the config it was trained with: a PySlowFast .yaml, an"
        " MMAction2 .py, an ACAR-Net .yaml, pytorchvideo:<hub name> or a preset:"
        f" {', '.join(sorted(PRESETS))}>, or {', '.join(f'{k}=' for k in missing)}"
    )


def _build(
    family: str,
    base: dict[str, Any],
    fields: dict[str, Any],
    *,
    weights: str | Path | None,
    source_config: str | Path | None,
    allow_pickle: bool,
) -> SlowFast:
    given = {k: v for k, v in fields.items() if v is not None}
    config, file, unknown = resolve_architecture(
        family, base, given, weights=weights, source_config=source_config, allow_pickle=allow_pickle
    )
    model = SlowFast(config)
    if file is None:
        return model
    report = load_slowfast_checkpoint(model, file.tensors, strict=False)
    report.source = file.path
    if not report.ok:
        raise ValueError(f"weights do not fit this SlowFast:\n{report}")
    if unknown:
        raise refuse_unknown(file.path, report.scheme, unknown)
    return model


def slowfast_r50(
    *,
    weights: str | Path | None = None,
    source_config: str | Path | None = None,
    allow_pickle: bool = False,
    **fields: Any,
) -> SlowFast:
    """SlowFast-R50 (3, 4, 6, 3), β=1/8, res5 dilated by default:
    ``[B, 3, α·t_slow, H, W] -> [B, 2304, H/16, W/16]``."""
    fields = {"depths": DEPTHS[50], **fields}
    return _build(
        "slowfast",
        {},
        fields,
        weights=weights,
        source_config=source_config,
        allow_pickle=allow_pickle,
    )


def slowfast_r101(
    *,
    weights: str | Path | None = None,
    source_config: str | Path | None = None,
    allow_pickle: bool = False,
    **fields: Any,
) -> SlowFast:
    """SlowFast-R101 (3, 4, 23, 3), β=1/8, res5 dilated by default:
    ``[B, 3, α·t_slow, H, W] -> [B, 2304, H/16, W/16]``."""
    fields = {"depths": DEPTHS[101], **fields}
    return _build(
        "slowfast",
        {},
        fields,
        weights=weights,
        source_config=source_config,
        allow_pickle=allow_pickle,
    )


def slowonly_r50(
    *,
    weights: str | Path | None = None,
    source_config: str | Path | None = None,
    allow_pickle: bool = False,
    **fields: Any,
) -> SlowFast:
    """SlowOnly-R50 (the Slow pathway alone, 8×8 by default):
    ``[B, 3, t_slow, H, W] -> [B, 2048, H/16, W/16]``."""
    fields = {"depths": DEPTHS[50], **fields}
    return _build(
        "slowonly",
        dict(_SLOW_ONLY),
        fields,
        weights=weights,
        source_config=source_config,
        allow_pickle=allow_pickle,
    )


def slowonly_r101(
    *,
    weights: str | Path | None = None,
    source_config: str | Path | None = None,
    allow_pickle: bool = False,
    **fields: Any,
) -> SlowFast:
    """SlowOnly-R101: ``[B, 3, t_slow, H, W] -> [B, 2048, H/16, W/16]``."""
    fields = {"depths": DEPTHS[101], **fields}
    return _build(
        "slowonly",
        dict(_SLOW_ONLY),
        fields,
        weights=weights,
        source_config=source_config,
        allow_pickle=allow_pickle,
    )


_TINY = {"width": 8, "depths": (1, 1, 1, 1), "alpha": 4, "t_slow": 4, "frame_stride": 2}


def slowfast_tiny(
    *,
    weights: str | Path | None = None,
    source_config: str | Path | None = None,
    allow_pickle: bool = False,
    **fields: Any,
) -> SlowFast:
    """The same SlowFast with few channels and blocks, for CPU demos and tests.

    Defaults: width 8 (Fast width 1), one bottleneck per stage, a 16-frame clip;
    ``[B, 3, 16, H, W] -> [B, 288, H/16, W/16]``. ``spatial_strides=(1, 1, 2, 1)`` gives
    an output stride of 8, for small frames where a person spans only a few cells at 16.
    ``slowfast_tiny(fast_pathway=False, alpha=1)`` is a tiny SlowOnly.
    """
    family = "slowonly" if fields.get("fast_pathway") is False else "slowfast"
    base = {**_TINY, "fast_pathway": False, "alpha": 1} if family == "slowonly" else dict(_TINY)
    return _build(
        family,
        base,
        fields,
        weights=weights,
        source_config=source_config,
        allow_pickle=allow_pickle,
    )
