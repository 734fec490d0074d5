"""Load SlowFast / SlowOnly weights from PySlowFast (``.pyth``, Caffe2 ``.pkl``), MMAction2
(``.pth``), pytorchvideo or bankflow checkpoints (local files only).

The naming scheme is detected from the keys; :mod:`models.backbones.naming` maps our names
to each scheme's. Classifier / detection heads (PySlowFast ``head.*``, MMAction2
``cls_head.*`` / ``roi_head.*`` and anything outside ``backbone.``, pytorchvideo
``blocks.5+`` / ``detection_head.*``, Caffe2 ``pred_*`` and optimizer blobs) are ignored and
listed as such. :func:`read_architecture` reads every architecture choice the tensors
reveal (depths, width, Fast pathway, per-block temporal kernels, non-local placement,
lateral kernel and norm); what they cannot reveal (strides, dilations, alpha, frame
sampling) comes from the source's config (:mod:`models.backbones.source_config`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.backbones.formats import read_checkpoint_file, unwrap_state_dict
from models.backbones.naming import (
    LATERAL,
    acar_net_name,
    caffe2_name,
    mmaction2_name,
    pyslowfast_name,
    pytorchvideo_name,
)

PYSLOWFAST = "pyslowfast"
MMACTION2 = "mmaction2"
CAFFE2 = "caffe2"  # PySlowFast's Caffe2 pickles
PYTORCHVIDEO = "pytorchvideo"
ACAR_NET = "acar-net"  # ACAR-Net's whole-model checkpoints (backbone part)
BANKFLOW = "bankflow"  # our own ``model.state_dict()``
SCHEMES = (PYSLOWFAST, CAFFE2, MMACTION2, PYTORCHVIDEO, ACAR_NET, BANKFLOW)
_REPORT_LIMIT = 20  # names listed per category in str(LoadReport)
_PTV_STEM = ("blocks.0.multipathway_blocks.0.conv.weight", "blocks.0.conv.weight")
_CAFFE2_IGNORED = ("pred_", "lr", "model_iter")


class CheckpointMismatchError(ValueError):
    """A strict load found missing, unexpected or mis-shaped tensors (message = the report)."""


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
    """Read a checkpoint file into a flat ``{name: tensor}`` dict (torch or Caffe2 pickle).

    Tensor-safe unpickling only (numpy metadata allowed by name); ``allow_pickle=True``
    runs arbitrary code from a torch file: trusted files only.
    """
    return read_checkpoint_file(path, allow_pickle=allow_pickle).tensors


@dataclass(frozen=True)
class Naming:
    """How one checkpoint names our tensors."""

    scheme: str
    slow_only: bool  # no Fast pathway in the file
    prefix: str  # checkpoint keys outside this prefix are not backbone tensors
    to_source: Callable[[str], str | None]

    def is_ignored(self, key: str) -> bool:
        """A tensor that is not part of the backbone on purpose (heads, optimizer)."""
        if self.scheme == PYSLOWFAST:
            return key.startswith("head.")
        if self.scheme == CAFFE2:
            return key.startswith(_CAFFE2_IGNORED) or key.endswith("_momentum")
        if self.scheme == MMACTION2:
            return not key.startswith(self.prefix) or key.startswith(f"{self.prefix}cls_head.")
        if self.scheme == ACAR_NET:  # its neck and head parts (the head loads those)
            return not key.startswith(self.prefix)
        if self.scheme == PYTORCHVIDEO:
            rest = key.removeprefix(self.prefix)
            return not key.startswith(self.prefix) or not rest.startswith(
                ("blocks.0.", "blocks.1.", "blocks.2.", "blocks.3.", "blocks.4.")
            )
        return False


def detect_scheme(state: Mapping[str, Tensor], *, source: str = "<state dict>") -> str:
    """Which naming a SlowFast / SlowOnly state dict uses (one of ``SCHEMES``)."""
    return detect_naming(state, source=source).scheme


def detect_naming(
    state: Mapping[str, Tensor], *, source: str = "<state dict>", depths: tuple[int, ...] = ()
) -> Naming:
    """The :class:`Naming` of a state dict, from its keys."""
    keys = list(state)
    if "s1.pathway0_stem.conv.weight" in state:
        slow_only = "s1.pathway1_stem.conv.weight" not in state
        return Naming(PYSLOWFAST, slow_only, "", pyslowfast_name)
    if "conv1_w" in state or "res_conv1_bn_s" in state:
        slow_only = "t_conv1_w" not in state
        found = _caffe2_depths(state)
        return Naming(CAFFE2, slow_only, "", partial(caffe2_name, depths=depths or found))
    for prefix in ("backbone.", ""):
        if f"{prefix}slow_path.conv1.conv.weight" in state:
            return Naming(MMACTION2, False, prefix, partial(mmaction2_name, prefix=prefix))
        if f"{prefix}conv1.conv.weight" in state and f"{prefix}layer1.0.conv1.conv.weight" in state:
            return Naming(
                MMACTION2, True, prefix, partial(mmaction2_name, prefix=prefix, slow_only=True)
            )
    for key in keys:
        for stem in _PTV_STEM:
            if key.endswith(stem) and (key == stem or key.endswith("." + stem)):
                prefix, slow_only = key.removesuffix(stem), stem == "blocks.0.conv.weight"
                return Naming(
                    PYTORCHVIDEO,
                    slow_only,
                    prefix,
                    partial(pytorchvideo_name, prefix=prefix, slow_only=slow_only),
                )
    for key in keys:
        if key == "slow_conv1.weight" or key.endswith(".slow_conv1.weight"):
            prefix = key.removesuffix("slow_conv1.weight")
            norm = f"{prefix}Tconv1.weight" not in state
            return Naming(
                ACAR_NET,
                False,
                prefix,
                partial(acar_net_name, prefix=prefix, lateral_norm=norm),
            )
    if "slow.stem.conv.weight" in state:
        return Naming(BANKFLOW, "fast.stem.conv.weight" not in state, "", lambda k: k)
    raise ValueError(
        f"checkpoint {source}: not a SlowFast checkpoint (nor SlowOnly) in PySlowFast"
        " (s1.pathway0_stem.*), Caffe2 (conv1_w), MMAction2 (backbone.slow_path.* /"
        " backbone.conv1.*), pytorchvideo (blocks.0.*), ACAR-Net (backbone.module.slow_conv1.*)"
        " or bankflow (slow.stem.*) naming;"
        f" first keys: {keys[:5]}"
    )


def _caffe2_depths(state: Mapping[str, Tensor]) -> tuple[int, ...]:
    """Blocks per stage of a Caffe2 file (its lateral names carry the last block index)."""
    depths = []
    for stage in range(2, 6):
        count = 0
        while f"res{stage}_{count}_branch2a_w" in state:
            count += 1
        depths.append(max(count, 1))
    return tuple(depths)


def read_architecture(
    state: Mapping[str, Tensor], *, source: str = "<state dict>"
) -> dict[str, Any]:
    """The :class:`~models.backbones.slowfast.SlowFastConfig` fields the tensors reveal.

    Depths, width, beta, Fast pathway or not, stem and per-block temporal kernels,
    non-local placement, lateral kernel, norm and channel ratio. Not revealed (no tensor
    depends on them): spatial strides, dilations, alpha, Slow frame sampling, non-local
    pooling and normalisation, input normalisation.
    """
    naming = detect_naming(state, source=source)
    src = naming.to_source

    def shape(key: str) -> tuple[int, ...] | None:
        name = src(key)
        return tuple(state[name].shape) if name is not None and name in state else None

    stem = shape("slow.stem.conv.weight")
    if stem is None:
        raise ValueError(f"checkpoint {source}: no Slow stem conv ({src('slow.stem.conv.weight')})")
    arch: dict[str, Any] = {"width": stem[0], "slow_stem_temporal_kernel": stem[2]}
    arch["fast_pathway"] = not naming.slow_only
    pathways = ("slow",) if naming.slow_only else ("slow", "fast")
    depths = []
    for stage in range(4):
        count = 0
        while shape(f"slow.stages.{stage}.{count}.a.conv.weight") is not None:
            count += 1
        depths.append(count)
    arch["depths"] = tuple(depths)
    for pathway in pathways:
        kernels, nonlocal_blocks = [], []
        for stage, depth in enumerate(depths):
            per_block = tuple(
                (shape(f"{pathway}.stages.{stage}.{b}.a.conv.weight") or (0, 0, 0))[2]
                for b in range(depth)
            )
            kernels.append(per_block[0] if len(set(per_block)) == 1 else per_block)
            nonlocal_blocks.append(
                tuple(
                    b
                    for b in range(depth)
                    if shape(f"{pathway}.stages.{stage}.nonlocal{b}.theta.weight") is not None
                )
            )
        arch[f"{pathway}_temporal_kernels"] = tuple(kernels)
        arch[f"{pathway}_nonlocal"] = tuple(nonlocal_blocks)
    if not naming.slow_only:
        fast_stem = shape("fast.stem.conv.weight")
        lateral = shape("laterals.0.conv.weight")
        if fast_stem is not None:
            arch["fast_stem_temporal_kernel"] = fast_stem[2]
            if fast_stem[0] and stem[0] % fast_stem[0] == 0:
                arch["beta_inv"] = stem[0] // fast_stem[0]
        if lateral is not None:
            arch["fusion_kernel"] = lateral[2]
            if lateral[1]:
                arch["fusion_ratio"] = lateral[0] // lateral[1]
        arch["lateral_norm"] = shape("laterals.0.bn.weight") is not None
    else:
        arch["alpha"] = 1
    return arch


def infer_config_overrides(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """``fusion_kernel`` and ``lateral_norm`` as a SlowFast checkpoint was trained with
    (the lateral choices of :func:`read_architecture`)."""
    arch = read_architecture(state)
    return {k: arch[k] for k in ("lateral_norm", "fusion_kernel") if k in arch}


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
    naming = detect_naming(state, source=source, depths=_model_depths(model))
    to_source = naming.to_source
    report = LoadReport(scheme=naming.scheme, source=source)

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
        (report.ignored if naming.is_ignored(key) else report.unexpected).append(key)
    report.hints = _hints(report, to_source)

    if strict and not report.ok:
        raise CheckpointMismatchError(str(report))
    with torch.no_grad():
        for target, tensor in pairs:
            target.copy_(tensor)
    return report


def _model_depths(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    return tuple(getattr(config, "depths", ()))


def _hints(report: LoadReport, to_source: Callable[[str], str | None]) -> list[str]:
    hints = []
    for m in report.mismatched:
        is_lateral_conv = LATERAL.match(m.key) is not None and m.key.endswith("conv.weight")
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
