"""Pipeline configuration: one YAML file, one section per stage, ``--set`` overrides.

``load_config(path, ["detect.min_score=0.8", "dataset.root=/data/ava"])`` reads the YAML,
applies each override (the value is parsed as YAML, so numbers, booleans and lists work),
and validates the result. Unknown keys are errors, so a typo in ``--set`` is caught
before any stage runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from stages.data.dataset import DatasetConfig
from stages.data.names import name_problem
from stages.detect import DetectConfig
from stages.dump import DumpSection
from stages.ensemble import EnsembleSection
from stages.evaluate.stage import EvaluateConfig
from stages.extract import ExtractConfig
from stages.finetune import FinetuneConfig
from stages.rebalance import RebalanceSection
from stages.report import ReportConfig
from stages.track import TrackConfig
from stages.train import TrainSection
from stages.train_bank import TrainBankSection
from stages.tta import TTAConfig
from stages.world import WorldConfig


class ConfigError(ValueError):
    """A config file or override is invalid (the message names file and key)."""


class PipelineConfig(BaseModel):
    """Every stage's section. Sections of stages not built yet are simply absent."""

    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    dataset: DatasetConfig
    # When set and ``dataset.root`` holds no dataset yet, the pipeline builds this demo
    # world there first (the demo config uses it; real datasets leave it out).
    world: WorldConfig | None = None
    detect: DetectConfig = DetectConfig()
    track: TrackConfig = TrackConfig()
    # Optional: fine-tune the backbone end-to-end before extraction (None skips it).
    finetune: FinetuneConfig | None = None
    extract: ExtractConfig = ExtractConfig()
    train: TrainSection = TrainSection()
    # Long-term banks dumped from stage-1 runs, and the stage-2 heads that read them.
    dump: DumpSection = DumpSection()
    train_bank: TrainBankSection = TrainBankSection()
    # Test-time augmentation (stages.tta): extra extraction views, averaged per box.
    tta: TTAConfig | None = None
    evaluate: EvaluateConfig = EvaluateConfig()
    # Class-balanced classifier re-training (cRT) of the named runs (none by default).
    rebalance: RebalanceSection = RebalanceSection()
    # Average-voting ensembles over the models (none by default).
    ensemble: EnsembleSection = EnsembleSection()
    # The Markdown/HTML report of the run (null: no report).
    report: ReportConfig | None = ReportConfig()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    path = [p for p in dotted.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {part!r} is a value ({child!r}), not a section"
                )
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


# Sections whose entries are named runs, and the field a new entry must set.
RUN_SECTIONS = {
    ("train", "runs"): "head",
    ("train_bank", "runs"): "head",
    ("dump", "banks"): "from",
}


def _run_names(data: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    names = {}
    for section, field in RUN_SECTIONS:
        entries = (
            (data.get(section) or {}).get(field) if isinstance(data.get(section), dict) else None
        )
        names[(section, field)] = sorted(entries) if isinstance(entries, dict) else []
    return names


def check_new_runs(before: dict[str, Any], after: dict[str, Any], overrides: list[str]) -> None:
    """A run that only ``--set`` creates must name its head (a bank its ``from``): a typo
    in a run name (``train.runs.linaer.optim.epochs=2``) would otherwise add a run."""
    existing = _run_names(before)
    for (section, field), names in _run_names(after).items():
        required = RUN_SECTIONS[(section, field)]
        for name in sorted(set(names) - set(existing[(section, field)])):
            entry = after[section][field][name]
            if isinstance(entry, dict) and required in entry:
                continue
            prefix = f"{section}.{field}.{name}"
            culprit = next((o for o in overrides if o.strip().startswith(prefix)), prefix)
            known = ", ".join(existing[(section, field)]) or "none"
            raise ConfigError(
                f"override {culprit!r}: {prefix} is not a run of the config (its "
                f"{section}.{field}: {known}); a new one must set {prefix}.{required}"
            )


def check_config_names(config: PipelineConfig, path: Path | str) -> None:
    """Run, bank and split names become parts of paths and labels: one file-name part each."""
    named: list[tuple[str, str]] = [
        *((f"train.runs.{n}", n) for n in config.train.runs),
        *((f"train_bank.runs.{n}", n) for n in config.train_bank.runs),
        *((f"dump.banks.{n}", n) for n in config.dump.banks),
        *((f"ensemble.runs.{n}", n) for n in config.ensemble.runs),
        *((f"dataset.splits.{n}", n) for n in config.dataset.splits),
        *(("detect.splits", s) for s in config.detect.splits),
        *(("extract.splits", s) for s in config.extract.splits),
        ("evaluate.split", config.evaluate.split),
    ]
    for key, name in named:
        problem = name_problem(name)
        if problem is not None:
            raise ConfigError(
                f"{path}: {key}: name {name!r} {problem} (names become file names: no '/', "
                "no '..', no leading dot, printable)"
            )


def load_config(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    raw = read_yaml(path)
    before = copy.deepcopy(raw)
    data = apply_overrides(raw, list(overrides or []))
    check_new_runs(before, data, list(overrides or []))
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid config: {problems}") from None
    check_config_names(config, path)
    return config


def packaged_config(name: str) -> Path:
    """Path of a config shipped with bankflow (``flows/configs/<name>.yaml``)."""
    path = Path(__file__).resolve().parent.parent / "flows" / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no packaged config named {name!r} ({path})")
    return path
