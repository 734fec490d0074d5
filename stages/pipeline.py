"""The pipeline as a sequence of stage calls (DESIGN §1), independent of Prefect.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from stages import detect, extract, finetune, track, train
from stages.catalog import STAGE_ORDER, STAGES
from stages.config import PipelineConfig
from stages.data import DatasetConfig
from stages.evaluate import stage as evaluate
from stages.fingerprint import dataset_fingerprint
from stages.framework import (
    StageRef,
    output_dir,
    run_stage,
    stage_key,
    stage_status,
    write_json_atomic,
)

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
        self.refs[record_name] = ref
        self.records[record_name] = {
            "key": ref.key,
            "uri": ref.uri,
            "cached": cached,
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

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "config": self.config.name,
            "work_root": str(self.work_root),
            "finished": dt.datetime.now(dt.UTC).isoformat(),
            "seconds": round(time.perf_counter() - self.started, 3),
            "stages": self._stage_entries(),
            "models": {},
            "detector": {},
        }
        for record_name, rec in self.records.items():
            stage, _, label = record_name.partition(":")
            if stage in ("train", "train_bank", "rebalance") and label:
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
                    "predictions_csv": summ.get("predictions_csv"),
                }
        det = self.records.get("detect", {}).get("summary", {})
        evaluated = det.get(self.config.evaluate.split) or {}
        if "ap50" in evaluated:
            summary["detector"] = {"ap50": evaluated["ap50"], "recall": evaluated["recall"]}
        return summary

    def _stage_entries(self) -> dict[str, dict[str, Any]]:
        """``stages.<name>`` of summary.json: one entry per stage; a stage run several times
        (``train`` per head) has its runs under ``runs`` and totals at the top."""
        entries: dict[str, dict[str, Any]] = {}
        for record_name, rec in self.records.items():
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
                uri=runs[0]["uri"] if single else str(self.work_root / stage),
                cached=all(r["cached"] for r in runs),
                seconds=round(sum(r["seconds"] for r in runs), 3),
            )
            group["runs"] = group.pop("runs")  # after the totals, for readability
        return entries

    def write_summary(self) -> Path:
        self.work_root.mkdir(parents=True, exist_ok=True)
        path = self.work_root / SUMMARY_FILE
        write_json_atomic(path, self.summary(), sort_keys=False)  # keep pipeline order
        return path


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
    """The dataset config and its fingerprint; builds the demo world first if configured."""
    root = Path(config.dataset.root)
    if config.world is not None:
        from stages.world import build_world

        check_world_config(root, config.world)
        # Idempotent: a complete world of this config is returned at once, a partial one
        # (killed build, deleted file) is rebuilt.
        build_world(root, config.world)
    dataset = config.dataset.model_copy(update={"root": root.resolve()})
    return dataset, dataset_fingerprint(dataset)


def dataset_section(config: PipelineConfig, dataset: DatasetConfig, fingerprint: str):
    """Stage configs of the stages that read the dataset: their own section + the dataset."""

    def section(stage_config_type: type[BaseModel], name: str) -> BaseModel:
        return stage_config_type.model_validate(
            {"dataset": dataset, "dataset_fingerprint": fingerprint, name: getattr(config, name)}
        )

    return section


def run_pipeline(run: PipelineRun, *, write: bool = True) -> dict[str, Any]:
    """dataset -> detect -> … (later stages join as they land). Returns the summary."""
    cfg = run.config
    try:
        dataset, fingerprint = prepare_dataset(cfg)
        section = dataset_section(cfg, dataset, fingerprint)
        persons = run.stage("detect", section(detect.DetectStageConfig, "detect"), {})
        actors = run.stage("track", section(track.TrackStageConfig, "track"), {"detect": persons})
        backbone_inputs: dict[str, StageRef] = {}
        if cfg.finetune is not None:
            tune_config = finetune.FinetuneStageConfig(
                dataset=dataset, dataset_fingerprint=fingerprint,
                finetune=cfg.finetune,
                # Only the backbone and clip fields: storage options must not re-key it.
                extract=extract.ExtractConfig(
                    **cfg.extract.model_dump(include=set(extract.BACKBONE_FIELDS))
                ),
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
        run.pending_runs["evaluate"] = len(models)
        for name, predictions in models.items():
            eval_config = section(evaluate.EvaluateStageConfig, "evaluate")
            run.stage("evaluate", eval_config, {"predictions": predictions}, label=name)
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
    lines = [f"{'stage':<16} {'key':<17} {'cached':<7} {'seconds':>8}  output"]
    for name, rec in iter_runs(summary):
        lines.append(
            f"{name:<16} {rec['key']:<17} {('yes' if rec['cached'] else 'no'):<7} "
            f"{rec['seconds']:>8.1f}  {rec['uri']}"
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
    if evaluations:
        lines.append("")
        lines.append(f"{'evaluation':<14} {'split':<6} {'frame-mAP@0.5':>13}  report")
        for name, rec in evaluations.items():
            ev = rec["summary"]
            lines.append(
                f"{name:<14} {ev.get('split', '-'):<6} {ev.get('mAP', float('nan')):>13.4f}  "
                f"{rec['uri']}/metrics.md"
            )
    lines.append("")
    lines.append(
        f"total {summary['seconds']:.1f} s; summary: {summary['work_root']}/{SUMMARY_FILE}"
    )
    return "\n".join(lines)


def load_summary(work_root: Path | str) -> dict[str, Any]:
    return json.loads((Path(work_root) / SUMMARY_FILE).read_text())
