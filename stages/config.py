"""Pipeline configuration: one YAML file, one section per stage, ``--set`` overrides.

``load_config(path, ["detect.min_score=0.8", "dataset.root=/data/ava"])`` reads the YAML,
applies each override (the value is parsed as YAML, so numbers, booleans and lists work),
and validates the result. Unknown keys are errors, so a typo in ``--set`` is caught
before any stage runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from stages.data.dataset import DatasetConfig
from stages.detect import DetectConfig
from stages.dump import DumpSection
from stages.ensemble import EnsembleSection
from stages.evaluate.stage import EvaluateConfig
from stages.extract import ExtractConfig
from stages.finetune import FinetuneConfig
from stages.rebalance import RebalanceSection
from stages.remote_cache import CacheConfig
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
    # The team's shared stage cache (never part of a key): see stages.remote_cache.
    cache: CacheConfig = CacheConfig()


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


def load_config(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    data = apply_overrides(read_yaml(path), list(overrides or []))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid config: {problems}") from None


def packaged_config(name: str) -> Path:
    """Path of a config shipped with bankflow (``flows/configs/<name>.yaml``)."""
    path = Path(__file__).resolve().parent.parent / "flows" / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no packaged config named {name!r} ({path})")
    return path
