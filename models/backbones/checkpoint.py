"""Load SlowFast weights from PySlowFast or MMAction2 checkpoints (local files only).

Both code bases build the same network under different names. The mapping below is
written once, from *our* parameter names to each scheme's names:

====================================  =============================================  ==================================================
ours                                  PySlowFast (``model_state``)                   MMAction2 (``state_dict``, ``backbone.`` prefix)
====================================  =============================================  ==================================================
``slow.stem.conv.weight``             ``s1.pathway0_stem.conv.weight``               ``slow_path.conv1.conv.weight``
``fast.stem.bn.X``                    ``s1.pathway1_stem.bn.X``                      ``fast_path.conv1.bn.X``
``slow.stages.S.B.a.conv.weight``     ``s{S+2}.pathway0_res{B}.branch2.a.weight``    ``slow_path.layer{S+1}.B.conv1.conv.weight``
``slow.stages.S.B.b.bn.X``            ``s{S+2}.pathway0_res{B}.branch2.b_bn.X``      ``slow_path.layer{S+1}.B.conv2.bn.X``
``fast.stages.S.B.shortcut.conv.*``   ``s{S+2}.pathway1_res{B}.branch1.*``           ``fast_path.layer{S+1}.B.downsample.conv.*``
``laterals.0.conv.weight``            ``s1_fuse.conv_f2s.weight``                    ``slow_path.conv1_lateral.conv.weight``
``laterals.K.bn.X`` (K ≥ 1)           ``s{K+1}_fuse.bn.X``                           ``slow_path.layer{K}_lateral.bn.X``
====================================  =============================================  ==================================================

Classifier heads (PySlowFast ``head.*``, MMAction2 ``cls_head.*`` and anything outside
``backbone.``) are ignored. MMAction2 laterals have no BN by default: build the model
with ``lateral_norm=False`` for them (:func:`infer_config_overrides` reads that and the
lateral kernel size off a checkpoint).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

PYSLOWFAST = "pyslowfast"
MMACTION2 = "mmaction2"
BANKFLOW = "bankflow"  # our own ``model.state_dict()``

_STEM = re.compile(r"^(slow|fast)\.stem\.(conv|bn)\.(\w+)$")
_BLOCK = re.compile(r"^(slow|fast)\.stages\.(\d+)\.(\d+)\.(a|b|c|shortcut)\.(conv|bn)\.(\w+)$")
_LATERAL = re.compile(r"^laterals\.(\d+)\.(conv|bn)\.(\w+)$")
_PATHWAY_INDEX = {"slow": 0, "fast": 1}
_MMACTION_UNIT = {"a": "conv1", "b": "conv2", "c": "conv3", "shortcut": "downsample"}
_REPORT_LIMIT = 20  # names listed per category in str(LoadReport)


class CheckpointMismatchError(ValueError):
    """A strict load found missing, unexpected or mis-shaped tensors (message = the report)."""


def pyslowfast_name(key: str) -> str | None:
    """PySlowFast name of one of our state-dict keys (``None`` if the key is not ours)."""
    if m := _STEM.match(key):
        pathway, module, param = m.groups()
        return f"s1.pathway{_PATHWAY_INDEX[pathway]}_stem.{module}.{param}"
    if m := _BLOCK.match(key):
        pathway, stage, block, unit, module, param = m.groups()
        prefix = f"s{int(stage) + 2}.pathway{_PATHWAY_INDEX[pathway]}_res{block}"
        if unit == "shortcut":
            return f"{prefix}.branch1{'_bn' if module == 'bn' else ''}.{param}"
        return f"{prefix}.branch2.{unit}{'_bn' if module == 'bn' else ''}.{param}"
    if m := _LATERAL.match(key):
        index, module, param = m.groups()
        return f"s{int(index) + 1}_fuse.{'conv_f2s' if module == 'conv' else 'bn'}.{param}"
    return None


def mmaction2_name(key: str, prefix: str = "backbone.") -> str | None:
    """MMAction2 name of one of our state-dict keys (``None`` if the key is not ours)."""
    if m := _STEM.match(key):
        pathway, module, param = m.groups()
        return f"{prefix}{pathway}_path.conv1.{module}.{param}"
    if m := _BLOCK.match(key):
        pathway, stage, block, unit, module, param = m.groups()
        layer = f"{pathway}_path.layer{int(stage) + 1}.{block}"
        return f"{prefix}{layer}.{_MMACTION_UNIT[unit]}.{module}.{param}"
    if m := _LATERAL.match(key):
        index, module, param = m.groups()
        lateral = "conv1_lateral" if index == "0" else f"layer{index}_lateral"
        return f"{prefix}slow_path.{lateral}.{module}.{param}"
    return None


@dataclass(frozen=True)
class ShapeMismatch:
    key: str  # our name
    source_key: str  # the checkpoint's name
    model_shape: tuple[int, ...]
    checkpoint_shape: tuple[int, ...]


@dataclass
class LoadReport:
    """What a checkpoint load matched. ``ok`` when nothing is missing, extra or mis-shaped."""

    scheme: str
    source: str
    loaded: list[str] = field(default_factory=list)  # our keys that received a tensor
    missing: list[str] = field(default_factory=list)  # our keys absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys we have no slot for
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # classifier heads etc., on purpose
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [
            f"checkpoint {self.source} ({self.scheme} naming): loaded {len(self.loaded)} tensors,"
            f" ignored {len(self.ignored)} head/other tensors, {len(self.missing)} missing,"
            f" {len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches"
        ]

        def listed(title: str, items: list[str]) -> None:
            for item in items[:_REPORT_LIMIT]:
                lines.append(f"  {title}: {item}")
            if len(items) > _REPORT_LIMIT:
                lines.append(f"  ... and {len(items) - _REPORT_LIMIT} more {title}")

        listed("missing from checkpoint", self.missing)
        listed("unexpected in checkpoint", self.unexpected)
        listed(
            "shape mismatch",
            [
                f"{m.key} <- {m.source_key}: model {m.model_shape}, checkpoint {m.checkpoint_shape}"
                for m in self.mismatched
            ],
        )
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        return "\n".join(lines)


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict (the only file access here).

    Only tensor-safe unpickling by default; ``allow_pickle=True`` runs arbitrary code from
    the file (some MMAction2 checkpoints carry Python objects in ``meta``): trusted files only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        hint = "" if allow_pickle else " (if you trust this file, pass allow_pickle=True)"
        raise ValueError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: Any, *, source: str = "<state dict>") -> dict[str, Tensor]:
    """The tensors of a checkpoint object: ``model_state`` (PySlowFast), ``state_dict``
    (MMAction2/mmengine), ``model``, or the dict itself; a DDP ``module.`` prefix is removed."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {source}: expected a dict, got {type(obj).__name__}")
    for wrapper in ("model_state", "state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"checkpoint {source}: holds no tensors (keys: {list(obj)[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def detect_scheme(state: Mapping[str, Tensor], *, source: str = "<state dict>") -> str:
    """Which naming a SlowFast state dict uses: PySlowFast, MMAction2 or ours."""
    keys = list(state)
    if any(k.startswith("s1.pathway0_stem.") for k in keys):
        return PYSLOWFAST
    if any(k.startswith(("backbone.slow_path.", "slow_path.")) for k in keys):
        return MMACTION2
    if any(k.startswith("slow.stem.") for k in keys):
        return BANKFLOW
    raise ValueError(
        f"checkpoint {source}: not a SlowFast checkpoint in PySlowFast (s1.pathway0_stem.*),"
        f" MMAction2 (backbone.slow_path.*) or bankflow (slow.stem.*) naming;"
        f" first keys: {keys[:5]}"
    )


def _naming(scheme: str, state: Mapping[str, Tensor]) -> tuple[Callable[[str], str | None], str]:
    """(our name -> checkpoint name, prefix outside of which checkpoint keys are ignored)."""
    if scheme == PYSLOWFAST:
        return pyslowfast_name, ""
    if scheme == MMACTION2:
        prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
        return (lambda key: mmaction2_name(key, prefix)), prefix
    return (lambda key: key), ""


def _is_ignored(scheme: str, key: str, prefix: str) -> bool:
    if scheme == PYSLOWFAST:
        return key.startswith("head.")
    if scheme == MMACTION2:
        return not key.startswith(prefix) or key.startswith(f"{prefix}cls_head.")
    return False


def infer_config_overrides(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """``fusion_kernel`` and ``lateral_norm`` as a checkpoint was trained with.

    These are the two architecture choices that differ between public SlowFast
    checkpoints of the same depth (PySlowFast 8×8 uses a 7×1×1 lateral, MMAction2 has no
    BN on laterals); depth, width and alpha are fixed by the builder the caller picked.
    """
    scheme = detect_scheme(state)
    to_source, _ = _naming(scheme, state)
    conv = to_source("laterals.0.conv.weight")
    bn = to_source("laterals.0.bn.weight")
    overrides: dict[str, Any] = {"lateral_norm": bn in state}
    if conv in state:
        overrides["fusion_kernel"] = int(state[conv].shape[2])
    return overrides


def load_slowfast_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, Any],
    *,
    strict: bool = True,
    allow_pickle: bool = False,
) -> LoadReport:
    """Copy a PySlowFast / MMAction2 / bankflow checkpoint into a :class:`SlowFast` model.

    The naming scheme is detected from the keys (``report.scheme``). With ``strict=True``
    nothing is copied and :class:`CheckpointMismatchError` (carrying the report) is raised
    unless every tensor matches; with ``strict=False`` every matching tensor is copied and
    the report says what was not. ``num_batches_tracked`` may be absent (old checkpoints).
    """
    if isinstance(path_or_state_dict, str | Path):
        source = str(path_or_state_dict)
        state = read_checkpoint(path_or_state_dict, allow_pickle=allow_pickle)
    else:
        source = "<state dict>"
        state = unwrap_state_dict(path_or_state_dict, source=source)
    scheme = detect_scheme(state, source=source)
    to_source, prefix = _naming(scheme, state)
    report = LoadReport(scheme=scheme, source=source)

    targets = model.state_dict()
    pairs: list[tuple[Tensor, Tensor]] = []
    used: set[str] = set()
    for key, target in targets.items():
        source_key = to_source(key)
        if source_key is None or source_key not in state:
            if not key.endswith("num_batches_tracked"):
                report.missing.append(key if source_key is None else f"{key} ({source_key})")
            continue
        used.add(source_key)
        tensor = state[source_key]
        if tuple(tensor.shape) != tuple(target.shape):
            report.mismatched.append(
                ShapeMismatch(key, source_key, tuple(target.shape), tuple(tensor.shape))
            )
            continue
        pairs.append((target, tensor))
        report.loaded.append(key)
    for key in state:
        if key in used:
            continue
        (report.ignored if _is_ignored(scheme, key, prefix) else report.unexpected).append(key)
    report.hints = _hints(report, to_source)

    if strict and not report.ok:
        raise CheckpointMismatchError(str(report))
    with torch.no_grad():
        for target, tensor in pairs:
            target.copy_(tensor)
    return report


def _hints(report: LoadReport, to_source: Callable[[str], str | None]) -> list[str]:
    hints = []
    for m in report.mismatched:
        is_lateral_conv = _LATERAL.match(m.key) is not None and m.key.endswith("conv.weight")
        if is_lateral_conv and m.model_shape[:2] == m.checkpoint_shape[:2]:
            hints.append(f"build the model with fusion_kernel={m.checkpoint_shape[2]}")
            break
    lateral_bn = to_source("laterals.0.bn.weight")
    if any(k.startswith("laterals.") and ".bn." in k for k in report.missing):
        hints.append("the checkpoint's laterals have no BN: build with lateral_norm=False")
    elif lateral_bn is not None and lateral_bn in report.unexpected:
        hints.append("the checkpoint's laterals have BN: build with lateral_norm=True")
    if report.missing and not report.loaded:
        hints.append("nothing matched: is this checkpoint for a different depth or model?")
    return hints
