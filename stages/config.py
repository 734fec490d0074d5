"""Pipeline configuration: one YAML file, one section per stage, ``--set`` overrides.

``load_config(path, ["detect.min_score=0.8", "dataset.root=/data/ava"])`` reads the YAML,
applies each override (the value is parsed as YAML, so numbers, booleans and lists work),
and validates the result. Unknown keys are errors, so a typo in ``--set`` is caught
before any stage runs.

A file may start from another: ``base: demo.yaml`` (a path relative to the file) reads
that file first and merges this one into it — mappings key by key, recursively; any
other value (list, number, ``null``) replaces the base's. A mapping holding
``_replace_: true`` replaces the base's mapping whole instead (drop runs of the base).
One level only: a base file has no ``base:`` itself, so every value is found by reading
at most two files (``bankflow config show`` prints the result).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from stages.data.dataset import DatasetConfig
from stages.data.names import name_problem
from stages.detect.config import DetectConfig, TrackConfig
from stages.evaluate.config import EvaluateConfig
from stages.evaluate.tube_eval import LinkingConfig
from stages.extract.config import ExtractConfig, FinetuneConfig
from stages.framework.remote_cache import CacheConfig
from stages.predict.config import EnsembleSection, TTAConfig
from stages.report.config import ReportConfig
from stages.train.config import (
    HEADS_CHECK,
    DumpSection,
    RebalanceSection,
    TrainBankSection,
    TrainSection,
    crt_name,
)
from stages.world.config import TubeWorldConfig, WorldConfig


class ConfigError(ValueError):
    """A config file or override is invalid (the message names file and key)."""


class PipelineConfig(BaseModel):
    """Every stage's section. Sections of stages not built yet are simply absent."""

    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    dataset: DatasetConfig
    # When set and ``dataset.root`` holds no dataset yet, the pipeline builds this demo
    # world there first (the demo config uses it; real datasets leave it out).
    # ``format: tubes`` builds the tube world (stages.world.tubes) instead.
    world: WorldConfig | TubeWorldConfig | None = None
    detect: DetectConfig = DetectConfig()
    track: TrackConfig = TrackConfig()
    # Optional: fine-tune the backbone end-to-end before extraction (None skips it).
    finetune: FinetuneConfig | None = None
    extract: ExtractConfig = ExtractConfig()
    train: TrainSection = TrainSection()
    # Long-term banks dumped from stage-1 runs, and the stage-2 heads that read them.
    dump: DumpSection = DumpSection()
    train_bank: TrainBankSection = TrainBankSection()
    # Test-time augmentation (stages.predict.tta): extra extraction views, averaged per box.
    tta: TTAConfig | None = None
    # Tube datasets: linking per-frame detections into tubes (MOC's linker; AVA skips it).
    link: LinkingConfig = LinkingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    # Class-balanced classifier re-training (cRT) of the named runs (none by default).
    rebalance: RebalanceSection = RebalanceSection()
    # Average-voting ensembles over the models (none by default).
    ensemble: EnsembleSection = EnsembleSection()
    # The Markdown/HTML report of the run (null: no report).
    report: ReportConfig | None = ReportConfig()
    # The team's shared stage cache (never part of a key): see stages.framework.remote_cache.
    cache: CacheConfig = CacheConfig()

    @model_validator(mode="after")
    def _references_resolve(self) -> PipelineConfig:
        """Runs that name other runs (a dump's ``from``, a stage-2 run's bank and stage-1
        run, cRT and ensemble members) name ones that exist, so a typo fails at load time,
        not after the stages before it ran. The pipeline checks again when it wires them."""
        stage1 = set(self.train.runs)
        clash = sorted(set(self.train_bank.runs) & stage1)
        if clash:
            raise ValueError(f"train_bank.runs {clash} have the names of train runs; rename them")
        for name, bank in self.dump.banks.items():
            _known(f"dump.banks.{name}.from", bank.from_, stage1, "train runs")
        for name, run in self.train_bank.runs.items():
            if run.bank_mode == "offline":
                _known(f"train_bank.runs.{name}.bank", run.bank, set(self.dump.banks), "dumps")
            if run.init == "stage1":
                source = run.stage1 or self.dump.banks[str(run.bank)].from_
                _known(f"train_bank.runs.{name}.stage1", source, stage1, "train runs")
        models = [*self.train.runs, *self.train_bank.runs]
        for source in self.rebalance.models:
            _known("rebalance.models", source, set(models), "models")
        models += [crt_name(source) for source in self.rebalance.models]
        if (
            self.tta is not None
        ):  # one predict run per stage-1 run, labelled as stages.predict.tta does
            models += [f"{name}_tta" for name in self.train.runs]
        for name, ens in self.ensemble.runs.items():
            for member in ens.members:
                _known(f"ensemble.runs.{name}.members", member, set(models), "models")
        return self


def _known(where: str, name: str | None, names: set[str], what: str) -> None:
    if name not in names:
        listed = ", ".join(sorted(names)) or "none"
        raise ValueError(f"{where}: {name!r} is not one of the {what} ({listed})")


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
        raise ConfigError(
            f"override {text!r}: value is not valid YAML ({yaml_problem(exc)})"
        ) from None
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


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error in one line: what, and where (PyYAML's own message spans
    several lines and quotes the text)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


BASE_KEY = "base"
REPLACE_KEY = "_replace_"


def merge_config(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merged key by key (recursively), other values
    replaced; a child mapping with ``_replace_: true`` replaces the base's whole."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and value.get(REPLACE_KEY) is True:
            out[key] = _drop_replace_marks(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = _drop_replace_marks(value) if isinstance(value, dict) else value
    return out


def _drop_replace_marks(value: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _drop_replace_marks(v) if isinstance(v, dict) else v
        for k, v in value.items()
        if k != REPLACE_KEY
    }


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The file's sections with its ``base:`` file (if any) merged under them."""
    path = Path(path)
    data = read_yaml(path)
    if BASE_KEY not in data:
        return _drop_replace_marks(data)
    base_name = data.pop(BASE_KEY)
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: base: expected a config file path, got {base_name!r}")
    base_path = path.parent / base_name
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_name!r} not found (looked at {base_path})")
    base = read_yaml(base_path)
    if BASE_KEY in base:
        raise ConfigError(
            f"{path}: base: {base_path} has a base of its own ({base[BASE_KEY]!r}); "
            "configs inherit one level only"
        )
    return merge_config(_drop_replace_marks(base), data)


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


def load_config(
    path: Path | str, overrides: list[str] | None = None, *, check_heads: bool = True
) -> PipelineConfig:
    """The validated config. Two passes: everything but the checks against the heads
    (no torch: a mistake is reported in about a second), then, with ``check_heads``,
    ``head_kwargs`` and bank kinds against the heads (:data:`stages.train.config.HEADS_CHECK`;
    imports torch). ``bankflow status`` and ``config show`` leave the second pass out."""
    raw = read_config_file(path)
    before = copy.deepcopy(raw)
    data = apply_overrides(raw, list(overrides or []))
    check_new_runs(before, data, list(overrides or []))
    config = _validate(path, data, None)
    check_config_names(config, path)
    if check_heads:
        config = _validate(path, data, {HEADS_CHECK: True})
    return config


def _validate(path: Path | str, data: dict[str, Any], context: Any) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data, context=context)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"{path}: invalid config: {problems}") from None


def _problem(err: Any) -> str:
    """One validation error as ``section.key: message`` (a check across sections names its
    keys in the message)."""
    message = str(err["msg"]).removeprefix("Value error, ")
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {message}" if where else message


def packaged_config(name: str) -> Path:
    """Path of a config shipped with bankflow (``flows/configs/<name>.yaml``)."""
    path = Path(__file__).resolve().parent.parent / "flows" / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no packaged config named {name!r} ({path})")
    return path
