"""The run's summary: ``<work_root>/summary.json``, written by every pipeline run, its
reading (:func:`iter_runs`) and the terminal table (:func:`format_summary`).

:func:`summarize` turns the pipeline's stage records (``stages.pipeline.PipelineRun``
keeps them) into the summary. Which records are *models* is the stages' trait
(``Stage.produces_model``), not a list here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stages.catalog import STAGES
from stages.framework import is_remote, write_json_atomic
from stages.report.config import HTML_FILE, MARKDOWN_FILE

SUMMARY_FILE = "summary.json"


def place_under(work_root: Path) -> Callable[[str | None], str | None]:
    """A path named relative to the work root, as a path under it (None stays None;
    an output read in place from a stage cache keeps its URL)."""

    def place(rel: str | None) -> str | None:
        if rel is None or is_remote(rel):
            return rel
        return str(work_root / rel)

    return place


def summarize(
    records: Mapping[str, dict[str, Any]],
    *,
    config_name: str,
    evaluate_split: str,
    work_root: Path,
    seconds: float,
    cache_url: str | None,
    absolute: bool = True,
) -> dict[str, Any]:
    """The run's summary from its stage records (``<stage>`` or ``<stage>:<label>`` ->
    record). Outputs are named relative to the work root in ``summary.json``
    (``absolute=False``: the root may be copied or moved) and as paths under
    ``work_root`` for the caller (``absolute=True``)."""
    place = place_under(work_root) if absolute else (lambda rel: rel)
    summary: dict[str, Any] = {
        "config": config_name,
        **({"work_root": str(work_root)} if absolute else {}),
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": round(seconds, 3),
        "cache": _cache_entry(records, cache_url),
        "stages": _stage_entries(records, place),
        "models": {},
        "detector": {},
    }
    for record_name, rec in records.items():
        stage, _, label = record_name.partition(":")
        if label and stage in STAGES and STAGES[stage].produces_model:
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
                    source=summ.get("source"),
                    val_map_before=summ.get("val_map_before"),
                    crt=summ.get("crt"),
                )
        elif stage == "ensemble" and label:
            summ = rec["summary"]
            summary.setdefault("ensembles", {})[label] = {
                k: summ.get(k)
                for k in (
                    "members",
                    "weights",
                    "val_map",
                    "group_map",
                    "best_member",
                    "best_member_map",
                    "gain",
                    "selection_optimistic",
                )
            } | {"predictions_csv": place(summ.get("predictions_csv"))}
    if "report" in records:
        uri = records["report"]["uri"]
        summary["report"] = {
            "markdown": place(f"{uri}/{MARKDOWN_FILE}"),
            "html": place(f"{uri}/{HTML_FILE}"),
        }
    det = records.get("detect", {}).get("summary", {})
    evaluated = det.get(evaluate_split) or {}
    if "ap50" in evaluated:
        summary["detector"] = {"ap50": evaluated["ap50"], "recall": evaluated["recall"]}
    return summary


def write_summary(work_root: Path, summary: dict[str, Any]) -> Path:
    """``<work_root>/summary.json`` (a summary with outputs relative to the work root:
    copy, move or rsync the root and it holds)."""
    work_root.mkdir(parents=True, exist_ok=True)
    path = work_root / SUMMARY_FILE
    write_json_atomic(path, summary, sort_keys=False)  # keep pipeline order
    return path


def _cache_entry(records: Mapping[str, dict[str, Any]], url: str | None) -> dict[str, Any] | None:
    if url is None:
        return None
    recs = records.values()
    return {
        "url": url,
        "bytes_pulled": sum(r.get("bytes_pulled", 0) for r in recs),
        "bytes_pushed": sum(r.get("bytes_pushed", 0) for r in recs),
    }


def _stage_entries(
    records: Mapping[str, dict[str, Any]], place: Callable[[str], str | None]
) -> dict[str, dict[str, Any]]:
    """``stages.<name>`` of summary.json: one entry per stage; a stage run several times
    (``train`` per head) has its runs under ``runs`` and totals at the top."""
    entries: dict[str, dict[str, Any]] = {}
    for record_name, stored in records.items():
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


def iter_runs(summary: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
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
        lines.append(
            f"{'cRT':<14} {'from':<10} {'mAP before':>10} {'after':>7} {'k':>3} "
            f"{'head Δ':>8} {'tail Δ':>8}"
        )
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
