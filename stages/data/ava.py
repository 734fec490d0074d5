"""Readers and writers for AVA-format CSV files and MMAction2 proposal pickles.

Every reader returns a :class:`~stages.data.types.BoxTable` with rows in file order and
``line`` set to the 1-based line number. With ``strict=True`` the rows are also checked
(boxes, NaN, label ids) and the first problem raises :class:`DataError`;
:func:`box_table_problems` returns all of them for checks that must report everything.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .csvparse import Column, ParsedCsv, iter_csv, parse_csv, scan_rows
from .errors import DataError
from .names import name_problem
from .predictions import (
    read_predictions_parquet,
    stream_predictions_parquet,
    write_predictions_csv,
    write_predictions_parquet,
)
from .types import NO_ACTION, NO_PERSON, BoxTable, ExcludedKeyframes, LabelMap, RowBlocks

__all__ = [
    "BOX_TOLERANCE",
    "box_table_problems",
    "check_detections_csv",
    "check_excluded_csv",
    "check_gt_csv",
    "read_detections_csv",
    "read_excluded_csv",
    "read_gt_csv",
    "read_mmaction_proposals",
    "read_predictions_parquet",
    "stream_detections_csv",
    "stream_predictions_parquet",
    "write_predictions_csv",
    "write_predictions_parquet",
]

# Boxes may exceed [0, 1] by this much: float32 detector output rounds 1.0 to 1.0000001,
# but anything larger is a real error (pixel boxes, swapped columns).
BOX_TOLERANCE = 1e-6
# Bytes of a CSV parsed at a time by stream_detections_csv (about 270 k prediction rows).
STREAM_BLOCK_BYTES = 1 << 24

_BOX = [Column("x1", "float"), Column("y1", "float"), Column("x2", "float"), Column("y2", "float")]
_HEAD = [Column("video_id", "str"), Column("timestamp", "int")]

# GT: the action is required, the person id optional (7 columns).
_GT_LAYOUTS = {
    7: [*_HEAD, *_BOX, Column("action_id", "int", nullable=True)],
    8: [
        *_HEAD,
        *_BOX,
        Column("action_id", "int", nullable=True),
        Column("person_id", "int", nullable=True),
    ],
}
# Detections: empty action (proposals); score optional (7 columns -> 1.0).
_DET_LAYOUTS = {
    7: [*_HEAD, *_BOX, Column("action_id", "int", nullable=True)],
    8: [
        *_HEAD,
        *_BOX,
        Column("action_id", "int", nullable=True),
        Column("score", "float", nullable=True),
    ],
}
_EXCLUDED_LAYOUTS = {2: _HEAD}


def _table(parsed: ParsedCsv, source: str, *, person: np.ndarray, score: np.ndarray) -> BoxTable:
    c = parsed.columns
    return BoxTable(
        video=c["video_id"],
        timestamp=c["timestamp"],
        boxes=np.stack([c["x1"], c["y1"], c["x2"], c["y2"]], axis=1),
        action=c["action_id"],
        person=person,
        score=score,
        line=parsed.lines,
        source=source,
    )


def read_gt_csv(
    path: str | Path, *, labelmap: LabelMap | None = None, strict: bool = True
) -> BoxTable:
    """Read an AVA ground-truth CSV: ``video_id, timestamp, x1, y1, x2, y2, action_id,
    person_id`` without a header (the person id may be left out: 7 columns).

    Boxes are normalized to [0, 1]; score is 1.0 for every row; an empty action id reads
    as ``NO_ACTION`` (an error when strict).

    Args:
        labelmap: when given (and strict), every action id must be in it.
        strict: check boxes, NaN, empty file, empty action ids and label ids. With
            ``strict=False`` only the structure and the numbers are checked, and an empty
            file gives an empty table.

    Raises:
        DataError: naming the file, the line and what was expected.
    """
    parsed = parse_csv(path, _GT_LAYOUTS, null_int=NO_ACTION)
    if parsed is None:
        return _empty(path, strict, "AVA ground-truth rows")
    n = parsed.lines.shape[0]
    person = parsed.columns.get("person_id")
    if person is None:
        person = np.full(n, NO_PERSON, dtype=np.int64)
    table = _table(parsed, str(path), person=person, score=np.ones(n, dtype=np.float64))
    if strict:
        _raise_first(box_table_problems(table, labelmap=labelmap, require_action=True))
    return table


def read_detections_csv(
    path: str | Path, *, labelmap: LabelMap | None = None, strict: bool = True
) -> BoxTable:
    """Read AVA detections or proposals: ``video_id, timestamp, x1, y1, x2, y2, action_id
    [, score]`` without a header.

    An empty action column (person proposals) reads as ``NO_ACTION``; 7-column rows get
    score 1.0; person is ``NO_PERSON``. ``strict`` as in :func:`read_gt_csv` (label ids
    are checked only for rows that have one).
    """
    parsed = parse_csv(path, _DET_LAYOUTS, null_int=NO_ACTION)
    if parsed is None:
        return _empty(path, strict, "AVA detection rows")
    table = _detection_table(parsed, str(path))
    if strict:
        _raise_first(box_table_problems(table, labelmap=labelmap, require_action=False))
    return table


def stream_detections_csv(path: str | Path, *, block_bytes: int | None = None) -> RowBlocks:
    """:func:`read_detections_csv` with ``strict=False``, a block of about ``block_bytes``
    (default ``STREAM_BLOCK_BYTES``) of the file at a time
    (:class:`~stages.data.types.RowBlocks`): an AVA-scale predictions CSV (9.2 M rows) is
    never held whole. ``line`` is the line number."""

    def blocks() -> Iterator[BoxTable]:
        size = STREAM_BLOCK_BYTES if block_bytes is None else block_bytes
        for parsed in iter_csv(path, _DET_LAYOUTS, null_int=NO_ACTION, block_bytes=size):
            yield _detection_table(parsed, str(path))

    return RowBlocks(blocks, str(path))


def _detection_table(parsed: ParsedCsv, source: str) -> BoxTable:
    n = parsed.lines.shape[0]
    score = parsed.columns.get("score")
    if score is None:
        score = np.ones(n, dtype=np.float64)
    return _table(parsed, source, person=np.full(n, NO_PERSON, dtype=np.int64), score=score)


def read_excluded_csv(path: str | Path) -> ExcludedKeyframes:
    """Read an excluded-timestamps CSV (``video_id,timestamp`` rows; empty file: no rows)."""
    parsed = parse_csv(path, _EXCLUDED_LAYOUTS, null_int=0)
    if parsed is None:
        return ExcludedKeyframes(
            video=np.empty(0, dtype=object), timestamp=np.empty(0, dtype=np.int64), source=str(path)
        )
    return ExcludedKeyframes(
        video=parsed.columns["video_id"], timestamp=parsed.columns["timestamp"], source=str(path)
    )


def _empty(path: str | Path, strict: bool, what: str) -> BoxTable:
    if strict:
        raise DataError(path, None, f"empty file (expected {what}, one per line, no header)")
    return BoxTable.empty(str(path))


def _raise_first(problems: list[DataError]) -> None:
    if problems:
        raise problems[0]


def box_table_problems(
    table: BoxTable, *, labelmap: LabelMap | None = None, require_action: bool = False
) -> list[DataError]:
    """Every semantic problem in ``table``, sorted by line (vectorized: fine for 1M rows).

    Checks: non-empty video id, timestamp >= 0, finite boxes inside [0, 1] (give or take
    ``BOX_TOLERANCE``) with x2 > x1 and y2 > y1, finite scores, action ids present when
    ``require_action``, and action ids in ``labelmap`` when one is given.
    """
    found: list[tuple[int, int, str]] = []  # (row, order, message): sorted at the end

    def add(mask: np.ndarray, describe: Callable[[int], str]) -> None:
        for row in np.flatnonzero(mask):
            found.append((int(row), len(found), describe(int(row))))

    b = table.boxes
    add(table.video == "", lambda r: "video id is empty")
    add(_unsafe_video_rows(table.video), lambda r: _unsafe_video_message(str(table.video[r])))
    add(table.timestamp < 0, lambda r: f"timestamp {table.timestamp[r]} is negative")
    finite = np.isfinite(b).all(axis=1)
    add(~finite, lambda r: f"box {_fmt_box(b[r])} has NaN or infinite coordinates")
    lo, hi = -BOX_TOLERANCE, 1.0 + BOX_TOLERANCE
    outside = finite & ((b < lo) | (b > hi)).any(axis=1)
    add(
        outside,
        lambda r: f"box {_fmt_box(b[r])} is outside [0, 1] (expected normalized x1,y1,x2,y2)",
    )
    add(
        finite & ~outside & (b[:, 2] <= b[:, 0]),
        lambda r: f"box {_fmt_box(b[r])} has x2 <= x1 (expected x1 < x2)",
    )
    add(
        finite & ~outside & (b[:, 3] <= b[:, 1]),
        lambda r: f"box {_fmt_box(b[r])} has y2 <= y1 (expected y1 < y2)",
    )
    add(~np.isfinite(table.score), lambda r: f"score {table.score[r]} is not a finite number")
    has_action = table.action != NO_ACTION
    if require_action:
        add(~has_action, lambda r: "action id is empty (expected an integer label id)")
    if labelmap is not None:
        unknown = has_action & ~np.isin(table.action, np.asarray(labelmap.ids, dtype=np.int64))
        where = f" {labelmap.source}" if labelmap.source else ""
        # One problem per unknown id (at its first row): a label map that lost an id (a
        # duplicated id line) must not bury its own error under one line per CSV row.
        _ids, first, counts = np.unique(
            table.action[unknown], return_index=True, return_counts=True
        )
        rows = np.flatnonzero(unknown)[first]
        many = dict(zip(rows.tolist(), counts.tolist(), strict=True))
        first_rows = np.zeros(len(table), dtype=bool)
        first_rows[rows] = True
        add(
            first_rows,
            lambda r: (
                f"action id {table.action[r]} is not in the label map{where}"
                + (f" ({many[r]} rows use it; this is the first)" if many[r] > 1 else "")
            ),
        )
    found.sort()
    return [DataError(table.source, int(table.line[row]), msg) for row, _, msg in found]


def _unsafe_video_rows(video: np.ndarray) -> np.ndarray:
    """bool [N]: the first row of each non-empty video id that cannot be a file name."""
    mask = np.zeros(video.shape[0], dtype=bool)
    # The distinct names in first-seen order, without a fixed-width string copy and sort
    # of every row (a train GT file at AVA scale is 1 M rows: 130 MB that way, issue 22).
    for name in dict.fromkeys(video.tolist()):
        if name and name_problem(str(name)) is not None:
            mask[int(np.flatnonzero(video == name)[0])] = True
    return mask


def _unsafe_video_message(video: str) -> str:
    return (
        f"video id {video!r} {name_problem(video)} (expected a file name in the videos "
        "directory: no '/', no '..', no leading dot, printable)"
    )


def _fmt_box(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def read_mmaction_proposals(path: str | Path, *, trust_pickle: bool = False) -> BoxTable:
    """Read MMAction2's person-proposal pickle ``{"video_id,%04d": ndarray[N, 5]}``.

    Rows are ``x1, y1, x2, y2, score`` (normalized); ``[N, 4]`` arrays get score 1.0.
    Keys are read in the pickle's order; ``line`` is the 1-based row number over all keys.

    Unpickling runs whatever code the file names, so it is refused unless the caller
    trusts the file (``trust_pickle=True``).
    """
    if not trust_pickle:
        raise DataError(
            path,
            None,
            "refusing to unpickle: loading a pickle runs code stored in the file; "
            "pass trust_pickle=True only for files you made or trust",
        )
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)  # the caller opted in above
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(path, None, f"cannot read the proposal pickle: {err}") from err
    if not isinstance(raw, dict):
        raise DataError(
            path, None, f"expected a dict of 'video_id,timestamp' keys, got {type(raw).__name__}"
        )
    videos, stamps, chunks = [], [], []
    for key, value in raw.items():
        video, sep, stamp = str(key).rpartition(",")
        if not sep or not video or not stamp.strip().isdigit():
            raise DataError(path, None, f"key {key!r} is not 'video_id,timestamp'")
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 0:
            continue
        if arr.ndim != 2 or arr.shape[1] not in (4, 5):
            raise DataError(
                path,
                None,
                f"key {key!r}: expected an array [N, 4] or [N, 5], got shape {arr.shape}",
            )
        if arr.shape[1] == 4:
            arr = np.concatenate([arr, np.ones((arr.shape[0], 1))], axis=1)
        videos.append(np.full(arr.shape[0], video, dtype=object))
        stamps.append(np.full(arr.shape[0], int(stamp), dtype=np.int64))
        chunks.append(arr)
    if not chunks:
        return BoxTable.empty(str(path))
    rows = np.concatenate(chunks)
    n = rows.shape[0]
    return BoxTable(
        video=np.concatenate(videos),
        timestamp=np.concatenate(stamps),
        boxes=rows[:, :4].copy(),
        action=np.full(n, NO_ACTION, dtype=np.int64),
        person=np.full(n, NO_PERSON, dtype=np.int64),
        score=rows[:, 4].copy(),
        line=np.arange(1, n + 1, dtype=np.int64),
        source=str(path),
    )


def _check_csv(
    path: str | Path,
    layouts: dict[int, list[Column]],
    read: Callable[..., BoxTable],
    labelmap: LabelMap | None,
    *,
    require_action: bool,
) -> tuple[BoxTable | None, list[DataError]]:
    try:
        table = read(path, strict=False)
    except DataError as err:
        try:
            problems = scan_rows(path, Path(path).read_bytes(), layouts)
        except OSError:
            problems = []
        return None, problems or [err]
    if len(table) == 0:
        return table, [DataError(path, None, "empty file (expected AVA rows, no header)")]
    return table, box_table_problems(table, labelmap=labelmap, require_action=require_action)


def check_gt_csv(
    path: str | Path, *, labelmap: LabelMap | None = None
) -> tuple[BoxTable | None, list[DataError]]:
    """Read a GT CSV and collect every problem instead of raising the first.

    Returns the table (None when its structure is broken) and all problems, by line.
    """
    return _check_csv(path, _GT_LAYOUTS, read_gt_csv, labelmap, require_action=True)


def check_detections_csv(
    path: str | Path, *, labelmap: LabelMap | None = None
) -> tuple[BoxTable | None, list[DataError]]:
    """:func:`check_gt_csv` for detection/proposal CSVs."""
    return _check_csv(path, _DET_LAYOUTS, read_detections_csv, labelmap, require_action=False)


def check_excluded_csv(path: str | Path) -> tuple[ExcludedKeyframes | None, list[DataError]]:
    """Read an excluded-timestamps CSV and collect every structural problem."""
    try:
        return read_excluded_csv(path), []
    except DataError as err:
        try:
            problems = scan_rows(path, Path(path).read_bytes(), _EXCLUDED_LAYOUTS)
        except OSError:
            problems = []
        return None, problems or [err]
