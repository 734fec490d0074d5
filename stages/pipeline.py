"""The pipeline as a sequence of stage calls (docs/design.md §1), independent of Prefect.

This module is the one place that says which stage feeds which: ``run_pipeline`` and the
``run_*_stages`` functions it calls (banks, cRT, TTA, linking, evaluation, ensembles,
the report) build every stage's config and inputs; the stage modules only compute. It
is executed with a *runner*: ``flows.pipeline`` passes one that submits each stage as a
Prefect task, ``bankflow status`` passes one that only computes keys, and tests may run
stages directly. Every run writes ``<work_root>/summary.json`` (:mod:`stages.summary`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from stages.catalog import STAGE_ORDER, STAGES
from stages.config import PipelineConfig
from stages.data import DatasetConfig
from stages.detect import config as detect
from stages.evaluate import config as evaluate
from stages.extract import config as extract
from stages.framework import (
    StageRef,
    is_remote,
    output_dir,
    output_relpath,
    run_stage,
    stage_key,
    stage_status,
)
from stages.framework.fingerprint import dataset_fingerprint
from stages.predict import config as predict
from stages.preflight import preflight
from stages.report import config as report
from stages.summary import (  # the summary's readers are importable from here too
    SUMMARY_FILE,
    format_summary,
    iter_runs,
    summarize,
    tube_table,
    write_summary,
)
from stages.train import config as train

__all__ = [
    "SUMMARY_FILE",
    "PipelineRun",
    "Runner",
    "UntilReached",
    "direct_runner",
    "dry_runner",
    "format_summary",
    "iter_runs",
    "prepare_dataset",
    "report_inputs",
    "run_pipeline",
    "tube_table",
]

log = logging.getLogger("bankflow.pipeline")


class Runner(Protocol):
    def __call__(
        self,
        stage: str,
        config: BaseModel,
        inputs: dict[str, StageRef],
        work_root: Path,
        force: bool,
    ) -> tuple[StageRef, bool]: ...


def direct_runner(
    stage: str, config: BaseModel, inputs: dict[str, StageRef], work_root: Path, force: bool
) -> tuple[StageRef, bool]:
    """Run a stage in this process, without Prefect."""
    ref = run_stage(STAGES[stage], config, inputs, work_root, force=force)
    return ref, ref.cached


def dry_runner(
    stage: str, config: BaseModel, inputs: dict[str, StageRef], work_root: Path, force: bool
) -> tuple[StageRef, bool]:
    """Compute the key a stage would have, run nothing (for ``bankflow status``)."""
    key = stage_key(STAGES[stage], config, inputs)
    status = stage_status(work_root, STAGES[stage], key)
    ref = StageRef(
        stage=stage,
        key=key,
        uri=str(output_dir(work_root, stage, key)),
        digest="",
        summary={"status": status},
        cached=status["state"] == "cached",
        seconds=status["seconds"] or 0.0,
    )
    return ref, ref.cached


class UntilReached(Exception):
    """Raised after the ``--until`` stage has run; ends the pipeline early."""


@dataclass
class PipelineRun:
    config: PipelineConfig
    work_root: Path
    runner: Runner = direct_runner
    until: str | None = None
    force: frozenset[str] = frozenset()
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    refs: dict[str, StageRef] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    pending_runs: dict[str, int] = field(default_factory=dict)  # stage -> runs still to come
    # The team's stage cache URL (--cache); else BANKFLOW_CACHE, else the config's cache.url.
    cache_url: str | None = None
    cache: Any = None  # the opened StageCache once the run has planned against it
    with_cache: bool = True  # False for dry passes (status, the cache plan itself)

    def __post_init__(self) -> None:
        for name in [self.until, *self.force]:
            if name is not None and name not in STAGE_ORDER:
                raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")
        self.work_root = Path(self.work_root)

    def stage(
        self, name: str, config: BaseModel, inputs: dict[str, StageRef], *, label: str | None = None
    ) -> StageRef:
        """Run one stage; ``label`` names one of several runs of a stage (``train:acar``)."""
        t0 = time.perf_counter()
        ref, cached = self.runner(name, config, inputs, self.work_root, name in self.force)
        record_name = f"{name}:{label}" if label else name
        outcome = getattr(self.runner, "outcomes", {}).get((name, ref.key)) or {
            "source": "local" if cached else "computed",
            "bytes_pulled": 0,
            "bytes_pushed": 0,
        }
        self.refs[record_name] = ref
        self.records[record_name] = {
            "key": ref.key,
            # Relative to the work root; an output read in place from a cache: its URL.
            "uri": ref.uri if is_remote(ref.uri) else output_relpath(name, ref.key),
            "cached": cached,
            **outcome,  # source: computed | local | pulled | remote | skipped; bytes moved
            "seconds": round(time.perf_counter() - t0, 3),
            "compute_seconds": round(ref.seconds, 3),
            "summary": ref.summary,
        }
        if name == self.until and not self._more_runs_of(name):
            raise UntilReached(name)
        return ref

    def _more_runs_of(self, name: str) -> bool:
        """Several runs of one stage (train per head) all finish before ``--until`` stops."""
        left = self.pending_runs.get(name, 1) - 1
        self.pending_runs[name] = left
        return left > 0

    def summary(self, *, absolute: bool = True) -> dict[str, Any]:
        """The run's summary (:func:`stages.summary.summarize`): outputs relative to the
        work root (``absolute=False``, as summary.json holds them) or as paths under it."""
        return summarize(
            self.records,
            config_name=self.config.name,
            evaluate_split=self.config.evaluate.split,
            work_root=self.work_root,
            seconds=time.perf_counter() - self.started,
            cache_url=self.cache.url if self.cache is not None else None,
            absolute=absolute,
        )

    def write_summary(self) -> Path:
        return write_summary(self.work_root, self.summary(absolute=False))


def check_world_config(root: Path, world: BaseModel) -> None:
    """Refuse to build over a demo world that was made with another config."""
    marker = root / "world.json"
    if not marker.is_file():
        return
    built = json.loads(marker.read_text()).get("config")
    wanted = json.loads(json.dumps(world.model_dump(mode="json")))
    if built != wanted:
        raise ValueError(
            f"{root} holds a demo world built with another config ({marker}); "
            "choose another dataset.root or delete it"
        )


def prepare_dataset(config: PipelineConfig) -> tuple[DatasetConfig, str]:
    """The dataset config and its fingerprint; builds the demo world first if configured,
    then checks the inputs before any stage runs (:func:`stages.preflight.preflight`)."""
    root = Path(config.dataset.root)
    if config.world is not None:
        from stages.world import build_world
        from stages.world.tubes import TubeWorldConfig, build_tube_world

        check_world_config(root, config.world)
        # Idempotent: a complete world of this config is returned at once, a partial one
        # (killed build, deleted file) is rebuilt.
        if isinstance(config.world, TubeWorldConfig):
            build_tube_world(root, config.world)
        else:
            build_world(root, config.world)
    dataset = config.dataset.model_copy(update={"root": root.resolve()})
    # Stage configs travel as plain dicts (every field then counts as set), so a tube
    # dataset's dataset.yaml (its ``tubes:`` block) is merged here, at the edge.
    resolved = dataset.resolved() if root.is_dir() else dataset
    if resolved.tubes is not None:
        dataset = resolved
    preflight(config, dataset)
    return dataset, dataset_fingerprint(dataset)


def dataset_section(config: PipelineConfig, dataset: DatasetConfig, fingerprint: str):
    """Stage configs of the stages that read the dataset: their own section + the dataset."""

    def section(stage_config_type: type[BaseModel], name: str) -> BaseModel:
        return stage_config_type.model_validate(
            {"dataset": dataset, "dataset_fingerprint": fingerprint, name: getattr(config, name)}
        )

    return section


def run_bank_stages(
    run: PipelineRun,
    dataset: DatasetConfig,
    fingerprint: str,
    features: StageRef,
    stage1: dict[str, StageRef],
) -> dict[str, StageRef]:
    """Each dump (from its stage-1 run), then each stage-2 run; returns the stage-2 models."""
    cfg = run.config
    clash = sorted(set(cfg.train_bank.runs) & set(cfg.train.runs))
    if clash:
        raise ValueError(f"train_bank runs {clash} have the names of train runs; rename them")

    def stage1_run(name: str, who: str) -> StageRef:
        if name not in stage1:
            raise ValueError(f"{who}: no train run {name!r}; train runs are {sorted(stage1)}")
        return stage1[name]

    banks: dict[str, StageRef] = {}
    run.pending_runs["dump"] = len(cfg.dump.banks)
    for name, bank in cfg.dump.banks.items():
        inputs = {"train": stage1_run(bank.from_, f"dump.banks.{name}.from"), "extract": features}
        banks[name] = run.stage(
            "dump", train.DumpStageConfig(name=name, bank=bank), inputs, label=name
        )
    models: dict[str, StageRef] = {}
    run.pending_runs["train_bank"] = len(cfg.train_bank.runs)
    for name, head_run in cfg.train_bank.runs.items():
        inputs = {"extract": features}
        if head_run.bank_mode == "offline":
            if head_run.bank not in banks:
                raise ValueError(
                    f"train_bank.runs.{name}.bank: no dump {head_run.bank!r}; dumps are "
                    f"{sorted(banks)}"
                )
            inputs["dump"] = banks[head_run.bank]
        if head_run.init == "stage1":
            source = head_run.stage1 or cfg.dump.banks[str(head_run.bank)].from_
            inputs["train"] = stage1_run(source, f"train_bank.runs.{name}")
        bank_config = train.TrainBankStageConfig(
            dataset=dataset, dataset_fingerprint=fingerprint, name=name, run=head_run
        )
        models[name] = run.stage("train_bank", bank_config, inputs, label=name)
    return models


def run_rebalance_stages(
    run: PipelineRun,
    dataset: DatasetConfig,
    fingerprint: str,
    features: StageRef,
    models: Mapping[str, StageRef],
) -> dict[str, StageRef]:
    """cRT (``rebalance.models``): one rebalance run per named train / train_bank run,
    each published as the model ``<name>_crt``. Returns {model name: StageRef}."""
    section = run.config.rebalance
    settings = train.RebalanceSettings(**section.model_dump(exclude={"models"}))
    out: dict[str, StageRef] = {}
    run.pending_runs["rebalance"] = len(section.models)
    for source in section.models:
        if source not in models:
            raise ValueError(
                f"rebalance.models: no model {source!r}; models are {', '.join(models)}"
            )
        name = train.crt_name(source)
        if name in models:
            raise ValueError(
                f"rebalance.models: {source!r} would be published as {name!r}, "
                "which is already a model name; rename that run"
            )
        config = train.RebalanceStageConfig(
            dataset=dataset,
            dataset_fingerprint=fingerprint,
            name=name,
            source=source,
            rebalance=settings,
        )
        out[name] = run.stage(
            "rebalance", config, {"model": models[source], "extract": features}, label=name
        )
    return out


def run_tta_stages(
    run: PipelineRun, section: Callable[[type[Any], str], Any]
) -> dict[str, StageRef]:
    """Test-time augmentation (the ``tta`` section, :mod:`stages.predict.tta`): extract
    every view of the evaluated split, then one ``predict`` run per stage-1 train run,
    labelled ``<run>_tta`` (as cRT's are ``<run>_crt``); returns those.

    The views are the base extraction with ``short_side`` / ``flip`` replaced; each is an
    extract stage run of its own key (run through the pipeline's runner, so Prefect
    caches them like any extraction) on the same track/detect (and finetune) inputs.
    Stage-2 runs (which read banks) are left out.
    """
    cfg = run.config
    assert cfg.tta is not None
    split = cfg.evaluate.split
    base = section(extract.ExtractStageConfig, "extract")
    assert isinstance(base, extract.ExtractStageConfig)
    inputs: dict[str, StageRef] = {
        n: run.refs[n] for n in ("track", "detect", "finetune") if n in run.refs
    }
    views: list[StageRef] = [run.refs["extract"]] if cfg.tta.include_base else []
    for view in cfg.tta.views:
        config: BaseModel = base.model_copy(
            update={"extract": predict.view_extract_config(base.extract, view, split)}
        )
        ref, _ = run.runner("extract", config, inputs, run.work_root, "extract" in run.force)
        views.append(ref)
    stage1 = {n[len("train:") :]: r for n, r in run.refs.items() if n.startswith("train:")}
    run.pending_runs["predict"] = len(stage1)
    out = {}
    for name, model in stage1.items():
        config = predict.PredictStageConfig(
            dataset=base.dataset,
            dataset_fingerprint=base.dataset_fingerprint,
            split=split,
            tta=cfg.tta,
        )
        view_inputs = {f"view{k}": ref for k, ref in enumerate(views)}
        label = f"{name}_tta"
        out[label] = run.stage("predict", config, {"train": model, **view_inputs}, label=label)
    return out


def run_link_stages(
    run: PipelineRun, dataset: DatasetConfig, fingerprint: str, models: Mapping[str, StageRef]
) -> dict[str, StageRef]:
    """Tube datasets: each model's detections of the evaluated split linked into tubes
    (the ``link`` section, :mod:`stages.evaluate.link`); AVA datasets have none.
    Returns {model name: StageRef}."""
    if dataset.tubes is None:
        return {}
    config = evaluate.LinkStageConfig(
        dataset=dataset,
        dataset_fingerprint=fingerprint,
        split=run.config.evaluate.split,
        train_split=run.config.evaluate.train_split,
        link=run.config.link,
    )
    run.pending_runs["link"] = len(models)
    return {
        name: run.stage("link", config, {"predictions": predictions}, label=name)
        for name, predictions in models.items()
    }


def run_evaluate_stages(
    run: PipelineRun,
    dataset: DatasetConfig,
    fingerprint: str,
    models: Mapping[str, StageRef],
    tubes: Mapping[str, StageRef],
) -> dict[str, StageRef]:
    """One evaluation per model (with its linked tubes on a tube dataset)."""
    config = evaluate.EvaluateStageConfig(
        dataset=dataset, dataset_fingerprint=fingerprint, evaluate=run.config.evaluate
    )
    run.pending_runs["evaluate"] = len(models)
    out = {}
    for name, predictions in models.items():
        inputs = {"predictions": predictions, **({"tubes": tubes[name]} if name in tubes else {})}
        out[name] = run.stage("evaluate", config, inputs, label=name)
    return out


def run_ensemble_stages(
    run: PipelineRun, dataset: DatasetConfig, fingerprint: str, models: Mapping[str, StageRef]
) -> dict[str, StageRef]:
    """The ensembles (``ensemble.runs``) over the models. Returns {ensemble name: StageRef}."""
    runs = run.config.ensemble.runs
    out: dict[str, StageRef] = {}
    run.pending_runs["ensemble"] = len(runs)
    for name, ens in runs.items():
        members = list(ens.members) or list(models)
        unknown = [m for m in members if m not in models]
        if unknown:
            raise ValueError(
                f"ensemble.runs.{name}.members: no model {unknown}; models are {', '.join(models)}"
            )
        if len(set(members)) != len(members):
            raise ValueError(f"ensemble.runs.{name}.members lists a model twice: {members}")
        config = predict.EnsembleStageConfig(
            dataset=dataset, dataset_fingerprint=fingerprint, name=name, members=members, run=ens
        )
        out[name] = run.stage("ensemble", config, {m: models[m] for m in members}, label=name)
    return out


def report_inputs(refs: Mapping[str, StageRef]) -> dict[str, StageRef]:
    """The report's inputs from a pipeline's recorded stage runs: runs of stages that
    produce a model (``Stage.produces_model``) as ``model:<name>``, every other run under
    its record name (``detect``, ``evaluate:<name>``, ``ensemble:<name>``, ``dump:<name>``, …)."""
    out: dict[str, StageRef] = {}
    for record_name, ref in refs.items():
        stage, _, label = record_name.partition(":")
        if stage == "report":
            continue
        out[f"model:{label}" if STAGES[stage].produces_model and label else record_name] = ref
    return out


def run_report_stage(run: PipelineRun, dataset: DatasetConfig, fingerprint: str) -> StageRef:
    """The report over every stage run so far."""
    assert run.config.report is not None
    config = report.ReportStageConfig(
        dataset=dataset,
        dataset_fingerprint=fingerprint,
        split=run.config.evaluate.split,
        report=run.config.report,
    )
    return run.stage("report", config, report_inputs(run.refs))


def run_pipeline(run: PipelineRun, *, write: bool = True) -> dict[str, Any]:
    """detect -> track -> (finetune) -> extract -> train -> dump -> train_bank -> rebalance
    -> predict (TTA) -> link (tube datasets) -> evaluate -> ensemble -> report. Returns the
    summary."""
    cfg = run.config
    if run.with_cache and run.cache is None:
        from stages.framework.cached_run import use_cache  # plans against the team's stage cache

        use_cache(run, run_pipeline)
    try:
        dataset, fingerprint = prepare_dataset(cfg)
        section = dataset_section(cfg, dataset, fingerprint)
        persons = run.stage("detect", section(detect.DetectStageConfig, "detect"), {})
        actors = run.stage("track", section(detect.TrackStageConfig, "track"), {"detect": persons})
        backbone_inputs: dict[str, StageRef] = {}
        if cfg.finetune is not None:
            tune_config = extract.FinetuneStageConfig(
                dataset=dataset,
                dataset_fingerprint=fingerprint,
                finetune=cfg.finetune,
                extract=extract.BackboneConfig.of(cfg.extract),
            )
            backbone_inputs["finetune"] = run.stage("finetune", tune_config, {})
        features = run.stage(
            "extract",
            section(extract.ExtractStageConfig, "extract"),
            {"track": actors, "detect": persons, **backbone_inputs},
        )
        models: dict[str, StageRef] = {}
        run.pending_runs["train"] = len(cfg.train.runs)
        for name, head_run in cfg.train.runs.items():
            head_config = train.TrainStageConfig(
                dataset=dataset, dataset_fingerprint=fingerprint, name=name, run=head_run
            )
            models[name] = run.stage("train", head_config, {"extract": features}, label=name)
        models.update(run_bank_stages(run, dataset, fingerprint, features, models))
        # cRT of the chosen train / train_bank runs: the models <name>_crt.
        models.update(run_rebalance_stages(run, dataset, fingerprint, features, models))
        if cfg.tta is not None:  # test-time augmentation: extra views, averaged
            models.update(run_tta_stages(run, section))
        tubes = run_link_stages(run, dataset, fingerprint, models)
        run_evaluate_stages(run, dataset, fingerprint, models, tubes)
        run_ensemble_stages(run, dataset, fingerprint, models)
        if cfg.report is not None:
            run_report_stage(run, dataset, fingerprint)
    except UntilReached:
        pass
    if write:
        run.write_summary()
    return run.summary()
