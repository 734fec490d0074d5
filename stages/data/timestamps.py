"""Keyframe timestamps of a dataset's tables: the unique keyframes, and the timestamp
offset (0 or AVA's 900 s) inferred from the videos' lengths."""

from __future__ import annotations

import numpy as np

from .errors import DataError
from .types import BoxTable

AVA_OFFSET = 900.0  # AVA clips start 900 s into the movie; timestamps are movie seconds


def unique_keyframes(video: np.ndarray, timestamp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (video, timestamp) pairs sorted by video id then timestamp.

    Returns: video ``str`` object array [K], timestamp int64 [K].
    """
    if video.shape[0] == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    names, video_index = np.unique(video.astype(str), return_inverse=True)
    pairs = np.unique(np.stack([video_index.astype(np.int64), timestamp], axis=1), axis=0)
    return names[pairs[:, 0]].astype(object), pairs[:, 1].copy()


def infer_timestamp_offset(tables: list[BoxTable], durations: dict[str, float]) -> float:
    """0 if every timestamp t lies in [0, duration] of its video, else 900 (AVA) if every
    t - 900 does. Rows of videos without a known duration are ignored.

    Raises:
        DataError: naming the first row that fits neither (or, when every row fits one
            of them but not all the same one, the first row that misses the offset most
            rows fit).
    """
    rows: list[tuple[BoxTable, np.ndarray, np.ndarray]] = []
    for table in tables:
        dur = np.array([durations.get(str(v), np.nan) for v in table.video], dtype=np.float64)
        known = ~np.isnan(dur)

        def fits(offset: float, table: BoxTable = table, dur: np.ndarray = dur) -> np.ndarray:
            seconds = table.timestamp - offset
            return (seconds >= 0) & (seconds <= dur)

        fit0, fit900 = fits(0.0) | ~known, fits(AVA_OFFSET) | ~known
        rows.append((table, fit0, fit900))
    if all(fit0.all() for _, fit0, _ in rows):
        return 0.0
    if all(fit900.all() for _, _, fit900 in rows):
        return AVA_OFFSET
    neither = [(t, np.flatnonzero(~a & ~b)) for t, a, b in rows]
    culprits = [(t, int(idx[0])) for t, idx in neither if idx.size]
    if culprits:
        table, row = culprits[0]
        d = durations[str(table.video[row])]
        what = (
            f"fits neither offset 0 (0 <= t <= {d:.2f}) nor the AVA offset {AVA_OFFSET:g} "
            f"({AVA_OFFSET:g} <= t <= {AVA_OFFSET + d:.2f})"
        )
    else:
        # Every row fits one offset, but not all the same one: blame the minority.
        n0 = sum(int(fit0.sum()) for _, fit0, _ in rows)
        n900 = sum(int(fit900.sum()) for _, _, fit900 in rows)
        best, other, k = (0.0, AVA_OFFSET, 1) if n0 >= n900 else (AVA_OFFSET, 0.0, 2)
        chosen = [(t, fit0 if k == 1 else fit900) for t, fit0, fit900 in rows]
        table, row = next((t, int(np.flatnonzero(~fit)[0])) for t, fit in chosen if not fit.all())
        d = durations[str(table.video[row])]
        what = (
            f"fits offset {other:g} but the other rows fit offset {best:g} "
            f"({best:g} <= t <= {best + d:.2f})"
        )
    raise DataError(
        table.source,
        int(table.line[row]),
        f"timestamp {int(table.timestamp[row])} of video {str(table.video[row])!r} "
        f"({d:.2f} s long) {what}; set timestamp_offset in the dataset config",
    )
