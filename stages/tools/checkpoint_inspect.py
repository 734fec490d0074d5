"""``bankflow checkpoint inspect``: what a backbone checkpoint is and whether it loads.

Reads the file (never running code from it), detects its container (torch / Caffe2 pickle)
and naming scheme, reads the architecture from ``source_config`` or the config the file
embeds and from its tensors, builds that network and loads the file into it without
strictness, then reports tensors loaded / missing / unexpected / mis-shaped and the
prefixes ignored on purpose (heads, optimizer state).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from models.backbones import SlowFast, load_slowfast_checkpoint, resolve_architecture
from models.backbones.builders import refuse_unknown
from models.backbones.checkpoint import detect_naming, read_architecture
from models.backbones.formats import read_checkpoint_file
from stages.framework import StageError


@dataclass
class InspectResult:
    lines: list[str] = field(default_factory=list)
    loadable: bool = False  # build_backbone(..., weights=FILE, source_config=CFG) would succeed


def _prefix(key: str) -> str:
    parts = key.split(".")
    if len(parts) > 1:
        return ".".join(parts[:2]) + ".*" if parts[0] in ("model", "backbone") else parts[0] + ".*"
    return key.split("_")[0] + "_*"


def inspect_checkpoint(path: str | Path, source_config: str | None = None) -> InspectResult:
    """Inspect one checkpoint; :class:`StageError` (one line) when it cannot be read."""
    try:
        file = read_checkpoint_file(path)
        naming = detect_naming(file.tensors, source=str(path))
        revealed = read_architecture(file.tensors, source=str(path))
        family = "slowfast" if revealed.get("fast_pathway", True) else "slowonly"
        config, _, unknown = resolve_architecture(
            family, {}, {}, weights=path, source_config=source_config
        )
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(f"checkpoint inspect: {str(exc).splitlines()[0]}") from exc
    result = InspectResult()
    out = result.lines
    out.append(f"file: {path}")
    out.append(f"format: {file.container}, {naming.scheme} naming, {len(file.tensors)} tensors")
    where = source_config or (
        "the cfg embedded in the file"
        if file.pyslowfast_cfg
        else "the config in the file's meta"
        if file.mmaction2_cfg
        else None
    )
    out.append(f"architecture from: {where or 'the tensors only'}")
    out.append(
        f"  {family}: depths {config.depths}, width {config.width}, alpha {config.alpha},"
        f" strides {config.spatial_strides}, dilations {config.dilations},"
        f" slow sampling {config.slow_sampling}"
    )
    out.append(
        f"  temporal kernels slow {config.slow_temporal_kernels}, fast"
        f" {config.fast_temporal_kernels}; lateral kernel {config.fusion_kernel}, lateral"
        f" norm {config.lateral_norm}"
    )
    nonlocal_blocks = {p: getattr(config, f"{p}_nonlocal") for p in ("slow", "fast")}
    if any(any(v) for v in nonlocal_blocks.values()):
        out.append(
            f"  non-local after blocks {nonlocal_blocks} (pool {config.nonlocal_pool},"
            f" {config.nonlocal_instantiation})"
        )
    if config.input_mean is not None:
        out.append(f"  input mean {config.input_mean}, std {config.input_std}")
    report = load_slowfast_checkpoint(SlowFast(config), file.tensors, strict=False)
    out.append(
        f"tensors: {len(report.loaded)} loaded, {len(report.missing)} missing,"
        f" {len(report.unexpected)} unexpected, {len(report.mismatched)} mis-shaped,"
        f" {len(report.ignored)} ignored"
    )
    for title, items in (
        ("missing", report.missing),
        ("unexpected", report.unexpected),
        (
            "mis-shaped",
            [
                f"{m.key} <- {m.source_key}: model {m.model_shape}, file {m.checkpoint_shape}"
                for m in report.mismatched
            ],
        ),
    ):
        out.extend(f"  {title}: {item}" for item in items[:20])
        if len(items) > 20:
            out.append(f"  ... and {len(items) - 20} more {title}")
    prefixes = Counter(_prefix(k) for k in report.ignored)
    if prefixes:
        out.append("ignored prefixes: " + ", ".join(f"{p} ({n})" for p, n in prefixes.items()))
    out.extend(f"hint: {h}" for h in report.hints)
    if unknown:
        out.append(f"undetermined: {refuse_unknown(str(path), naming.scheme, unknown)}")
    result.loadable = report.ok and not unknown
    out.append("verdict: loads" if result.loadable else "verdict: would be refused")
    return result
