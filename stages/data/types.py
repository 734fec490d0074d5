"""Typed, columnar views of AVA-format annotation files.

Every reader in :mod:`stages.data` returns one of these. They hold numpy arrays (one
entry per CSV row, in file order) rather than lists of dicts, so that a file with a
million rows is a handful of arrays and the evaluator can sort and group without
Python loops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
class RowBlocks:
    """A file's rows read a block at a time, never all held: an AVA-scale predictions file
    is 9.2 M rows (issue 22). Each iteration is a new pass over the file.

    Blocks come in file order; ``line`` counts rows from 1 over the whole file.

    Attributes:
        open: starts a pass, yielding BoxTable blocks.
        source: the file (for messages).
    """

    open: Callable[[], Iterator[BoxTable]]
    source: str = ""

    def __iter__(self) -> Iterator[BoxTable]:
        return self.open()

    def where(self, keep: Callable[[BoxTable], np.ndarray]) -> RowBlocks:
        """The rows for which ``keep(block)`` (a boolean mask of the block) is true."""
        parent = self.open
        return RowBlocks(lambda: (b.take(keep(b)) for b in parent()), self.source)

    def table(self) -> BoxTable:
        """Every row at once."""
        return concat_tables(list(self.open()), self.source)


def concat_tables(blocks: list[BoxTable], source: str = "") -> BoxTable:
    """The rows of ``blocks`` one after another, as one table."""
    if not blocks:
        return BoxTable.empty(source)
    return BoxTable(
        video=np.concatenate([b.video for b in blocks]),
        timestamp=np.concatenate([b.timestamp for b in blocks]),
        boxes=np.concatenate([b.boxes for b in blocks]).reshape(-1, 4),
        action=np.concatenate([b.action for b in blocks]),
        person=np.concatenate([b.person for b in blocks]),
        score=np.concatenate([b.score for b in blocks]),
        line=np.concatenate([b.line for b in blocks]),
        source=source or blocks[0].source,
    )


@dataclass(frozen=True)
class PredictionRows:
    """Predictions held per box, the AVA rows (one per box and class) made a block at a
    time: a split's 9.2 M rows at AVA scale are never all in memory at once (issue 22).

    Rows are grouped by box, boxes by keyframe in order: the table :meth:`table` gives
    equals ``predictions_table`` of the training stages. With ``top_k`` each box keeps
    its k best classes, best first (equal scores: class order).

    Attributes:
        video: ``str`` object array [K], the keyframes' videos; timestamp: int64 [K].
        offset: int64 [K + 1], keyframe k's boxes are rows ``offset[k]:offset[k + 1]``.
        boxes: [N, 4] x1 y1 x2 y2 (any float dtype; rows hold them as float64).
        scores: float [N, C], classes in ``class_ids`` order.
        class_ids: int64 [C], the action id of each score column.
        top_k: classes kept per box (None or >= C: all).
    """

    video: np.ndarray
    timestamp: np.ndarray
    offset: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    top_k: int | None = None

    @property
    def per_box(self) -> int:
        c = self.scores.shape[1]
        return c if self.top_k is None or self.top_k >= c else self.top_k

    def __len__(self) -> int:
        return self.scores.shape[0] * self.per_box

    def rows(self, first: int, last: int) -> BoxTable:
        """The rows of boxes ``first:last`` (``line`` counts from the first row of all)."""
        c, per_box = self.scores.shape[1], self.per_box
        boxes = np.arange(first, last)
        keyframe = np.searchsorted(self.offset, boxes, side="right") - 1
        if per_box < c:
            order = np.argsort(-self.scores[first:last], axis=1, kind="stable")[:, :per_box]
            cls = order.reshape(-1)
        else:
            cls = np.tile(np.arange(c), last - first)
        local = np.repeat(np.arange(last - first), per_box)
        actor = boxes[local]
        n = actor.size
        return BoxTable(
            video=self.video[keyframe[local]],
            timestamp=self.timestamp[keyframe[local]].astype(np.int64),
            boxes=self.boxes[actor].astype(np.float64),
            action=np.asarray(self.class_ids, dtype=np.int64)[cls],
            person=np.full(n, NO_PERSON, dtype=np.int64),
            score=self.scores[actor, cls].astype(np.float64),
            line=np.arange(first * per_box + 1, first * per_box + n + 1, dtype=np.int64),
        )

    def blocks(self, rows: int) -> Iterator[BoxTable]:
        """The rows in order, about ``rows`` at a time, each block whole keyframes (a
        keyframe with more rows is a block of its own)."""
        ends = self.offset[1:] * self.per_box  # row after each keyframe
        k, n_kf = 0, len(self.timestamp)
        while k < n_kf:
            first_row = int(self.offset[k]) * self.per_box
            last = max(k + 1, int(np.searchsorted(ends, first_row + rows, side="right")))
            if self.offset[last] > self.offset[k]:  # keyframes without boxes have no rows
                yield self.rows(int(self.offset[k]), int(self.offset[last]))
            k = last

    def table(self) -> BoxTable:
        """Every row at once."""
        return self.rows(0, self.scores.shape[0])


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
