"""What ``bankflow data check`` reports: per-split summaries and the problems found, for
AVA datasets (:mod:`stages.data.check`) and tube datasets (:mod:`stages.data.tube_check`),
apart from both so that neither imports the other back (docs/design.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import unique_keyframes
from .errors import DataError, DataErrors
from .types import NO_ACTION, NO_PERSON, BoxTable, LabelMap


@dataclass(frozen=True)
class ClassCount:
    """GT boxes (rows) of one label id in one split."""

    id: int
    name: str
    count: int


@dataclass(frozen=True)
class SplitSummary:
    """Counts for one split (GT unless noted).

    Attributes:
        videos: distinct videos in the GT.
        keyframes: distinct (video, timestamp) pairs in the GT.
        persons: distinct persons per keyframe (by person id, or by box for rows
            without one), i.e. the number of person boxes to detect.
        boxes: GT rows (one per person and action).
        excluded: excluded keyframes listed.
        proposals: proposal rows, or None when the split has no proposal file.
        class_counts: GT rows per label id: every label map id, then unknown ids.
    """

    name: str
    videos: int
    keyframes: int
    persons: int
    boxes: int
    excluded: int
    proposals: int | None
    class_counts: tuple[ClassCount, ...]


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found. ``ok`` is True when there are no problems
    (warnings, such as repeated GT rows, do not make it fail)."""

    root: Path
    problems: list[DataError] = field(default_factory=list)
    warnings: list[DataError] = field(default_factory=list)  # suspicious, not wrong
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    labelmap: LabelMap | None = None
    timestamp_offset: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise :class:`DataErrors` listing every problem, if there are any."""
        if self.problems:
            raise DataErrors(self.problems)

    def format_problems(self) -> str:
        """One ``file:line: what is wrong`` per line."""
        return "\n".join(str(p) for p in self.problems)

    def format_summary(self) -> str:
        """A readable table: per-split counts, then GT boxes per class and split."""
        classes = "?" if self.labelmap is None else str(len(self.labelmap))
        offset = "unknown" if self.timestamp_offset is None else f"{self.timestamp_offset:g} s"
        lines = [
            f"dataset {self.root}",
            f"label map: {classes} classes; timestamp offset: {offset}",
        ]
        if self.splits:
            head = ("split", "videos", "keyframes", "persons", "boxes", "excluded", "proposals")
            rows = [
                (
                    s.name,
                    *(str(v) for v in (s.videos, s.keyframes, s.persons, s.boxes, s.excluded)),
                    "-" if s.proposals is None else str(s.proposals),
                )
                for s in self.splits.values()
            ]
            lines += ["", *_table(head, rows)]
            lines += ["", "GT boxes per class:", *_class_table(list(self.splits.values()))]
        status = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        lines += ["", f"status: {status}"]
        return "\n".join(lines)


def _table(
    head: tuple[str, ...], rows: list[tuple[str, ...]], *, text_columns: int = 1
) -> list[str]:
    """Columns padded to width: the first ``text_columns`` left-aligned, numbers right."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [
            c.ljust(w) if i < text_columns else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(head), *(fmt(r) for r in rows)]


def _class_table(splits: list[SplitSummary]) -> list[str]:
    ids: dict[int, str] = {}
    for s in splits:
        for c in s.class_counts:
            ids.setdefault(c.id, c.name)
    counts = {s.name: {c.id: c.count for c in s.class_counts} for s in splits}
    head = ("id", "name", *(s.name for s in splits))
    rows = [
        (str(i), name, *(str(counts[s.name].get(i, 0)) for s in splits)) for i, name in ids.items()
    ]
    return _table(head, rows, text_columns=2)


def _summarize(
    name: str,
    gt: BoxTable | None,
    excluded: int,
    proposals: BoxTable | None,
    labelmap: LabelMap | None,
) -> SplitSummary:
    gt = BoxTable.empty() if gt is None else gt
    videos, _ = unique_keyframes(gt.video, gt.timestamp)
    ids = [] if labelmap is None else labelmap.ids.tolist()
    present, counts = np.unique(gt.action[gt.action != NO_ACTION], return_counts=True)
    by_id = dict(zip(present.tolist(), counts.tolist(), strict=True))
    class_counts = [
        ClassCount(i, labelmap.name(i) if labelmap and i in labelmap else "?", by_id.get(i, 0))
        for i in [*ids, *sorted(set(by_id) - set(ids))]
    ]
    return SplitSummary(
        name=name,
        videos=len(set(videos.tolist())),
        keyframes=int(videos.shape[0]),
        persons=_count_persons(gt),
        boxes=len(gt),
        excluded=excluded,
        proposals=None if proposals is None else len(proposals),
        class_counts=tuple(class_counts),
    )


def _count_persons(gt: BoxTable) -> int:
    """Distinct persons per keyframe: by person id where given, else by box."""
    if len(gt) == 0:
        return 0
    _, video = np.unique(gt.video.astype(str), return_inverse=True)
    has_id = gt.person != NO_PERSON
    # Boxes are compared at 1e-4 (finer than AVA's 3 decimals) so float noise is ignored.
    box = np.round(gt.boxes * 1e4).astype(np.int64)
    by_id = np.stack([video, gt.timestamp, gt.person], axis=1)[has_id]
    by_box = np.column_stack([video, gt.timestamp, box])[~has_id]
    return len(np.unique(by_id, axis=0)) + len(np.unique(by_box, axis=0))
