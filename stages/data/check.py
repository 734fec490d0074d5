"""``check_dataset``: validate a whole AVA-format dataset and report every problem.

Unlike the readers, which raise on the first bad row, this collects every problem
(CSV rows, label map, missing or broken videos, timestamps outside their video) so that
``bankflow data check`` can list them all at once, as ``file:line: what is wrong``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ava import check_detections_csv, check_excluded_csv, check_gt_csv
from .check_report import ClassCount as ClassCount  # re-exported: the report's types
from .check_report import DatasetReport, _summarize
from .check_report import SplitSummary as SplitSummary
from .dataset import (
    DATASET_YAML,
    DatasetConfig,
    infer_timestamp_offset,
)
from .errors import DataError
from .kinetics import clip_offset, find_clip, read_offsets_csv
from .labelmap import DuplicateIdError, labelmap_problems
from .names import name_problem
from .types import BoxTable, LabelMap
from .videos import VIDEO_EXTENSIONS, VideoInfo, check_frame_decodes, find_video, probe_video


def check_dataset(config: DatasetConfig | str | Path) -> DatasetReport:
    """Validate every file of a dataset and collect every problem (never stops early).

    Checks: the config and ``dataset.yaml``; the label map (syntax, missing/duplicate
    ids); every GT, excluded and proposal CSV (columns, numbers, boxes, NaN, empty
    files, action ids missing from the label map); that every video named in a CSV has
    a file that decord opens and whose last needed frame decodes; the timestamp offset
    (given or inferred); that every keyframe lies inside its video.
    """
    if not isinstance(config, DatasetConfig):
        config = DatasetConfig(root=Path(config))
    report = DatasetReport(root=config.root)
    problems = report.problems
    if not config.root.is_dir():
        problems.append(DataError(config.root, None, "dataset directory does not exist"))
        return report
    try:
        config = config.resolved()
    except DataError as err:
        problems.append(err)
    if config.tubes is not None:
        from .tube_check import check_tube_dataset  # video probing, tube GT readers

        return check_tube_dataset(config, report)

    labelmap_path = config.annotation_path(config.labelmap)
    labelmap: LabelMap | None = None
    if labelmap_path.is_file():
        labelmap, found = labelmap_problems(labelmap_path)
        problems.extend(found)
    else:
        problems.append(DataError(labelmap_path, None, "label map not found (set labelmap)"))
    report.labelmap = labelmap
    # A duplicated id usually replaced another (a typo): the ids it lost are checked as
    # known and told once, on the duplicate's line, not as unknown in every CSV and list.
    lost = _lost_ids(problems, labelmap)
    checked_map = _with_ids(labelmap, lost)
    problems.extend(_class_list_problems(config, checked_map))

    located: list[BoxTable] = []  # every table whose rows must lie inside a video
    for split, files in config.splits.items():
        gt = proposals = None
        n_excluded = 0
        if files.gt is not None:
            path = config.annotation_path(files.gt)
            if path.is_file():
                gt, found = check_gt_csv(path, labelmap=checked_map)
                problems.extend(found)
                report.warnings.extend(duplicate_row_warnings(gt))
            else:
                problems.append(DataError(path, None, f"GT file of split {split!r} not found"))
        named = files.named_files()
        for kind in ("excluded", "proposals"):
            name = getattr(files, kind)
            if kind in named and not config.annotation_path(name).is_file():
                problems.append(
                    DataError(
                        config.annotation_path(name),
                        None,
                        f"file named by splits.{split}.{kind} does not exist",
                    )
                )
        if files.excluded is not None and config.annotation_path(files.excluded).is_file():
            excluded, found = check_excluded_csv(config.annotation_path(files.excluded))
            problems.extend(found)
            n_excluded = 0 if excluded is None else len(excluded.timestamp)
        if files.proposals is not None and config.annotation_path(files.proposals).is_file():
            proposals, found = check_detections_csv(
                config.annotation_path(files.proposals), labelmap=checked_map
            )
            problems.extend(found)
        located += [t for t in (gt, proposals) if t is not None]
        for table in (gt, proposals):
            _note_uses(lost, table)
        report.splits[split] = _summarize(split, gt, n_excluded, proposals, labelmap)

    _fold_lost_ids(problems, lost)
    infos = _probe_videos(config, located, problems)
    own = _own_offsets(config, infos, problems)  # AVA-Kinetics: per-video time bases
    shared = [t.take(~np.isin(t.video.astype(str), list(own))) for t in located]
    offset = config.timestamp_offset
    if offset is None:
        durations = {v: info.duration for v, info in infos.items()}
        try:
            offset = infer_timestamp_offset(shared, durations)
        except DataError as err:
            problems.append(err)
    report.timestamp_offset = offset
    offsets = {v: own.get(v, offset) for v in infos}
    _check_keyframes_in_videos(located, infos, offsets, problems)
    return report


def duplicate_row_warnings(gt: BoxTable | None) -> list[DataError]:
    """One warning per GT file with rows repeated exactly (video, time, box, action,
    person): each copy counts as another GT box in the evaluation."""
    if gt is None or len(gt) < 2:
        return []
    _, video = np.unique(gt.video.astype(str), return_inverse=True)
    box = np.round(gt.boxes * 1e6).astype(np.int64)
    keys = np.column_stack([video, gt.timestamp, box, gt.action, gt.person])
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse.reshape(-1)] != np.arange(len(gt)))
    if repeats.size == 0:
        return []
    row = int(repeats[0])
    original = int(gt.line[first[inverse.reshape(-1)][row]])
    return [
        DataError(
            gt.source,
            int(gt.line[row]),
            f"{repeats.size} GT row(s) repeat an earlier row exactly (this one repeats line "
            f"{original}); each copy counts as another box to detect",
        )
    ]


def _own_offsets(
    config: DatasetConfig, infos: dict[str, VideoInfo], problems: list[DataError]
) -> dict[str, float]:
    """Offsets of videos with their own time base: the offsets table, Kinetics clips."""
    own: dict[str, float] = {}
    if config.timestamp_offsets is not None:
        try:
            table = read_offsets_csv(config.annotation_path(config.timestamp_offsets))
            own.update({v: off for v, (off, _) in table.items()})
        except DataError as err:
            problems.append(err)
    for video, info in infos.items():
        start = clip_offset(info.path) if info.path.stem != video else None
        if video not in own and start is not None:
            own[video] = start
    return own


@dataclass
class _LostId:
    """An id a duplicated label-map line probably lost, and the CSV rows that use it."""

    duplicate: DuplicateIdError
    rows: int = 0
    first: str | None = None  # "file:line" of the first row using it


def _lost_ids(problems: list[DataError], labelmap: LabelMap | None) -> dict[int, _LostId]:
    if labelmap is None:
        return {}
    lost: dict[int, _LostId] = {}
    for problem in problems:
        if isinstance(problem, DuplicateIdError):
            for label_id in problem.lost_ids(labelmap.ids.tolist()):
                lost.setdefault(label_id, _LostId(problem))
    return lost


def _with_ids(labelmap: LabelMap | None, lost: dict[int, _LostId]) -> LabelMap | None:
    if labelmap is None or not lost:
        return labelmap
    extra = sorted(lost)
    return LabelMap(
        ids=np.concatenate([labelmap.ids, np.asarray(extra, dtype=np.int64)]),
        names=labelmap.names + ("?",) * len(extra),
        label_types=labelmap.label_types + (None,) * len(extra),
        source=labelmap.source,
    )


def _note_uses(lost: dict[int, _LostId], table: BoxTable | None) -> None:
    if not lost or table is None:
        return
    for label_id, record in lost.items():
        rows = np.flatnonzero(table.action == label_id)
        if rows.size:
            record.rows += int(rows.size)
            record.first = record.first or f"{table.source}:{int(table.line[rows[0]])}"


def _fold_lost_ids(problems: list[DataError], lost: dict[int, _LostId]) -> None:
    """Add the lost ids (and the rows using them) to their duplicate's one line."""
    for k, problem in enumerate(problems):
        mine = {i: r for i, r in lost.items() if r.duplicate is problem}
        if not mine:
            continue
        told = []
        for label_id, record in sorted(mine.items()):
            used = (
                f"{record.rows} CSV row(s) use it, the first {record.first}"
                if record.rows
                else "no CSV row uses it"
            )
            told.append(f"id {label_id}, between the ids around this line, is missing ({used})")
        problems[k] = DataError(
            problem.path, problem.line, f"{problem.message}; {'; '.join(told)}: a typo?"
        )


def _class_list_problems(config: DatasetConfig, labelmap: LabelMap | None) -> list[DataError]:
    if labelmap is None:
        return []
    yaml_path = config.root / DATASET_YAML
    where = yaml_path if yaml_path.is_file() else config.root
    out = []
    for name in ("evaluated_classes", "exclusive_classes"):
        ids = getattr(config, name)
        unknown = [i for i in ids or [] if i not in labelmap]
        if unknown:
            out.append(DataError(where, None, f"{name} {unknown} are not ids of {labelmap.source}"))
    return out


def _probe_videos(
    config: DatasetConfig, tables: list[BoxTable], problems: list[DataError]
) -> dict[str, VideoInfo]:
    """Open every video named in ``tables`` once; a missing file is reported at the first
    row naming it."""
    first_row: dict[str, tuple[BoxTable, int]] = {}
    for table in tables:
        names, first = np.unique(table.video.astype(str), return_index=True)
        for name, row in sorted(
            zip(names.tolist(), first.tolist(), strict=True), key=lambda x: x[1]
        ):
            first_row.setdefault(name, (table, row))
    exts = "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
    infos: dict[str, VideoInfo] = {}
    for video, (table, row) in first_row.items():
        if name_problem(video) is not None:
            continue  # reported at its row by the CSV check
        path = find_video(config.videos_path, video) or find_clip(config.videos_path, video)
        if path is None:
            problems.append(
                DataError(
                    table.source,
                    int(table.line[row]),
                    f"video {video!r} has no file {config.videos_path}/{video}.<{exts}>",
                )
            )
            continue
        try:
            infos[video] = probe_video(path)
        except DataError as err:
            problems.append(err)
    return infos


def _check_keyframes_in_videos(
    tables: list[BoxTable],
    infos: dict[str, VideoInfo],
    offsets: dict[str, float | None],
    problems: list[DataError],
) -> None:
    """Report keyframes outside their video (once per keyframe and file) and decode the
    last frame each video needs."""
    last_needed: dict[str, float] = {}
    for table in tables:
        _, video_index = np.unique(table.video.astype(str), return_inverse=True)
        keys = np.stack([video_index.astype(np.int64), table.timestamp], axis=1)
        _, first = np.unique(keys, axis=0, return_index=True)
        for row in np.sort(first).tolist():
            video = str(table.video[row])
            info = infos.get(video)
            offset = offsets.get(video)
            if info is None or offset is None:
                continue  # missing or unreadable video, or no offset: already reported
            seconds = float(table.timestamp[row]) - offset
            if 0 <= seconds <= info.duration:
                last_needed[video] = max(last_needed.get(video, 0.0), seconds)
                continue
            problems.append(
                DataError(
                    table.source,
                    int(table.line[row]),
                    f"timestamp {int(table.timestamp[row])} is outside video {video!r} "
                    f"({info.duration:.2f} s long, offset {offset:g}): expected "
                    f"{offset:g} <= t <= {offset + info.duration:.2f}",
                )
            )
    for video, seconds in last_needed.items():
        info = infos[video]
        try:
            check_frame_decodes(info.path, info.frame_at(seconds))
        except DataError as err:
            problems.append(err)
