"""Write an AVA evaluation as JSON, Markdown and a per-class AP bar chart (PNG)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from stages.data.atomic import atomic_write_bytes
from stages.data.types import LabelMap
from stages.evaluate.result import AvaResult

REPORT_FILES = {"json": "metrics.json", "md": "metrics.md", "png": "per_class_ap.png"}


def write_ava_outputs(
    result: AvaResult, labelmap: LabelMap, out_dir: str | Path
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``per_class_ap.png`` into ``out_dir``
    (created if needed; each file written atomically). Returns {"json"|"md"|"png": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    atomic_write_bytes(paths["json"], json.dumps(result.to_json(), indent=2).encode())
    atomic_write_bytes(paths["md"], result.to_markdown(labelmap).encode())
    atomic_write_bytes(paths["png"], per_class_ap_png(result, labelmap))
    return paths


def per_class_ap_png(result: AvaResult, labelmap: LabelMap) -> bytes:
    """A horizontal bar chart of per-class AP (classes by descending AP), PNG bytes."""
    items = sorted(result.per_class.items(), key=lambda kv: (-kv[1], kv[0]))
    names = [f"{labelmap.name(c) if c in labelmap else c} ({c})" for c, _ in items]
    values = [100 * ap for _, ap in items]
    # Imported here: matplotlib costs ~0.3 s, and `bankflow eval` draws only with --out-dir.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # The Agg canvas is attached explicitly: no pyplot, no global backend switch.
    fig = Figure(figsize=(8, 1.0 + 0.22 * max(len(items), 1)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(values)), values, color="tab:blue")
    ax.set_yticks(range(len(values)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP (%)")
    if items:
        mean = 100 * result.mAP
        ax.axvline(mean, color="tab:red", linestyle="--", label=f"mAP {mean:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Per-class AP@{result.iou_threshold:g} ({result.protocol} protocol)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
