"""Typed, columnar views of AVA-format annotation files.

Every reader in :mod:`stages.data` returns one of these. They hold numpy arrays (one
entry per CSV row, in file order) rather than lists of dicts, so that a file with a
million rows is a handful of arrays and the evaluator can sort and group without
Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Values used where a column is absent or empty.
NO_ACTION = -1  # proposals/detections without an action id
NO_PERSON = -1  # GT rows without a person id, detections


@dataclass(frozen=True)
class BoxTable:
    """N rows of an AVA-format CSV (GT, proposals, detections or predictions).

    Attributes:
        video: ``str`` object array [N], the video id (column 1).
        timestamp: int64 [N], the keyframe second in the source movie (column 2);
            ``0902`` and ``902`` both read as 902.
        boxes: float64 [N, 4], normalized ``x1, y1, x2, y2`` (columns 3-6).
        action: int64 [N], the action id (column 7) or ``NO_ACTION`` when empty.
        person: int64 [N], GT person id (column 8 of a GT file) or ``NO_PERSON``.
        score: float64 [N], column 8 of a detection file; 1.0 for GT rows and for
            7-column detection rows.
        line: int64 [N], 1-based line number of the row in ``source`` (for errors).
        source: the file the rows came from (for error messages), or ``""``.
    """

    video: np.ndarray
    timestamp: np.ndarray
    boxes: np.ndarray
    action: np.ndarray
    person: np.ndarray
    score: np.ndarray
    line: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])

    def take(self, index: np.ndarray | slice) -> BoxTable:
        """Rows selected by a boolean mask, an integer index array or a slice (views)."""
        return BoxTable(
            video=self.video[index],
            timestamp=self.timestamp[index],
            boxes=self.boxes[index],
            action=self.action[index],
            person=self.person[index],
            score=self.score[index],
            line=self.line[index],
            source=self.source,
        )

    @staticmethod
    def empty(source: str = "") -> BoxTable:
        return BoxTable(
            video=np.empty(0, dtype=object),
            timestamp=np.empty(0, dtype=np.int64),
            boxes=np.empty((0, 4), dtype=np.float64),
            action=np.empty(0, dtype=np.int64),
            person=np.empty(0, dtype=np.int64),
            score=np.empty(0, dtype=np.float64),
            line=np.empty(0, dtype=np.int64),
            source=source,
        )


@dataclass(frozen=True)
class LabelMap:
    """A label map (``.pbtxt``) in either syntax.

    ``item { name: "..." id: N }`` (ActivityNet) and
    ``label { name: "..." label_id: N label_type: PERSON_MOVEMENT }`` (AVA v2.x).

    Attributes:
        ids: int64 [C], label ids in file order.
        names: the C names, aligned with ``ids``.
        label_types: the C label types (e.g. ``PERSON_MOVEMENT``,
            ``OBJECT_MANIPULATION``, ``PERSON_INTERACTION``), ``None`` where the
            file gives none.
        source: the file it came from.
    """

    ids: np.ndarray
    names: tuple[str, ...]
    label_types: tuple[str | None, ...]
    source: str = ""
    _index: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({int(i): k for k, i in enumerate(self.ids)})

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, label_id: object) -> bool:
        key: Any = label_id  # anything int() takes, as before
        return int(key) in self._index

    def name(self, label_id: int) -> str:
        return self.names[self._index[int(label_id)]]

    def label_type(self, label_id: int) -> str | None:
        return self.label_types[self._index[int(label_id)]]

    def index_of(self, label_id: int) -> int:
        """Position of ``label_id`` in ``ids`` (a dense class index)."""
        return self._index[int(label_id)]

    def subset(self, keep: set[int] | list[int]) -> LabelMap:
        keep = {int(k) for k in keep}
        sel = [k for k, i in enumerate(self.ids) if int(i) in keep]
        return LabelMap(
            ids=self.ids[sel],
            names=tuple(self.names[k] for k in sel),
            label_types=tuple(self.label_types[k] for k in sel),
            source=self.source,
        )


@dataclass(frozen=True)
class ExcludedKeyframes:
    """Keyframes excluded from training/evaluation (``video_id,timestamp`` rows)."""

    video: np.ndarray  # str object [E]
    timestamp: np.ndarray  # int64 [E]
    source: str = ""

    def as_set(self) -> set[tuple[str, int]]:
        return {(str(v), int(t)) for v, t in zip(self.video, self.timestamp, strict=True)}
