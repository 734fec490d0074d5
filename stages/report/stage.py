"""report: one Markdown + HTML report (with PNG plots) per pipeline run.

Inputs are the stage outputs the report describes, named as the pipeline records them:
``model:<name>`` (train / train_bank / rebalance runs), ``evaluate:<name>``,
``ensemble:<name>``, and optionally ``detect``, ``extract``, ``dump:<name>`` (banks) and
any other stage whose timing should be listed. The report key therefore changes whenever
any of them does. Everything shown is read from those outputs (their ``COMPLETE.json``
summaries and metric files), so a cached report is still exact; stage timings are the
compute seconds of the run that produced each output, not of this pipeline invocation.

Sections: every model's frame-mAP, group mAPs and head/tail mAPs; the per-class AP of the
best model and best ensemble (bars) and of every model (heat map); cRT before/after; the
ensembles' members and gain over their best member; detector AP; store and bank sizes;
stage timings. Output: ``report.md``, ``report.html``, ``report.json`` and ``plots/*.png``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.data import Dataset, LabelMap
from stages.evaluate.breakdown import head_tail
from stages.framework import (
    COMPLETE_MARKER,
    StageContext,
    StageError,
    StageRef,
    read_published_json,
)
from stages.report import plots
from stages.report.config import (  # noqa: F401 (re-exported)
    HTML_FILE,
    MARKDOWN_FILE,
    ReportConfig,
    ReportStageConfig,
)
from stages.report.config import REPORT as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.train.rebalance import CRT_FILE, class_counts, head_tail_k
from stages.train.stage import METRICS_FILE, evaluated_labelmap

JSON_FILE = "report.json"
PLOTS_DIR = "plots"
GROUPS = ("pose", "object_manipulation", "person_interaction")


# --- a tiny document model rendered to both Markdown and HTML -----------------------


@dataclass
class Document:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (headers, rows)))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("image", (path, alt)))

    def markdown(self) -> str:
        out: list[str] = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "text":
                out.append(value)
            elif kind == "table":
                headers, rows = value
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            elif kind == "image":
                out.append(f"![{value[1]}]({value[0]})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [
            "<!DOCTYPE html>",
            "<html><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
            "padding:2px 8px;text-align:right}th{background:#eee}img{max-width:100%}</style>",
            "</head><body>",
        ]
        for kind, value in self.blocks:
            if kind == "heading":
                out.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "text":
                out.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                headers, rows = value
                out.append(
                    "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
                )
                for row in rows:
                    cells = "".join(f"<td>{html.escape(_md_cell(c))}</td>" for c in row)
                    out.append(f"<tr>{cells}</tr>")
                out.append("</table>")
            elif kind == "image":
                src, alt = (html.escape(v, quote=True) for v in value)
                out.append(f"<p><img src='{src}' alt='{alt}'></p>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _md_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value).replace("|", "/")


def pct(value: float | None, signed: bool = False) -> str:
    """An AP in [0, 1] as percent with two decimals ("-" when absent)."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


# --- reading the inputs --------------------------------------------------------------


def marker(ref: StageRef) -> dict[str, Any]:
    """The ``COMPLETE.json`` of an input (summary, seconds, manifest)."""
    path = ref.path / COMPLETE_MARKER
    if not path.is_file():
        raise StageError(f"report: {ref.path} is not a complete {ref.stage!r} output")
    return json.loads(path.read_text())


def output_bytes(record: Mapping[str, Any]) -> int:
    return int(sum(entry[1] for entry in record.get("manifest", [])))


def _published_json(output: Path, name: str) -> dict[str, Any]:
    """An output's JSON file ``name`` (checked against its manifest), or {} without one."""
    return read_published_json(output, name) if (output / name).is_file() else {}


def per_class_of(metrics: Mapping[str, Any]) -> dict[int, float]:
    return {int(c): float(v) for c, v in (metrics.get("per_class") or {}).items()}


@dataclass
class ModelRow:
    name: str
    kind: str  # the producing stage
    summary: dict[str, Any]
    mAP: float
    groups: dict[str, float]
    per_class: dict[int, float]
    seconds: float
    video: dict[str, float] = field(default_factory=dict)  # tube datasets: video-mAP


def collect_models(inputs: Mapping[str, StageRef]) -> list[ModelRow]:
    """Models and ensembles, in input order; the mAP and per-class AP of a model come from
    its ``evaluate:<name>`` output when there is one, else from its own metrics."""
    rows = []
    for input_name, ref in inputs.items():
        prefix, _, label = input_name.partition(":")
        if prefix not in ("model", "ensemble"):
            continue
        name = label or input_name
        record = marker(ref)
        summary = record.get("summary", {})
        metrics = _published_json(ref.path, METRICS_FILE)
        evaluation = inputs.get(f"evaluate:{name}")
        if evaluation is not None:
            metrics = _published_json(evaluation.path, METRICS_FILE) or metrics
        if not metrics:
            raise StageError(f"report: no {METRICS_FILE} for model {name!r} ({ref.path})")
        rows.append(
            ModelRow(
                name=name,
                kind=ref.stage,
                summary=summary,
                mAP=float(metrics["mAP"]),
                groups=dict(metrics.get("groups") or {}),
                per_class=per_class_of(metrics),
                seconds=float(record.get("seconds", 0.0)),
                video={k: float(v) for k, v in metrics.items() if k.startswith("v_map")},
            )
        )
    return rows


# --- the report ----------------------------------------------------------------------


@dataclass
class _Report:
    """What every section of the report reads, and the document it writes into."""

    cfg: ReportStageConfig
    inputs: Mapping[str, StageRef]
    labelmap: LabelMap
    counts: dict[int, int]
    by_freq: list[int]
    plots_dir: Path
    doc: Document = field(default_factory=lambda: Document())
    files: dict[str, str] = field(default_factory=dict)

    def save(self, name: str, png: bytes) -> str:
        (self.plots_dir / name).write_bytes(png)
        self.files[name] = f"{PLOTS_DIR}/{name}"
        return self.files[name]


def compute(ctx: StageContext[ReportStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    dataset = Dataset.open(cfg.dataset)
    labelmap = evaluated_labelmap(dataset, cfg.dataset)
    counts = class_counts(dataset.gt(cfg.report.train_split).action, labelmap.ids)
    by_freq = sorted((int(c) for c in labelmap.ids), key=lambda c: (-counts[c], c))
    models = collect_models(ctx.inputs)
    if not models:
        raise StageError("report: no model or ensemble among the inputs; nothing to report")
    plots_dir = ctx.staging / PLOTS_DIR
    plots_dir.mkdir()
    r = _Report(cfg, ctx.inputs, labelmap, counts, by_freq, plots_dir)
    r.doc.heading(cfg.report.title, 1)
    r.doc.text(
        f"Dataset {cfg.dataset.root}; evaluated split {cfg.split!r}, {len(labelmap)} "
        f"classes; frame-mAP@0.5 (AVA protocol)."
    )
    table_json, k = _models_section(r, models)
    ensembles = [m for m in models if m.kind == "ensemble"]
    _per_class_section(r, models, ensembles)
    crt_json = _crt_section(r, models)
    _ensembles_section(r, ensembles)
    detector = _detector_stores_timings(r)

    doc, files = r.doc, r.files
    markdown = doc.markdown()
    (ctx.staging / MARKDOWN_FILE).write_text(markdown)
    (ctx.staging / HTML_FILE).write_text(doc.html(cfg.report.title))
    data = {
        "models": table_json,
        "k": k,
        "crt": crt_json,
        "detector": detector,
        "ensembles": {m.name: m.summary for m in ensembles},
        "plots": sorted(files),
    }
    (ctx.staging / JSON_FILE).write_text(json.dumps(data, indent=2, default=str))
    return {
        "markdown": MARKDOWN_FILE,
        "html": HTML_FILE,
        "plots": sorted(files.values()),
        "models": [m.name for m in models],
        "best_model": max(models, key=lambda m: m.mAP).name,
    }


def _models_section(r: _Report, models: list[ModelRow]) -> tuple[list[dict[str, Any]], int]:
    """The model table (mAP, groups, head/tail, prior), tube video-mAPs, the mAP plot."""
    evaluated = sorted(set().union(*(m.per_class for m in models)))
    k = r.cfg.report.head_tail_k or head_tail_k(len(evaluated))
    r.doc.heading("Models")
    rows, table_json = [], []
    for m in models:
        ht = head_tail(m.per_class, r.counts, k) if len(m.per_class) >= 2 else {}
        s = m.summary
        row: dict[str, Any] = {
            "model": m.name,
            "stage": m.kind,
            "head": s.get("head") or "-",
            "mAP": m.mAP,
            **{g: m.groups.get(g) for g in GROUPS},
            "head_mAP": ht.get("head_mAP"),
            "tail_mAP": ht.get("tail_mAP"),
            "prior_map": s.get("prior_map"),
            "parameters": s.get("parameters"),
            "train_seconds": s.get("train_seconds"),
        }
        table_json.append(row)
        rows.append(
            [
                m.name,
                m.kind,
                row["head"],
                pct(m.mAP),
                *(pct(m.groups.get(g)) for g in GROUPS),
                pct(row["head_mAP"]),
                pct(row["tail_mAP"]),
                pct(row["prior_map"]),
                row["parameters"],
                row["train_seconds"],
            ]
        )
    r.doc.table(
        [
            "model",
            "stage",
            "head",
            "mAP",
            "pose",
            "object",
            "person",
            f"head {k}",
            f"tail {k}",
            "prior",
            "params",
            "train s",
        ],
        rows,
    )
    tubes = [m for m in models if m.video]
    if tubes:
        keys = sorted({k for m in tubes for k in m.video})
        r.doc.text(
            "Tube dataset: the mAP column is frame-mAP@0.5 (MultiSports protocol: one "
            "label per box); video-mAP of the tubes linked from the detections:"
        )
        r.doc.table(
            ["model", "frame-mAP", *keys],
            [[m.name, pct(m.mAP), *(pct(m.video.get(k)) for k in keys)] for m in tubes],
        )
    train_split = r.cfg.report.train_split
    r.doc.text(
        f"Head / tail: mean AP of the {k} most / least frequent classes by {train_split!r} "
        "GT rows (the reports' top/bottom 20; a third of the classes when there are "
        "fewer than 60)."
    )
    r.doc.image(
        r.save(
            "map_by_model.png",
            plots.map_by_model_png(
                [m.name for m in models],
                [m.mAP for m in models],
                [m.kind for m in models],
                title=f"frame-mAP on {r.cfg.split}",
            ),
        ),
        "frame-mAP per model",
    )

    return table_json, k


def _per_class_section(r: _Report, models: list[ModelRow], ensembles: list[ModelRow]) -> None:
    """Per-class AP: the best single model and the best ensemble, every model's heat map."""
    r.doc.heading("Per-class AP")
    names = [f"{r.labelmap.name(c)} ({r.counts[c]})" for c in r.by_freq]
    singles = [m for m in models if m.kind != "ensemble"]
    series = {}
    for group in (singles, ensembles):
        if group:
            best = max(group, key=lambda m: m.mAP)
            series[best.name] = [best.per_class.get(c, float("nan")) for c in r.by_freq]
    r.doc.image(
        r.save(
            "per_class_ap.png",
            plots.per_class_bars_png(
                names, series, title="per-class AP, classes by training frequency (count)"
            ),
        ),
        "per-class AP",
    )
    matrix = np.array([[m.per_class.get(c, np.nan) for c in r.by_freq] for m in models])
    r.doc.image(
        r.save(
            "per_class_heatmap.png",
            plots.heatmap_png(
                [m.name for m in models],
                [r.labelmap.name(c) for c in r.by_freq],
                matrix,
                title="per-class AP (%) of every model",
            ),
        ),
        "per-class AP of every model",
    )
    r.doc.table(
        ["class", "train rows", *[m.name for m in models]],
        [
            [r.labelmap.name(c), r.counts[c], *(pct(m.per_class.get(c)) for m in models)]
            for c in r.by_freq
        ],
    )


def _crt_section(r: _Report, models: list[ModelRow]) -> dict[str, Any]:
    """cRT: before/after mAP per rebalanced model and its per-class change."""
    crt_rows, crt_plot, crt_json = [], {}, {}
    for m in models:
        if m.kind != "rebalance":
            continue
        crt = m.summary.get("crt") or {}
        ref = r.inputs[f"model:{m.name}"]
        per = _published_json(ref.path, CRT_FILE).get("per_class", {})
        crt_json[m.name] = crt
        crt_rows.append(
            [
                m.name,
                m.summary.get("source", "-"),
                crt.get("k"),
                pct(crt.get("all_before")),
                pct(crt.get("all_after")),
                pct(crt.get("all_change"), True),
                pct(crt.get("head_change"), True),
                pct(crt.get("tail_change"), True),
                ", ".join(
                    f"{r.labelmap.name(c)} {pct(d, True)}"
                    for c, d in crt.get("most_improved", [])
                    if c in r.labelmap
                ),
            ]
        )
        order = [c for c in r.by_freq if str(c) in per]
        if order:
            deltas = [per[str(c)]["after"] - per[str(c)]["before"] for c in order]
            crt_plot[m.name] = ([r.labelmap.name(c) for c in order], deltas, int(crt.get("k", 1)))
    if crt_rows:
        r.doc.heading("Class-balanced classifier re-training (cRT)")
        r.doc.table(
            [
                "model",
                "from",
                "k",
                "mAP before",
                "after",
                "Δ all",
                "Δ head",
                "Δ tail",
                "most improved",
            ],
            crt_rows,
        )
        r.doc.text(
            "Δ: mean AP change (points) over all / the k most / the k least frequent "
            "classes, as in the AVA-Kinetics report's Table 3 and PCCA's Table 3."
        )
        r.doc.image(r.save("crt_delta.png", plots.crt_delta_png(crt_plot)), "cRT per-class change")

    return crt_json


def _ensembles_section(r: _Report, ensembles: list[ModelRow]) -> None:
    """Ensembles: members, weights, gain over the best member, and why a gain is negative."""
    if ensembles:
        r.doc.heading("Ensembles")
        rows = []
        for m in ensembles:
            s = m.summary
            weights = s.get("weights") or {}
            members = ", ".join(
                f"{n}×{weights[n]:g}" if weights.get(n, 1.0) != 1.0 else n
                for n in s.get("members", [])
            )
            rows.append(
                [
                    m.name,
                    members,
                    pct(m.mAP),
                    s.get("best_member", "-"),
                    pct(s.get("best_member_map")),
                    pct(s.get("gain"), True),
                    "yes" if s.get("selection_optimistic") else "no",
                ]
            )
        r.doc.table(
            [
                "ensemble",
                "members",
                "mAP",
                "best member",
                "its mAP",
                "gain",
                "selected on this split",
            ],
            rows,
        )
        for m in ensembles:
            if (m.summary.get("gain") or 0.0) < 0:
                r.doc.text(
                    f"Note: {m.name} is below its best member. Average voting weighs every "
                    "member equally; members much weaker than the best (or strongly "
                    "correlated with each other) pull the average below it. Weights or "
                    "greedy selection (ensemble.runs.<name>.select) address this."
                )
            if m.summary.get("selection_optimistic"):
                r.doc.text(
                    f"{m.name}: members were selected on the split it is evaluated on; "
                    "its mAP is optimistic."
                )


def _detector_stores_timings(r: _Report) -> dict[str, Any]:
    """The person detector's AP, store and bank sizes, and every input's compute time."""
    detect_ref = r.inputs.get("detect")
    detector = marker(detect_ref).get("summary", {}) if detect_ref else {}
    if detector:
        r.doc.heading("Person detector")
        r.doc.table(
            ["split", "boxes", "AP@0.5", "recall"],
            [
                [split, rec.get("boxes"), pct(rec.get("ap50")), pct(rec.get("recall"))]
                for split, rec in detector.items()
                if isinstance(rec, dict)
            ],
        )
    sizes = []
    extract_ref = r.inputs.get("extract")
    if extract_ref is not None:
        for split, rec in marker(extract_ref).get("summary", {}).items():
            if isinstance(rec, dict) and "bytes" in rec:
                sizes.append(
                    [
                        f"feature store {split}",
                        rec.get("videos"),
                        rec.get("keyframes"),
                        rec.get("actors"),
                        f"{rec['bytes'] / 1e6:.1f}",
                    ]
                )
    for input_name, ref in r.inputs.items():
        if ref.stage == "dump":
            rec = marker(ref)
            size = rec.get("summary", {}).get("bytes", output_bytes(rec))
            sizes.append(
                [
                    f"bank {input_name.partition(':')[2] or input_name}",
                    "-",
                    "-",
                    "-",
                    f"{float(size) / 1e6:.1f}",
                ]
            )
    if sizes:
        r.doc.heading("Stores and banks")
        r.doc.table(["store", "videos", "keyframes", "actors", "MB"], sizes)
    timings = []
    for input_name, ref in r.inputs.items():
        rec = marker(ref)
        timings.append(
            [
                input_name,
                ref.key,
                f"{float(rec.get('seconds', 0.0)):.1f}",
                f"{output_bytes(rec) / 1e6:.1f}",
            ]
        )
    r.doc.heading("Stage timings")
    r.doc.table(["stage run", "key", "compute s", "output MB"], timings)
    r.doc.text(
        f"Total compute of these outputs: "
        f"{sum(float(t[2]) for t in timings):.1f} s (the run that produced each)."
    )

    return detector
