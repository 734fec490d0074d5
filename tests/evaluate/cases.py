"""Builders for hand-made AVA cases: rows in, BoxTable / LabelMap out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.data.types import NO_PERSON, BoxTable, ExcludedKeyframes, LabelMap

Row = tuple  # (video, timestamp, x1, y1, x2, y2, action[, score])


def table(rows: Sequence[Row], source: str = "") -> BoxTable:
    """A BoxTable from tuples; 7-tuples get score 1.0."""
    if not rows:
        return BoxTable.empty(source)
    return BoxTable(
        video=np.array([r[0] for r in rows], dtype=object),
        timestamp=np.array([int(r[1]) for r in rows], dtype=np.int64),
        boxes=np.array([r[2:6] for r in rows], dtype=np.float64).reshape(-1, 4),
        action=np.array([r[6] for r in rows], dtype=np.int64),
        person=np.full(len(rows), NO_PERSON, dtype=np.int64),
        score=np.array([r[7] if len(r) > 7 else 1.0 for r in rows], dtype=np.float64),
        line=np.arange(1, len(rows) + 1, dtype=np.int64),
        source=source,
    )


def labelmap(ids: Sequence[int], types: Sequence[str | None] | None = None) -> LabelMap:
    return LabelMap(
        ids=np.array(ids, dtype=np.int64),
        names=tuple(f"action{i}" for i in ids),
        label_types=tuple(types) if types is not None else (None,) * len(ids),
    )


def excluded(keys: Sequence[tuple[str, int]]) -> ExcludedKeyframes:
    return ExcludedKeyframes(
        video=np.array([k[0] for k in keys], dtype=object),
        timestamp=np.array([k[1] for k in keys], dtype=np.int64),
    )
