"""The window reader: bank entries around each keyframe of a batch, as padded tensors.

For keyframe ``(video, t)`` the window holds the bank entries (actor rows) of the keyframes
of the same video with ``t - before <= timestamp <= t + after``, in (timestamp, actor row)
order. Because a video's actor rows are stored in timestamp order, the window is one
contiguous row range ``[actor_offset[k0], actor_offset[k1])``: the reader slices exactly
that range out of the bank (overlapping windows of one batch are merged into one read) and
never reads a whole video's bank. Only the small per-video index arrays (timestamps,
actor_offset, track: ~16 bytes per actor) are cached.

Options (papers differ, see each head's docstring): ``include_current`` keeps or drops the
current keyframe's own actors; ``max_per_second`` keeps at most that many entries of each
other second (LFB samples K per second), chosen evenly spaced over the second's actor rows
so the choice is deterministic. The current keyframe's entries are never subsampled.

Output (the bank contract, ``ActorBatch.bank``), L = max entries over the batch (>= 1):
``mask`` Bool[B, L], ``dt`` float32[B, L] (s), ``track`` int64[B, L] (-1 pad),
``current`` Bool[B, L], and the kind's arrays as float32 [B, L, ...].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from featurestore.banks import BankStore
from stages.train.config import WindowConfig


@dataclass
class WindowEntries:
    """The entries of one keyframe's window (E entries).

    Attributes:
        video: the video.  rows: int64 [E] actor rows in the video's bank.
        dt: float32 [E] entry timestamp - keyframe timestamp.  track: int64 [E].
        current: bool [E] the entry belongs to the keyframe itself.
        span: (a0, a1) the contiguous row range the rows fall in.
    """

    video: str
    rows: np.ndarray
    dt: np.ndarray
    track: np.ndarray
    current: np.ndarray
    span: tuple[int, int]


def _even_pick(n: int, m: int) -> np.ndarray:
    """m of n positions, evenly spaced, first and last included (n > m >= 1)."""
    if m == 1:
        return np.array([n // 2])
    return np.round(np.linspace(0, n - 1, m)).astype(np.int64)


def window_entries(
    video: str,
    timestamp: int,
    timestamps: np.ndarray,
    actor_offset: np.ndarray,
    track: np.ndarray,
    cfg: WindowConfig,
) -> WindowEntries:
    """The window of keyframe ``(video, timestamp)`` from the video's index arrays."""
    k0 = int(np.searchsorted(timestamps, timestamp - cfg.before, side="left"))
    k1 = int(np.searchsorted(timestamps, timestamp + cfg.after, side="right"))
    k1 = max(k0, k1)
    a0, a1 = int(actor_offset[k0]), int(actor_offset[k1])
    # Whole-array operations, no loop over the window's keyframes (a 60-s window has ~60).
    offsets = np.asarray(actor_offset[k0 : k1 + 1], dtype=np.int64)
    counts = offsets[1:] - offsets[:-1]
    rows_a = np.arange(a0, a1, dtype=np.int64)
    stamps_a = np.repeat(np.asarray(timestamps[k0:k1], dtype=np.int64), counts)
    current_a = stamps_a == timestamp
    if not cfg.include_current:
        keep = ~current_a
        rows_a, stamps_a, current_a = rows_a[keep], stamps_a[keep], current_a[keep]
    if cfg.max_per_second is not None and len(rows_a):
        # Timestamps may be finer than a second: cap each second, not each keyframe.
        rows_a, stamps_a, current_a = _cap_per_second(
            rows_a, stamps_a, current_a, cfg.max_per_second
        )
    return WindowEntries(
        video=video,
        rows=rows_a,
        dt=(stamps_a - timestamp).astype(np.float32),
        track=track[rows_a].astype(np.int64),
        current=current_a,
        span=(a0, a1),
    )


def _cap_per_second(
    r: np.ndarray, s: np.ndarray, c: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep at most ``m`` of each second's non-current entries (:func:`_even_pick` of
    their positions in order) and every current one; whole-array operations, no loop
    over the window's seconds."""
    second = np.floor(s).astype(np.int64)
    keep = c.copy()
    other = np.flatnonzero(~c)
    if len(other):
        _, group, counts = np.unique(second[other], return_inverse=True, return_counts=True)
        order = np.argsort(group, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(len(other), np.int64)
        rank[order] = np.arange(len(other)) - np.repeat(starts, counts)
        n = counts[group]
        if m == 1:
            picked = rank == n // 2
        else:  # the positions np.linspace(0, n - 1, m) rounds to, per second
            picks = np.round(
                np.arange(m, dtype=np.float64)[None, :] * ((counts - 1) / (m - 1))[:, None]
            )
            picks[:, -1] = counts - 1
            picked = (picks[group] == rank[:, None]).any(axis=1)
        keep[other[(n <= m) | picked]] = True
    return r[keep], s[keep], c[keep]


def pad_windows(
    windows: Sequence[WindowEntries], arrays: dict[str, list[np.ndarray]]
) -> dict[str, torch.Tensor]:
    """The contract's padded tensors for B windows; ``arrays[name][b]`` is [E_b, ...]."""
    b = len(windows)
    length = max([1, *(len(w.rows) for w in windows)])
    mask = torch.zeros(b, length, dtype=torch.bool)
    dt = torch.zeros(b, length, dtype=torch.float32)
    track = torch.full((b, length), -1, dtype=torch.int64)
    current = torch.zeros(b, length, dtype=torch.bool)
    for i, w in enumerate(windows):
        e = len(w.rows)
        mask[i, :e] = True
        dt[i, :e] = torch.from_numpy(w.dt)
        track[i, :e] = torch.from_numpy(w.track)
        current[i, :e] = torch.from_numpy(w.current)
    out = {"mask": mask, "dt": dt, "track": track, "current": current}
    for name, per_window in arrays.items():
        tail = next((a.shape[1:] for a in per_window if a.ndim >= 1), ())
        # Filled in numpy (fp16 -> fp32 on assignment, one pass, in this thread): a torch
        # slice assignment per window was the largest cost of a stage-2 step (issue 22).
        padded = np.zeros((b, length, *tail), dtype=np.float32)
        for i, value in enumerate(per_window):
            if len(value):
                padded[i, : len(value)] = value
        out[name] = torch.from_numpy(padded)
    return out


def _merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching row ranges merged (sorted)."""
    merged: list[tuple[int, int]] = []
    for a0, a1 in sorted(s for s in spans if s[1] > s[0]):
        if merged and a0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], a1))
        else:
            merged.append((a0, a1))
    return merged


class BankWindowReader:
    """Windows of a bank for batches of keyframes.

    ``preload=True`` reads the whole bank into RAM once (small banks, and the benchmark's
    comparison); by default every call reads only the rows of its windows from disk.
    """

    def __init__(self, bank: BankStore, window: WindowConfig, *, preload: bool = False) -> None:
        self.bank, self.window, self.preload = bank, window, preload
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        if preload:
            for video_id in bank.videos():
                self._cache[video_id] = bank.read_video(video_id)

    @property
    def arrays(self) -> dict[str, tuple[int, ...]]:
        return self.bank.arrays

    def entries(self, items: Sequence[tuple[str, int]]) -> list[WindowEntries]:
        out = []
        for video_id, t in items:
            ts, off, tr = self.bank.index(str(video_id))
            out.append(window_entries(str(video_id), int(t), ts, off, tr, self.window))
        return out

    def read(self, items: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
        """The padded window tensors of keyframes ``items`` = [(video, timestamp), ...]."""
        windows = self.entries(items)
        names = list(self.bank.arrays)
        arrays: dict[str, list[np.ndarray]] = {n: [] for n in names}
        if self.preload:
            for w in windows:
                for n in names:
                    arrays[n].append(self._cache[w.video][n][w.rows])
            return pad_windows(windows, arrays)
        by_video: dict[str, list[tuple[int, int]]] = {}
        for w in windows:
            if len(w.rows):
                by_video.setdefault(w.video, []).append(w.span)
        plan = [(v, a0, a1) for v, spans in by_video.items() for a0, a1 in _merged_spans(spans)]
        values = self.bank.read_rows(plan)
        for w in windows:
            if not len(w.rows):
                for n in names:
                    arrays[n].append(np.zeros((0, *self.bank.arrays[n]), np.float16))
                continue
            a0, a1 = w.span
            j = next(
                j for j, (v, s0, s1) in enumerate(plan) if v == w.video and s0 <= a0 and a1 <= s1
            )
            start = plan[j][1]
            for n in names:
                arrays[n].append(values[j][n][w.rows - start])
        return pad_windows(windows, arrays)
