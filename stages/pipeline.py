"""The pipeline as a sequence of stage calls (docs/design.md §1), independent of Prefect.

``run_pipeline`` is the one place that says which stage feeds which. It is executed with
a *runner*: ``flows.pipeline`` passes one that submits each stage as a Prefect task,
``bankflow status`` passes one that only computes keys, and tests may run stages
directly. Every run writes ``<work_root>/summary.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
    write_json_atomic,
)
from stages.framework.fingerprint import dataset_fingerprint
from stages.predict import config as predict
from stages.preflight import preflight
from stages.report import config as report
from stages.train import config as train

log = logging.getLogger("bankflow.pipeline")

SUMMARY_FILE = "summary.json"


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
        stage=stage, key=key, uri=str(output_dir(work_root, stage, key)), digest="",
        summary={"status": status}, cached=status["state"] == "cached",
        seconds=status["seconds"] or 0.0,
    )  # fmt: skip
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
            "source": "local" if cached else "computed", "bytes_pulled": 0, "bytes_pushed": 0,
        }  # fmt: skip
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
        """The run's summary. Outputs are named relative to the work root in
        ``summary.json`` (``absolute=False``: the root may be copied or moved) and as
        paths under ``work_root`` for the caller (``absolute=True``)."""
        place = self._place if absolute else (lambda rel: rel)
        summary: dict[str, Any] = {
            "config": self.config.name,
            **({"work_root": str(self.work_root)} if absolute else {}),
            "finished": dt.datetime.now(dt.UTC).isoformat(),
            "seconds": round(time.perf_counter() - self.started, 3),
            "cache": self._cache_entry(),
            "stages": self._stage_entries(place),
            "models": {},
            "detector": {},
        }
        for record_name, rec in self.records.items():
            stage, _, label = record_name.partition(":")
            if stage in ("train", "train_bank", "rebalance", "predict") and label:
                summ = rec["summary"]
                summary["models"][label] = {
                    "stage": stage,
                    "head": summ.get("head"),
                    "bank": summ.get("bank"),
                    "val_map": summ.get("val_map"),
                    "group_map": summ.get("group_map"),
                    "prior_map": summ.get("prior_map"),
                    "parameters": summ.get("parameters"),
                    "train_seconds": summ.get("train_seconds"),
                    "predictions_csv": place(summ.get("predictions_csv")),
                }
                if stage == "rebalance":  # cRT: the source run and the head/tail change
                    summary["models"][label].update(
                        source=summ.get("source"), val_map_before=summ.get("val_map_before"),
                        crt=summ.get("crt"),
                    )  # fmt: skip
            elif stage == "ensemble" and label:
                summ = rec["summary"]
                summary.setdefault("ensembles", {})[label] = {
                    k: summ.get(k)
                    for k in ("members", "weights", "val_map", "group_map", "best_member",
                              "best_member_map", "gain", "selection_optimistic")
                } | {"predictions_csv": place(summ.get("predictions_csv"))}  # fmt: skip
        if "report" in self.records:
            uri = self.records["report"]["uri"]
            summary["report"] = {"markdown": place(f"{uri}/{report.MARKDOWN_FILE}"),
                                 "html": place(f"{uri}/{report.HTML_FILE}")}  # fmt: skip
        det = self.records.get("detect", {}).get("summary", {})
        evaluated = det.get(self.config.evaluate.split) or {}
        if "ap50" in evaluated:
            summary["detector"] = {"ap50": evaluated["ap50"], "recall": evaluated["recall"]}
        return summary

    def _cache_entry(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        recs = self.records.values()
        return {
            "url": self.cache.url,
            "bytes_pulled": sum(r.get("bytes_pulled", 0) for r in recs),
            "bytes_pushed": sum(r.get("bytes_pushed", 0) for r in recs),
        }

    def _place(self, rel: str | None) -> str | None:
        """A path named relative to the work root, as a path under it (None stays None;
        an output read in place from a stage cache keeps its URL)."""
        if rel is None or is_remote(rel):
            return rel
        return str(self.work_root / rel)

    def _stage_entries(self, place: Callable[[str], str | None]) -> dict[str, dict[str, Any]]:
        """``stages.<name>`` of summary.json: one entry per stage; a stage run several times
        (``train`` per head) has its runs under ``runs`` and totals at the top."""
        entries: dict[str, dict[str, Any]] = {}
        for record_name, stored in self.records.items():
            rec = {**stored, "uri": place(stored["uri"])}
            stage, _, label = record_name.partition(":")
            if not label:
                entries[stage] = rec
                continue
            group = entries.setdefault(stage, {"runs": {}})
            group["runs"][label] = rec
        for stage, group in entries.items():
            if "runs" not in group:
                continue
            runs = list(group["runs"].values())
            keys = [r["key"] for r in runs]
            single = len(runs) == 1
            group.update(
                key=keys[0] if single else hashlib.sha256("+".join(keys).encode()).hexdigest()[:16],
                uri=runs[0]["uri"] if single else place(stage),
                cached=all(r["cached"] for r in runs),
                source=runs[0]["source"] if len({r["source"] for r in runs}) == 1 else "mixed",
                bytes_pulled=sum(r["bytes_pulled"] for r in runs),
                bytes_pushed=sum(r["bytes_pushed"] for r in runs),
                seconds=round(sum(r["seconds"] for r in runs), 3),
            )
            group["runs"] = group.pop("runs")  # after the totals, for readability
        return entries

    def write_summary(self) -> Path:
        self.work_root.mkdir(parents=True, exist_ok=True)
        path = self.work_root / SUMMARY_FILE
        # Outputs relative to the work root (copy, move or rsync it: summary.json holds).
        summary = self.summary(absolute=False)
        write_json_atomic(path, summary, sort_keys=False)  # keep pipeline order
        return path


def tube_table(evaluations: dict[str, Any]) -> str:
    """Frame-mAP and video-mAP per evaluated model on a tube dataset, with the prior-only
    baseline on the same boxes."""
    keys = ("frame_map", "v_map@0.2", "v_map@0.5", "v_map_0.10:0.90")
    head = f"{'tubes':<14} {'split':<6} {'frame-mAP':>9} {'v@0.2':>7} {'v@0.5':>7} {'v@.1:.9':>8}"
    lines = [head + f"  {'prior frame/v@0.5':>18}"]
    for name, rec in evaluations.items():
        ev = rec["summary"]
        prior = ev.get("prior") or {}
        vals = " ".join(f"{ev[k]:>{w}.4f}" for k, w in zip(keys, (9, 7, 7, 8), strict=True))
        lines.append(
            f"{name:<14} {ev.get('split', '-'):<6} {vals}  "
            f"{prior.get('frame_map', float('nan')):>9.4f}/{prior.get('v_map@0.5', float('nan')):.4f}"
        )
    return "\n".join(lines)


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
    run: PipelineRun, dataset: DatasetConfig, fingerprint: str, features: StageRef,
    models: Mapping[str, StageRef],
) -> dict[str, StageRef]:  # fmt: skip
    """The pipeline's cRT runs (``rebalance.models``): one per named train / train_bank
    run, each published as the model ``<name>_crt``. Returns {model name: StageRef}."""
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
            raise ValueError(f"rebalance.models: {source!r} would be published as {name!r}, "
                             "which is already a model name; rename that run")  # fmt: skip
        config = train.RebalanceStageConfig(
            dataset=dataset, dataset_fingerprint=fingerprint, name=name, source=source,
            rebalance=settings,
        )  # fmt: skip
        out[name] = run.stage(
            "rebalance", config, {"model": models[source], "extract": features}, label=name
        )
    return out


def run_tta_stages(run: PipelineRun, section: Callable[..., BaseModel]) -> dict[str, StageRef]:
    """The pipeline's ``tta`` section: extract every view of the evaluated split, then one
    ``predict`` stage per stage-1 train run, labelled ``<run>_tta`` (as cRT's are
    ``<run>_crt``); returns those.

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
        config = base.model_copy(
            update={"extract": predict.view_extract_config(base.extract, view, split)}
        )  # fmt: skip
        ref, _ = run.runner("extract", config, inputs, run.work_root, "extract" in run.force)
        views.append(ref)
    stage1 = {n[len("train:") :]: r for n, r in run.refs.items() if n.startswith("train:")}
    run.pending_runs["predict"] = len(stage1)
    out = {}
    for name, model in stage1.items():
        predict_config = predict.PredictStageConfig(
            dataset=base.dataset, dataset_fingerprint=base.dataset_fingerprint, split=split,
            tta=cfg.tta,
        )  # fmt: skip
        view_inputs = {f"view{k}": ref for k, ref in enumerate(views)}
        label = f"{name}_tta"
        out[label] = run.stage(
            "predict", predict_config, {"train": model, **view_inputs}, label=label
        )
    return out


def run_ensemble_stages(
    run: PipelineRun, dataset: DatasetConfig, fingerprint: str, models: Mapping[str, StageRef]
) -> dict[str, StageRef]:
    """The pipeline's ensembles (``ensemble.runs``) over its models. Returns {ensemble
    name: StageRef}."""
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


def run_report_stage(run: PipelineRun, dataset: DatasetConfig, fingerprint: str) -> StageRef:
    """The pipeline's report over every stage run so far."""
    assert run.config.report is not None
    config = report.ReportStageConfig(
        dataset=dataset, dataset_fingerprint=fingerprint, split=run.config.evaluate.split,
        report=run.config.report,
    )  # fmt: skip
    return run.stage("report", config, report.report_inputs(run.refs))


def run_pipeline(run: PipelineRun, *, write: bool = True) -> dict[str, Any]:
    """dataset -> detect -> … (later stages join as they land). Returns the summary."""
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
                dataset=dataset, dataset_fingerprint=fingerprint,
                finetune=cfg.finetune, extract=extract.BackboneConfig.of(cfg.extract),
            )  # fmt: skip
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
        if (
            cfg.tta is not None
        ):  # test-time augmentation: extra views, averaged (stages.predict.tta)
            models.update(run_tta_stages(run, section))
        run.pending_runs["evaluate"] = len(models)
        for name, predictions in models.items():
            eval_config = section(evaluate.EvaluateStageConfig, "evaluate")
            run.stage("evaluate", eval_config, {"predictions": predictions}, label=name)
        run_ensemble_stages(run, dataset, fingerprint, models)
        if cfg.report is not None:
            run_report_stage(run, dataset, fingerprint)
    except UntilReached:
        pass
    if write:
        run.write_summary()
    return run.summary()


def iter_runs(summary: dict[str, Any]):
    """(name, record) for every stage run in a summary: ``detect``, ``train:acar``, …"""
    for stage, entry in summary["stages"].items():
        if "runs" in entry:
            for label, rec in entry["runs"].items():
                yield f"{stage}:{label}", rec
        else:
            yield stage, entry


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of stages and results, for the terminal."""
    lines = [
        f"{'stage':<16} {'key':<17} {'cached':<7} {'source':<9} {'MB moved':>9} {'seconds':>8}  "
        "output"
    ]
    for name, rec in iter_runs(summary):
        moved = (rec.get("bytes_pulled", 0) + rec.get("bytes_pushed", 0)) / 1e6
        direction = "↓" if rec.get("bytes_pulled") else "↑" if rec.get("bytes_pushed") else " "
        lines.append(
            f"{name:<16} {rec['key']:<17} {('yes' if rec['cached'] else 'no'):<7} "
            f"{rec.get('source', '-'):<9} {moved:>8.1f}{direction} {rec['seconds']:>8.1f}  "
            f"{rec['uri']}"
        )
    det = summary["stages"].get("detect", {}).get("summary", {})
    if det:
        lines.append("")
        lines.append(f"{'persons':<8} {'split':<6} {'boxes':>7} {'AP@0.5':>7} {'recall':>7}")
        for split, rec in det.items():
            ap = f"{rec['ap50']:.3f}" if "ap50" in rec else "-"
            recall = f"{rec['recall']:.3f}" if "recall" in rec else "-"
            lines.append(f"{'':<8} {split:<6} {rec['boxes']:>7} {ap:>7} {recall:>7}")
    tracked = summary["stages"].get("track", {}).get("summary", {})
    for split, rec in tracked.items():
        if "link_precision" in rec:
            lines.append(
                f"{'tracks':<8} {split:<6} {rec['tracks']:>7} tracks; identity link precision "
                f"{rec['link_precision']:.3f}, recall {rec['link_recall']:.3f}"
            )
    extracted = summary["stages"].get("extract", {}).get("summary", {})
    if extracted:
        lines.append("")
        lines.append(
            f"{'store':<8} {'split':<6} {'videos':>7} {'keyframes':>9} {'actors':>7} {'MB':>8}"
        )
        for split, rec in extracted.items():
            lines.append(
                f"{'':<8} {split:<6} {rec['videos']:>7} {rec['keyframes']:>9} {rec['actors']:>7} "
                f"{rec['bytes'] / 1e6:>8.1f}"
            )
    models = summary.get("models", {})
    if models:
        lines.append("")
        lines.append(
            f"{'model':<14} {'head':<10} {'params':>9} {'train s':>8} {'val mAP':>8} "
            f"{'prior':>6}  groups"
        )
        for name, m in models.items():
            groups = " ".join(f"{g}={v:.3f}" for g, v in (m.get("group_map") or {}).items())
            lines.append(
                f"{name:<14} {m['head'] or '-':<10} {m['parameters'] or 0:>9} "
                f"{m['train_seconds'] or 0:>8.1f} {m['val_map'] or 0:>8.3f} "
                f"{m['prior_map'] or 0:>6.3f}  {groups}"
            )
    evaluations = summary["stages"].get("evaluate", {}).get("runs", {})
    tube_evals = {n: r for n, r in evaluations.items() if "v_map@0.5" in r["summary"]}
    if tube_evals:
        lines += ["", tube_table(tube_evals)]
        evaluations = {n: r for n, r in evaluations.items() if n not in tube_evals}
    if evaluations:
        lines.append("")
        lines.append(f"{'evaluation':<14} {'split':<6} {'frame-mAP@0.5':>13}  report")
        for name, rec in evaluations.items():
            ev = rec["summary"]
            lines.append(
                f"{name:<14} {ev.get('split', '-'):<6} {ev.get('mAP', float('nan')):>13.4f}  "
                f"{rec['uri']}/metrics.md"
            )
    crt = {name: m for name, m in models.items() if m.get("crt")}
    if crt:
        lines.append("")
        lines.append(f"{'cRT':<14} {'from':<10} {'mAP before':>10} {'after':>7} {'k':>3} "
                     f"{'head Δ':>8} {'tail Δ':>8}")  # fmt: skip
        for name, m in crt.items():
            c = m["crt"]
            lines.append(
                f"{name:<14} {m.get('source') or '-':<10} {m.get('val_map_before') or 0:>10.3f} "
                f"{m['val_map'] or 0:>7.3f} {c['k']:>3} {c['head_change']:>+8.4f} "
                f"{c['tail_change']:>+8.4f}"
            )
    ensembles = summary.get("ensembles", {})
    if ensembles:
        lines.append("")
        lines.append(f"{'ensemble':<14} {'val mAP':>8} {'best member':>20} {'gain':>8}  members")
        for name, e in ensembles.items():
            best = f"{e['best_member']} {e['best_member_map']:.3f}"
            note = " (selected on this split: optimistic)" if e["selection_optimistic"] else ""
            lines.append(
                f"{name:<14} {e['val_map']:>8.3f} {best:>20} {e['gain']:>+8.4f}  "
                f"{'+'.join(e['members'])}{note}"
            )
    if summary.get("report"):
        lines.append("")
        lines.append(f"report: {summary['report']['markdown']} (and {summary['report']['html']})")
    lines.append("")
    lines.append(
        f"total {summary['seconds']:.1f} s; summary: {summary['work_root']}/{SUMMARY_FILE}"
    )
    return "\n".join(lines)
