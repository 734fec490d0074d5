"""PNG plots for the pipeline report (matplotlib's Agg canvas; no pyplot, no display).

Each function takes plain names and numbers (APs in [0, 1]) and returns PNG bytes, so the
report stage decides where they go and tests can decode them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    # The Agg canvas is attached explicitly: no global backend switch.
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def map_by_model_png(
    names: Sequence[str], values: Sequence[float], kinds: Sequence[str], *, title: str
) -> bytes:
    """Horizontal bars of frame-mAP (%) per model, coloured by kind (the producing stage:
    ``train``, ``train_bank``, ``rebalance``, ``ensemble``, …), best at the top."""
    order = sorted(range(len(names)), key=lambda i: -values[i])
    palette = {
        "train": "tab:blue",
        "train_bank": "tab:purple",
        "rebalance": "tab:orange",
        "ensemble": "tab:green",
    }
    fig = _figure(7, 1.2 + 0.32 * max(len(names), 1))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(order))
    vals = [100 * values[i] for i in order]
    ax.barh(y, vals, color=[palette.get(kinds[i], "tab:gray") for i in order])
    ax.set_yticks(y, [names[i] for i in order], fontsize=8)
    ax.invert_yaxis()
    for yi, v in zip(y, vals, strict=True):
        ax.text(v, float(yi), f" {v:.2f}", va="center", fontsize=7)
    ax.set_xlim(0, max([*vals, 1.0]) * 1.15)
    ax.set_xlabel("frame-mAP@0.5 (%)")
    handles = [k for k in palette if k in kinds]
    for kind in handles:
        ax.bar(0, 0, color=palette[kind], label=kind)
    if handles:
        ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def per_class_bars_png(
    class_names: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str
) -> bytes:
    """Grouped horizontal bars: AP (%) of each class (rows, in the given order) for each
    series (e.g. the best model and the best ensemble). NaN (no GT) draws nothing."""
    n, m = len(class_names), max(len(series), 1)
    fig = _figure(8, 1.2 + 0.1 * n * (m + 1) + 0.2)
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / m
    for j, (label, values) in enumerate(series.items()):
        y = np.arange(n) + (j - (m - 1) / 2) * height
        ax.barh(y, np.nan_to_num(100 * np.asarray(values, float)), height=height, label=label)
    ax.set_yticks(np.arange(n), list(class_names), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP@0.5 (%)")
    if series:
        ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def heatmap_png(
    row_names: Sequence[str], col_names: Sequence[str], values: np.ndarray, *, title: str
) -> bytes:
    """A models × classes AP (%) heat map with the numbers written in the cells."""
    values = 100 * np.asarray(values, dtype=float)
    rows, cols = values.shape
    fig = _figure(2.5 + 0.45 * cols, 1.5 + 0.35 * rows)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(cols), list(col_names), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(rows), list(row_names), fontsize=7)
    for i in range(rows):
        for j in range(cols):
            if np.isfinite(values[i, j]):
                color = "white" if values[i, j] < 50 else "black"
                ax.text(
                    j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=6, color=color
                )
    fig.colorbar(image, ax=ax, fraction=0.03, label="AP (%)")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def crt_delta_png(runs: Mapping[str, tuple[Sequence[str], Sequence[float], int]]) -> bytes:
    """One panel per rebalanced model: AP change (points) per class, classes from most to
    least frequent; the k most and k least frequent are shaded (head / tail).

    ``runs``: name -> (class names by frequency, change after − before in [−1, 1], k).
    """
    panels = max(len(runs), 1)
    widest = max([len(c) for c, _, _ in runs.values()] or [1])
    fig = _figure(2.0 + 0.35 * widest, 3.4 * panels)
    for p, (name, (classes, deltas, k)) in enumerate(runs.items()):
        ax = fig.add_subplot(panels, 1, p + 1)
        d = 100 * np.asarray(deltas, dtype=float)
        x = np.arange(len(d))
        ax.bar(x, d, color=["tab:green" if v >= 0 else "tab:red" for v in d])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axvspan(-0.5, k - 0.5, color="tab:blue", alpha=0.08, label=f"head {k}")
        ax.axvspan(
            len(d) - k - 0.5, len(d) - 0.5, color="tab:orange", alpha=0.12, label=f"tail {k}"
        )
        ax.set_xticks(x, list(classes), rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("ΔAP (points)", fontsize=8)
        ax.set_title(f"cRT: {name} (classes by training frequency)", fontsize=9)
        ax.legend(loc="upper left", fontsize=6)
    return _png(fig)
