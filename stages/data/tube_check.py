"""``bankflow data check`` for tube datasets: every problem of the GT file and videos.

Each problem is one line naming the file and the video, label and tube concerned:
tube frames outside ``1..nframes``, boxes outside the ``resolution``, classes without
any tube, split videos without ``nframes``/``resolution`` or without a video file, a
video file whose frame count or size disagrees with the GT file, and proposal rows
(frame-number timestamps) outside their video.
"""

from __future__ import annotations

import numpy as np

from .ava import check_detections_csv
from .check_report import DatasetReport, _summarize
from .dataset import DatasetConfig
from .errors import DataError
from .tube_dataset import load_tube_gt, split_videos, tube_box_table, tube_labelmap
from .tubes import TubeGT
from .types import BoxTable
from .videos import VIDEO_EXTENSIONS, find_video, probe_video


def check_tube_dataset(config: DatasetConfig, report: DatasetReport) -> DatasetReport:
    """Fill ``report`` with the problems and per-split counts of a tube dataset."""
    assert config.tubes is not None
    files = config.tubes
    problems = report.problems
    path = config.annotation_path(files.annotation)
    try:
        gt = load_tube_gt(path, files)
    except DataError as err:
        problems.append(err)
        return report
    report.timestamp_offset = 1.0
    labelmap = tube_labelmap(gt)
    report.labelmap = labelmap
    problems += tube_gt_problems(gt)
    exts = "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
    probed: set[str] = set()
    for split in config.splits:
        try:
            videos = split_videos(gt, files, split)
        except (KeyError, DataError) as err:
            problems.append(DataError(path, None, f"split {split!r}: {err}"))
            continue
        for video in videos:
            if video in probed:
                continue
            probed.add(video)
            problems += _video_problems(config, gt, video, split, exts)
        known = tuple(v for v in videos if v in gt.nframes and v in gt.resolution)
        table = tube_box_table(gt, known, files.stride(split))
        proposals = None
        name = config.splits[split].proposals
        if name is not None and config.annotation_path(name).is_file():
            proposals, found = check_detections_csv(config.annotation_path(name), labelmap=None)
            problems += found
            if proposals is not None:
                problems += _proposal_problems(proposals, gt, set(videos))
        report.splits[split] = _summarize(split, table, 0, proposals, labelmap)
    return report


def tube_gt_problems(gt: TubeGT) -> list[DataError]:
    """Problems inside the GT file itself (no video is opened)."""
    out: list[DataError] = []
    src = gt.source
    split_names = {v for s in (*gt.train_videos, *gt.test_videos) for v in s}
    for video in sorted(split_names | set(gt.tubes)):
        for key, table in (("nframes", gt.nframes), ("resolution", gt.resolution)):
            if video not in table:
                out.append(DataError(src, None, f"video {video!r} has no {key} entry"))
    for video in sorted(set(gt.tubes) - split_names):
        out.append(DataError(src, None, f"video {video!r} has tubes but is in no split"))
    with_tubes: set[int] = set()
    for video, per_label in gt.tubes.items():
        n = gt.nframes.get(video)
        hw = gt.resolution.get(video)
        for label, tubes in per_label.items():
            name = gt.labels[label]
            if tubes:
                with_tubes.add(label)
            for k, tube in enumerate(tubes):
                where = f"video {video!r}, label {name!r}, tube {k}"
                first, last = int(tube[0, 0]), int(tube[-1, 0])
                if n is not None and (first < 1 or last > n):
                    out.append(
                        DataError(
                            src,
                            None,
                            f"{where}: frames {first}..{last} outside the video's 1..{n}",
                        )
                    )
                if np.any(tube[:, 0] != np.round(tube[:, 0])):
                    out.append(DataError(src, None, f"{where}: frame numbers are not integers"))
                box = tube[:, 1:5]
                bad = ~np.isfinite(box).all(axis=1) | (box[:, 2] <= box[:, 0])
                bad |= box[:, 3] <= box[:, 1]
                if hw is not None:
                    h, w = hw
                    tol = 1.0  # pixel boxes may end on the last pixel's far edge
                    bad |= (box[:, 0] < -tol) | (box[:, 1] < -tol)
                    bad |= (box[:, 2] > w + tol) | (box[:, 3] > h + tol)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    size = "" if hw is None else f" inside the {hw[1]}x{hw[0]} frame,"
                    out.append(
                        DataError(
                            src,
                            None,
                            f"{where}: frame {int(tube[i, 0])} box "
                            f"{[round(float(v), 2) for v in box[i]]} is not{size} x1 < x2 and y1 < y2"
                            f" ({int(bad.sum())} such rows)",
                        )
                    )
    for label, name in enumerate(gt.labels):
        if label not in with_tubes:
            out.append(DataError(src, None, f"class {name!r} (label {label}) has no tube"))
    return out


def _video_problems(
    config: DatasetConfig, gt: TubeGT, video: str, split: str, exts: str
) -> list[DataError]:
    path = find_video(config.videos_path, video)
    if path is None:
        msg = (
            f"video {video!r} of split {split!r} has no file {config.videos_path}/{video}.<{exts}>"
        )
        return [DataError(gt.source, None, msg)]
    try:
        info = probe_video(path)
    except DataError as err:
        return [err]
    out = []
    n = gt.nframes.get(video)
    if n is not None and info.frames < n:
        out.append(DataError(path, None, f"has {info.frames} frames; the GT says nframes {n}"))
    hw = gt.resolution.get(video)
    if hw is not None and (info.height, info.width) != hw:
        out.append(
            DataError(
                path,
                None,
                f"is {info.width}x{info.height}; the GT resolution says {hw[1]}x{hw[0]} "
                "(width x height)",
            )
        )
    return out


def _proposal_problems(table: BoxTable, gt: TubeGT, videos: set[str]) -> list[DataError]:
    out = []
    for row in range(len(table)):
        video, frame = str(table.video[row]), int(table.timestamp[row])
        n = gt.nframes.get(video)
        if video not in videos:
            out.append(
                DataError(
                    table.source, int(table.line[row]), f"video {video!r} is not in this split"
                )
            )
        elif n is not None and not 1 <= frame <= n:
            msg = f"frame {frame} is outside video {video!r} (frames 1..{n})"
            out.append(DataError(table.source, int(table.line[row]), msg))
        if len(out) >= 20:
            break
    return out
