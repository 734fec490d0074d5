"""The architecture of a published SlowFast / SlowOnly, read from its own project's config.

Weights cannot say a network's strides, dilations, alpha or how it samples its Slow
frames; the config it was trained with can. Three sources, none of them executed:

- a PySlowFast YAML (also the ``cfg`` dump inside every PySlowFast ``.pyth``), read with
  ``yaml.safe_load`` over PySlowFast's defaults;
- an MMAction2 Python config, parsed with :mod:`ast`: top-level assignments whose values
  are literals, ``dict(...)`` calls with keyword arguments and names assigned before;
  ``_base_`` files are merged one level deep (anything else is left unevaluated);
- a pytorchvideo hub name (``slowfast_r50_detection``, ...).

Each gives the :class:`~models.backbones.slowfast.SlowFastConfig` fields it fixes plus
``family`` (``slowfast`` | ``slowonly``). :data:`PRESETS` names the published AVA and
Kinetics zoo entries.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEPTHS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
UNREADABLE = ("spatial_strides", "dilations", "alpha", "slow_sampling")  # not in any tensor

# PySlowFast's defaults (slowfast/config/defaults.py) for the keys read here.
_PYSLOWFAST_DEFAULTS: dict[str, dict[str, Any]] = {
    "MODEL": {"ARCH": "slowfast"},
    "RESNET": {
        "DEPTH": 50,
        "WIDTH_PER_GROUP": 64,
        "NUM_GROUPS": 1,
        "STRIDE_1X1": False,
        "TRANS_FUNC": "bottleneck_transform",
        "NUM_BLOCK_TEMP_KERNEL": [[3], [4], [6], [3]],
        "SPATIAL_STRIDES": [[1], [2], [2], [2]],
        "SPATIAL_DILATIONS": [[1], [1], [1], [1]],
    },
    "NONLOCAL": {
        "LOCATION": [[[]], [[]], [[]], [[]]],
        "GROUP": [[1], [1], [1], [1]],
        "INSTANTIATION": "dot_product",
        "POOL": [[[1, 2, 2], [1, 2, 2]]] * 4,
    },
    "SLOWFAST": {"ALPHA": 8, "BETA_INV": 8, "FUSION_CONV_CHANNEL_RATIO": 2, "FUSION_KERNEL_SZ": 5},
    "DATA": {"NUM_FRAMES": 8, "SAMPLING_RATE": 8, "MEAN": [0.45] * 3, "STD": [0.225] * 3},
}
# PySlowFast's temporal kernel basis: (stem, res2..res5) per pathway.
_PYSLOWFAST_KERNELS = {
    "slowfast": ((1, (1, 1, 3, 3)), (5, (3, 3, 3, 3))),
    "slow": ((1, (1, 1, 3, 3)),),
}


class SourceConfigError(ValueError):
    """A source config that cannot be read, or describes a network bankflow cannot build."""


def pyslowfast_architecture(cfg: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Architecture fields of a PySlowFast config (the parsed YAML)."""

    def get(section: str, key: str) -> Any:
        value = (cfg.get(section) or {}).get(key)
        return _PYSLOWFAST_DEFAULTS[section][key] if value is None else value

    arch = str(get("MODEL", "ARCH"))
    if arch not in _PYSLOWFAST_KERNELS:
        raise SourceConfigError(f"{source}: MODEL.ARCH {arch!r} is not slowfast or slow")
    if get("RESNET", "TRANS_FUNC") != "bottleneck_transform" or get("RESNET", "STRIDE_1X1"):
        raise SourceConfigError(f"{source}: only bottleneck_transform with STRIDE_1X1 False")
    if int(get("RESNET", "NUM_GROUPS")) != 1:
        raise SourceConfigError(f"{source}: RESNET.NUM_GROUPS must be 1 (no ResNeXt)")
    depth = int(get("RESNET", "DEPTH"))
    if depth not in DEPTHS:
        raise SourceConfigError(f"{source}: RESNET.DEPTH {depth} not in {sorted(DEPTHS)}")
    depths = DEPTHS[depth]
    pathways = len(_PYSLOWFAST_KERNELS[arch])

    def per_stage(key: str, section: str = "RESNET") -> tuple[Any, ...]:
        """One value per stage, the same on both pathways (refused otherwise)."""
        values = []
        for stage, entry in enumerate(get(section, key)):
            entry = list(entry)[:pathways] if isinstance(entry, list) else [entry]
            if any(v != entry[0] for v in entry):
                raise SourceConfigError(
                    f"{source}: {section}.{key} differs between pathways in stage {stage}"
                )
            values.append(entry[0])
        return tuple(values)

    out: dict[str, Any] = {
        "family": "slowfast" if arch == "slowfast" else "slowonly",
        "depths": depths,
        "width": int(get("RESNET", "WIDTH_PER_GROUP")),
        "spatial_strides": per_stage("SPATIAL_STRIDES"),
        "dilations": per_stage("SPATIAL_DILATIONS"),
        "slow_sampling": "linspace",  # pack_pathway_output
        "input_mean": tuple(float(v) for v in get("DATA", "MEAN")),
        "input_std": tuple(float(v) for v in get("DATA", "STD")),
    }
    if any(int(g) != 1 for stage in get("NONLOCAL", "GROUP") for g in stage):
        raise SourceConfigError(f"{source}: NONLOCAL.GROUP other than 1 is not supported")
    temp_blocks = get("RESNET", "NUM_BLOCK_TEMP_KERNEL")
    locations = get("NONLOCAL", "LOCATION")
    pools = []
    for p, (stem, basis) in enumerate(_PYSLOWFAST_KERNELS[arch]):
        name = ("slow", "fast")[p]
        kernels = []
        for stage, depth_i in enumerate(depths):
            n = int(temp_blocks[stage][min(p, len(temp_blocks[stage]) - 1)])
            block = (basis[stage],) * n + (1,) * (depth_i - n)
            kernels.append(block[0] if len(set(block)) == 1 else block)
        out[f"{name}_temporal_kernels"] = tuple(kernels)
        out[f"{name}_stem_temporal_kernel"] = stem
        nonlocal_blocks = tuple(
            tuple(int(i) for i in locations[s][min(p, len(locations[s]) - 1)]) for s in range(4)
        )
        out[f"{name}_nonlocal"] = nonlocal_blocks
        pools += [tuple(get("NONLOCAL", "POOL")[s][p]) for s in range(4) if nonlocal_blocks[s]]
    if pools:
        if len(set(pools)) != 1:
            raise SourceConfigError(f"{source}: NONLOCAL.POOL differs between non-local stages")
        out["nonlocal_pool"] = pools[0]
        out["nonlocal_instantiation"] = str(get("NONLOCAL", "INSTANTIATION"))
    frames, rate = int(get("DATA", "NUM_FRAMES")), int(get("DATA", "SAMPLING_RATE"))
    if arch == "slowfast":
        alpha = int(get("SLOWFAST", "ALPHA"))
        out.update(
            alpha=alpha,
            t_slow=frames // alpha,
            frame_stride=rate,
            lateral_norm=True,
            beta_inv=int(get("SLOWFAST", "BETA_INV")),
            fusion_ratio=int(get("SLOWFAST", "FUSION_CONV_CHANNEL_RATIO")),
            fusion_kernel=int(get("SLOWFAST", "FUSION_KERNEL_SZ")),
        )
    else:
        out.update(alpha=1, t_slow=frames, frame_stride=rate)
    return out


def read_pyslowfast_yaml(text: str, *, source: str) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SourceConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, Mapping):
        raise SourceConfigError(f"{source}: expected a PySlowFast YAML mapping")
    from models.backbones import acar_net_config as acar  # ACAR-Net's YAMLs differ

    if acar.is_acar_net_config(cfg):
        try:
            return acar.read_acar_net_yaml(cfg, source=source)
        except (acar.ACARNetConfigError, ValueError) as exc:
            raise SourceConfigError(str(exc)) from exc
    return pyslowfast_architecture(cfg, source=source)


# --- MMAction2 -------------------------------------------------------------------------


class _Unevaluated:
    """An expression the config parser does not evaluate (calls, arithmetic, imports)."""

    def __repr__(self) -> str:
        return "<unevaluated>"


UNEVALUATED = _Unevaluated()


def _value(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple | ast.List):
        return [_value(e, names) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            return UNEVALUATED
        return {
            _value(k, names): _value(v, names)
            for k, v in zip(node.keys, node.values, strict=True)
            if k is not None  # none is (checked above)
        }
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(k.arg is None for k in node.keywords):
            return UNEVALUATED
        return {k.arg: _value(k.value, names) for k in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _value(node.operand, names)
        return -inner if isinstance(inner, int | float) else UNEVALUATED
    if isinstance(node, ast.Name):
        return names.get(node.id, UNEVALUATED)
    return UNEVALUATED


def parse_mmaction2_text(text: str, *, source: str) -> dict[str, Any]:
    """Top-level assignments of an MMAction2 config as plain values (nothing executed)."""
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as exc:
        raise SourceConfigError(
            f"{source}: not a Python config: {exc.msg} (line {exc.lineno})"
        ) from exc
    names: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name):
                names[target.id] = _value(stmt.value, names)
    return names


def _merged(base: Any, child: Any) -> Any:
    if isinstance(base, dict) and isinstance(child, dict) and not child.get("_delete_"):
        out = dict(base)
        for key, value in child.items():
            out[key] = _merged(base.get(key), value) if key in base else value
        return out
    return child


def read_mmaction2_config(path: str | Path) -> dict[str, Any]:
    """An MMAction2 config file with its ``_base_`` files merged in (one level)."""
    path = Path(path)
    names = parse_mmaction2_text(path.read_text(), source=str(path))
    bases = names.pop("_base_", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str):
            continue
        base_path = path.parent / base
        if not base_path.is_file():
            raise SourceConfigError(f"{path}: _base_ file {base_path} not found")
        base_names = parse_mmaction2_text(base_path.read_text(), source=str(base_path))
        base_names.pop("_base_", None)
        merged = _merged(merged, base_names)
    return _merged(merged, names)


def _need(d: Mapping[str, Any], key: str, default: Any, source: str) -> Any:
    value = d.get(key, default)
    if value is UNEVALUATED:
        raise SourceConfigError(f"{source}: {key} is not a literal; write its value in the config")
    return value


def _mm_kernels(inflate: Any, depths: tuple[int, ...], source: str) -> tuple[Any, ...]:
    """MMAction2 ``inflate`` (per stage, or per block) as temporal kernels (3x1x1 style)."""
    stages = [inflate] * 4 if isinstance(inflate, int) else list(inflate)
    kernels: list[int | tuple[int, ...]] = []
    for stage, (entry, depth) in enumerate(zip(stages, depths, strict=True)):
        if isinstance(entry, int):
            kernels.append(3 if entry else 1)
        else:
            if len(entry) != depth:
                raise SourceConfigError(
                    f"{source}: inflate[{stage}] has {len(entry)} entries for {depth} blocks"
                )
            block = tuple(3 if i else 1 for i in entry)
            kernels.append(block[0] if len(set(block)) == 1 else block)
    return tuple(kernels)


def _mm_pathway(p: Mapping[str, Any], *, default_inflate: Any, source: str) -> dict[str, Any]:
    depth = int(_need(p, "depth", 50, source))
    if depth not in DEPTHS:
        raise SourceConfigError(f"{source}: depth {depth} not in {sorted(DEPTHS)}")
    for key, ok in (("conv1_stride_t", 1), ("pool1_stride_t", 1), ("with_pool2", False)):
        if _need(p, key, ok, source) != ok:
            raise SourceConfigError(f"{source}: {key} must be {ok!r} for a SlowFast/SlowOnly")
    if any(_need(p, "non_local", (0, 0, 0, 0), source)):
        raise SourceConfigError(f"{source}: MMAction2 non-local blocks are not supported")
    if _need(p, "inflate_style", "3x1x1", source) != "3x1x1":
        raise SourceConfigError(f"{source}: only inflate_style '3x1x1' is supported")
    depths = DEPTHS[depth]
    return {
        "depths": depths,
        "width": int(_need(p, "base_channels", 64, source)),
        "stem": int(_need(p, "conv1_kernel", (5, 7, 7), source)[0]),
        "kernels": _mm_kernels(_need(p, "inflate", default_inflate, source), depths, source),
        "spatial_strides": tuple(_need(p, "spatial_strides", (1, 2, 2, 2), source)),
        "dilations": tuple(_need(p, "dilations", (1, 1, 1, 1), source)),
        "fusion_kernel": int(_need(p, "fusion_kernel", 5, source)),
        "lateral_norm": bool(_need(p, "lateral_norm", False, source)),
    }


def mmaction2_architecture(names: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Architecture fields of a parsed MMAction2 config (its ``model.backbone``)."""
    model = names.get("model")
    backbone = model.get("backbone") if isinstance(model, dict) else None
    if not isinstance(backbone, dict):
        raise SourceConfigError(f"{source}: no model = dict(backbone=dict(...)) assignment")
    kind = backbone.get("type")
    out: dict[str, Any] = {"slow_sampling": "stride"}  # nearest interpolation = x[::r]
    if kind == "ResNet3dSlowFast":
        slow = _mm_pathway(
            backbone.get("slow_pathway") or {}, default_inflate=(0, 0, 1, 1), source=source
        )
        fast_cfg = {
            "base_channels": 8,
            "conv1_kernel": (5, 7, 7),
            **(backbone.get("fast_pathway") or {}),
        }
        fast = _mm_pathway(fast_cfg, default_inflate=(1, 1, 1, 1), source=source)
        resample, speed = (
            int(_need(backbone, k, 8, source)) for k in ("resample_rate", "speed_ratio")
        )
        if resample != speed:
            raise SourceConfigError(
                f"{source}: resample_rate {resample} != speed_ratio {speed}: the Fast pathway"
                " would not see the whole clip; bankflow feeds it the clip itself"
            )
        for key in ("depths", "spatial_strides", "dilations"):
            if slow[key] != fast[key]:
                raise SourceConfigError(f"{source}: slow and fast pathways differ in {key}")
        out.update(
            family="slowfast",
            alpha=speed,
            beta_inv=int(_need(backbone, "channel_ratio", 8, source)),
            fast_temporal_kernels=fast["kernels"],
            fast_stem_temporal_kernel=fast["stem"],
            fusion_kernel=slow["fusion_kernel"],
            lateral_norm=slow["lateral_norm"],
        )
    elif kind in ("ResNet3dSlowOnly", "ResNet3d"):
        p = {"conv1_kernel": (1, 7, 7), **backbone} if kind == "ResNet3dSlowOnly" else backbone
        slow = _mm_pathway(
            p,
            default_inflate=(0, 0, 1, 1) if kind == "ResNet3dSlowOnly" else (1, 1, 1, 1),
            source=source,
        )
        if backbone.get("lateral"):
            raise SourceConfigError(f"{source}: a lateral SlowOnly is not a published network")
        out.update(family="slowonly", alpha=1)
    else:
        raise SourceConfigError(
            f"{source}: backbone type {kind!r} is not ResNet3dSlowFast or ResNet3dSlowOnly"
        )
    out.update(
        depths=slow["depths"],
        width=slow["width"],
        slow_stem_temporal_kernel=slow["stem"],
        slow_temporal_kernels=slow["kernels"],
        spatial_strides=slow["spatial_strides"],
        dilations=slow["dilations"],
    )
    out.update(_mm_clip(names, out["family"], out["alpha"]))
    norm = (model.get("data_preprocessor") if isinstance(model, dict) else None) or names.get(
        "img_norm_cfg"
    )
    if (
        isinstance(norm, dict)
        and isinstance(norm.get("mean"), list)
        and isinstance(norm.get("std"), list)
    ):
        scale = 255.0 if max(norm["mean"]) > 1.0 else 1.0
        out["input_mean"] = tuple(float(v) / scale for v in norm["mean"])
        out["input_std"] = tuple(float(v) / scale for v in norm["std"])
    return out


def _mm_clip(names: Mapping[str, Any], family: str, alpha: int) -> dict[str, Any]:
    """``t_slow`` and ``frame_stride`` from the test / val pipeline's frame sampler."""
    for key in ("test_pipeline", "val_pipeline", "train_pipeline"):
        for step in names.get(key) or []:
            if isinstance(step, dict) and step.get("type") in ("SampleAVAFrames", "SampleFrames"):
                clip, interval = step.get("clip_len"), step.get("frame_interval")
                if isinstance(clip, int) and isinstance(interval, int):
                    t_slow = clip // alpha if family == "slowfast" else clip
                    return {"t_slow": t_slow, "frame_stride": interval}
    return {}


# --- pytorchvideo hub ------------------------------------------------------------------

_PTV_SLOWFAST = {
    "family": "slowfast",
    "alpha": 4,
    "beta_inv": 8,
    "lateral_norm": True,
    "slow_sampling": "linspace",
    "input_mean": (0.45,) * 3,
    "input_std": (0.225,) * 3,
}
_PTV_KINETICS = {"spatial_strides": (1, 2, 2, 2), "dilations": (1, 1, 1, 1)}
_PTV_DETECTION = {"spatial_strides": (1, 2, 2, 1), "dilations": (1, 1, 1, 2)}
PYTORCHVIDEO_HUB: dict[str, dict[str, Any]] = {
    "slowfast_r50": {
        **_PTV_SLOWFAST,
        **_PTV_KINETICS,
        "depths": DEPTHS[50],
        "fusion_kernel": 7,
        "t_slow": 8,
        "frame_stride": 2,
    },
    "slowfast_r101": {
        **_PTV_SLOWFAST,
        **_PTV_KINETICS,
        "depths": DEPTHS[101],
        "fusion_kernel": 5,
        "t_slow": 8,
        "frame_stride": 2,
    },
    "slowfast_16x8_r101_50_50": {
        **_PTV_SLOWFAST,
        **_PTV_KINETICS,
        "depths": DEPTHS[101],
        "fusion_kernel": 5,
        "t_slow": 16,
        "frame_stride": 2,
        "slow_temporal_kernels": (1, 1, (3,) * 6 + (1,) * 17, 3),
        "fast_temporal_kernels": (3, 3, (3,) * 6 + (1,) * 17, 3),
    },
    "slowfast_r50_detection": {
        **_PTV_SLOWFAST,
        **_PTV_DETECTION,
        "depths": DEPTHS[50],
        "fusion_kernel": 7,
        "t_slow": 8,
        "frame_stride": 2,
    },
    "slow_r50": {
        "family": "slowonly",
        "alpha": 1,
        "slow_sampling": "stride",
        **_PTV_KINETICS,
        "depths": DEPTHS[50],
        "t_slow": 8,
        "frame_stride": 8,
    },
    "slow_r50_detection": {
        "family": "slowonly",
        "alpha": 1,
        "slow_sampling": "stride",
        **_PTV_DETECTION,
        "depths": DEPTHS[50],
        "t_slow": 4,
        "frame_stride": 16,
    },
}


def read_source_config(source: str | Path) -> dict[str, Any]:
    """Architecture fields of ``source``: a preset name, a pytorchvideo hub name
    (``pytorchvideo:slowfast_r50_detection``), a PySlowFast ``.yaml`` or an MMAction2 ``.py``."""
    from models.backbones.presets import PRESETS

    text = str(source)
    if text in PRESETS:
        return dict(PRESETS[text])
    if text.startswith("pytorchvideo:"):
        name = text.removeprefix("pytorchvideo:")
        if name not in PYTORCHVIDEO_HUB:
            raise SourceConfigError(
                f"unknown pytorchvideo hub model {name!r}; known: {sorted(PYTORCHVIDEO_HUB)}"
            )
        return dict(PYTORCHVIDEO_HUB[name])
    path = Path(text)
    if not path.is_file():
        raise SourceConfigError(
            f"source config {text} is not a file, a preset ({', '.join(sorted(PRESETS))})"
            " or pytorchvideo:<hub name>"
        )
    if path.suffix in (".yaml", ".yml"):
        return read_pyslowfast_yaml(path.read_text(), source=text)
    if path.suffix == ".py":
        return mmaction2_architecture(read_mmaction2_config(path), source=text)
    raise SourceConfigError(
        f"source config {text}: expected a PySlowFast .yaml or an MMAction2 .py"
    )
