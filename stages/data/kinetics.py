"""Per-video time bases: AVA-Kinetics mixes 15-minute AVA movies with 10-second Kinetics
clips, so one timestamp offset for the whole dataset cannot fit.

A CSV timestamp ``t`` of video ``v`` is ``t - offset(v)`` seconds into ``v``'s file,
where ``offset(v)`` is, in this order:

1. the row of ``v`` in the offsets table (``timestamp_offsets`` in the dataset config,
   a CSV ``video_id,offset_seconds[,source]`` without header; ``source`` is ``ava`` or
   ``kinetics``, default ``ava``);
2. for a Kinetics clip, its start: the file ``<youtube_id>_<start>_<end>.<ext>`` (start
   and end in whole seconds, zero-padded to 6 digits as the Kinetics downloaders write
   them) holds seconds ``start..end`` of YouTube video ``youtube_id``, which the CSV
   names either way (``youtube_id`` or the full clip name); its source is ``kinetics``;
3. the dataset's one offset (given, or inferred from the remaining videos: 0 or 900).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .errors import DataError
from .videos import VIDEO_EXTENSIONS

KINETICS_NAME = re.compile(r"^(?P<yid>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")
SOURCES = ("ava", "kinetics")


def kinetics_clip(name: str) -> tuple[str, int, int] | None:
    """``(youtube_id, start, end)`` of a Kinetics clip name, or None."""
    m = KINETICS_NAME.match(name)
    if m is None:
        return None
    return m["yid"], int(m["start"]), int(m["end"])


def find_clip(videos_dir: Path, video_id: str) -> Path | None:
    """The Kinetics clip file ``<video_id>_<start>_<end>.<ext>`` of a YouTube id, or None
    (the first in name order if several clips of one video exist)."""
    for ext in VIDEO_EXTENSIONS:
        found = sorted(videos_dir.glob(f"{glob_escape(video_id)}_[0-9]*_[0-9]*{ext}"))
        found = [p for p in found if kinetics_clip(p.stem) and kinetics_clip(p.stem)[0] == video_id]  # type: ignore[index]
        if found:
            return found[0]
    return None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def read_offsets_csv(path: str | Path) -> dict[str, tuple[float, str]]:
    """``{video_id: (offset_seconds, source)}`` from ``video_id,offset[,source]`` rows.

    Raises:
        DataError: naming the file and line of a malformed row or a repeated video.
    """
    out: dict[str, tuple[float, str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) not in (2, 3):
                    raise DataError(
                        path, line, f"expected video_id,offset[,source], got {len(row)} columns"
                    )
                video = row[0].strip()
                try:
                    offset = float(row[1])
                except ValueError:
                    raise DataError(path, line, f"offset {row[1]!r} is not a number") from None
                source = row[2].strip() if len(row) == 3 else "ava"
                if source not in SOURCES:
                    raise DataError(path, line, f"source {source!r} is not one of {SOURCES}")
                if video in out:
                    raise DataError(path, line, f"video {video!r} listed twice")
                out[video] = (offset, source)
    except OSError as err:
        raise DataError(path, None, f"cannot read: {err.strerror or err}") from err
    return out


def clip_offset(path: Path | None) -> float | None:
    """The start second of a Kinetics clip file (by its name), or None."""
    if path is None:
        return None
    clip = kinetics_clip(path.stem)
    return None if clip is None else float(clip[1])
