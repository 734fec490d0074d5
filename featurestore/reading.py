"""Reading a feature store: whole videos, time windows, keyframes, batches, actor rows.

Per video, the small arrays (timestamps, actor_offset, boxes, scores, track: ~24 bytes per
actor, ~16 MB for all of AVA) are read once and cached in memory; the large ones (context,
pooled, roi, roi_t) are read slice by slice. A local store in bankflow's plain layout is
read as files, chunk by chunk, checksum checked (``featurestore.rawread``: no zarr call on
the hot path); other stores (zstd, remote) through zarr, where every call from synchronous
code hops to zarr's event-loop thread (~1 ms here), so all slices of a batch are issued as
one concurrent call instead of one call per array per keyframe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from typing import Any, cast

import numpy as np
import zarr
from zarr.core.sync import sync

from featurestore.chunks import DECODE_ERRORS, corrupt_chunk_error, read_checked
from featurestore.errors import StoreError, where
from featurestore.features import KeyframeFeatures, VideoFeatures
from featurestore.rawread import RawArray, RowRead, raw_array, read_rows
from featurestore.schema import StoreSchema

SMALL_ARRAYS = ("timestamps", "actor_offset", "boxes", "scores", "track")
# What ``read_keyframes`` returns as the context of a keyframe whose context was not asked for.
_NOT_READ = np.zeros(0, dtype=np.float16)


class KeyframeNotFoundError(StoreError, KeyError):
    """A keyframe timestamp (or video) that the store does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StoreReading:
    """Read methods of ``FeatureStore`` (a mixin: the store provides the attributes below)."""

    url: str
    schema: StoreSchema
    _videos: zarr.Group | None  # None while the store is being created
    _arrays: dict[tuple[str, str], zarr.Array]
    _small: dict[str, dict[str, np.ndarray]]
    _raws: dict[tuple[str, str], RawArray | None]
    _zstore: Any
    videos: Callable[..., list[str]]  # FeatureStore.videos(complete_only=True)

    def _forget(self, video_id: str) -> None:
        self._small.pop(video_id, None)
        for key in [k for k in self._arrays if k[0] == video_id]:
            del self._arrays[key]
        for key in [k for k in self._raws if k[0] == video_id]:
            del self._raws[key]

    def _video_group(self, video_id: str) -> zarr.Group:
        try:
            if self._videos is None:
                raise KeyError(video_id)
            return cast(zarr.Group, self._videos[video_id])  # videos/<id> is a group
        except KeyError as exc:
            raise KeyframeNotFoundError(
                f"{where(self.url, video_id)}: no such video in the store"
            ) from exc

    def array(self, video_id: str, name: str) -> zarr.Array:
        """The (cached) zarr array ``name`` of ``video_id``."""
        key = (video_id, name)
        if key not in self._arrays:
            group = self._video_group(video_id)
            try:
                self._arrays[key] = cast(zarr.Array, group[name])  # an array of the video
            except KeyError as exc:
                raise StoreError(f"{where(self.url, video_id, name)}: array is missing") from exc
        return self._arrays[key]

    def _read(self, video_id: str, name: str, selection: Any) -> Any:
        """A coroutine reading ``name[selection]``; a corrupt chunk raises StoreError."""
        arr = self.array(video_id, name).async_array
        return read_checked(self.url, video_id, name, arr, selection)

    def _raw(self, video_id: str, name: str) -> RawArray | None:
        """How to read ``name`` of ``video_id`` as files; None: through zarr (cached)."""
        key = (video_id, name)
        if key not in self._raws:
            self._raws[key] = raw_array(self._zstore, self.array(video_id, name))
        return self._raws[key]

    def _read_slices(self, reads: Sequence[tuple[str, str, int, int]]) -> list[np.ndarray]:
        """Rows ``[start, stop)`` of each ``(video_id, name, start, stop)``, in order: plain
        local chunks as files (:mod:`featurestore.rawread`), the rest in one zarr call."""
        raw_reads: list[tuple[int, RowRead]] = []
        zarr_reads: list[tuple[int, Any]] = []
        for i, (video_id, name, start, stop) in enumerate(reads):
            raw = self._raw(video_id, name)
            if raw is not None:
                raw_reads.append((i, RowRead(self.url, video_id, name, raw, start, stop)))
            else:
                zarr_reads.append((i, self._read(video_id, name, slice(start, stop))))
        out: list[Any] = [None] * len(reads)
        for (i, _), value in zip(raw_reads, read_rows([r for _, r in raw_reads]), strict=True):
            out[i] = value
        for (i, _), value in zip(zarr_reads, _gather([c for _, c in zarr_reads]), strict=True):
            out[i] = value
        return out

    def _small_arrays(self, video_id: str) -> dict[str, np.ndarray]:
        if video_id not in self._small:
            values = _gather([self._read(video_id, name, slice(None)) for name in SMALL_ARRAYS])
            self._small[video_id] = dict(zip(SMALL_ARRAYS, values, strict=True))
        return self._small[video_id]

    def index(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps int32 [K], actor_offset int64 [K+1]) of a video, cached."""
        small = self._small_arrays(video_id)
        return small["timestamps"], small["actor_offset"]

    def _large_names(self) -> list[str]:
        names = ["pooled"]
        if self.schema.roi_shape is not None:
            names.append("roi")
        if self.schema.roi_t_shape is not None:
            names.append("roi_t")
        return names

    def _read_rows(self, video_id: str, k0: int, k1: int) -> VideoFeatures:
        """Keyframe rows [k0, k1) and their actors, reading only those slices."""
        small = self._small_arrays(video_id)
        offsets = small["actor_offset"]
        a0, a1 = int(offsets[k0]), int(offsets[k1])
        names = ["context", *self._large_names()]
        spans = [(k0, k1)] + [(a0, a1)] * (len(names) - 1)
        values = self._read_slices(
            [(video_id, n, *span) for n, span in zip(names, spans, strict=True)]
        )
        return VideoFeatures(
            timestamps=small["timestamps"][k0:k1].copy(),
            actor_offset=offsets[k0 : k1 + 1] - offsets[k0],
            boxes=small["boxes"][a0:a1].copy(),
            scores=small["scores"][a0:a1].copy(),
            track=small["track"][a0:a1].copy(),
            **dict(zip(names, values, strict=True)),
        )

    def read_video(self, video_id: str) -> VideoFeatures:
        """All arrays of one video."""
        timestamps, _ = self.index(video_id)
        return self._read_rows(video_id, 0, len(timestamps))

    def read_window(self, video_id: str, t_start: float, t_end: float) -> VideoFeatures:
        """Keyframes with ``t_start <= timestamp <= t_end`` (seconds), possibly none."""
        timestamps, _ = self.index(video_id)
        k0 = int(np.searchsorted(timestamps, t_start, side="left"))
        k1 = int(np.searchsorted(timestamps, t_end, side="right"))
        return self._read_rows(video_id, k0, max(k0, k1))

    def keyframe_row(self, video_id: str, timestamp: int) -> int:
        """Row of ``timestamp`` in the video's arrays; KeyframeNotFoundError if absent."""
        timestamps, _ = self.index(video_id)
        row = int(np.searchsorted(timestamps, timestamp))
        if row >= len(timestamps) or timestamps[row] != timestamp:
            span = f", {timestamps[0]}..{timestamps[-1]}" if len(timestamps) else ""
            raise KeyframeNotFoundError(
                f"{where(self.url, video_id)}: no keyframe at timestamp {timestamp} "
                f"(stored: {len(timestamps)} keyframes{span})"
            )
        return row

    def read_keyframe(self, video_id: str, timestamp: int) -> KeyframeFeatures:
        """One keyframe's context map and actors."""
        row = self.keyframe_row(video_id, timestamp)
        return self._read_rows(video_id, row, row + 1).keyframe(video_id, 0)

    def _array_names(self, arrays: Collection[str] | None) -> list[str]:
        """The arrays a read fetches: ``arrays`` (pooled always), else every stored one."""
        names = ["context", *self._large_names()]
        if arrays is not None:
            unknown = set(arrays) - {"context", "pooled", "roi", "roi_t"}
            if unknown:
                raise ValueError(
                    f"{self.url}: unknown feature arrays {sorted(unknown)}; expected a subset "
                    "of context, pooled, roi, roi_t"
                )
            names = [n for n in names if n in arrays or n == "pooled"]
        return names

    def read_keyframes(
        self, items: Sequence[tuple[str, int]], arrays: Collection[str] | None = None
    ) -> list[KeyframeFeatures]:
        """Many ``(video_id, timestamp)`` keyframes (a training batch) in one concurrent read.

        ``arrays`` names the large arrays to read (``context``, ``pooled``, ``roi``,
        ``roi_t``; default: every one the store has). A head that never looks at the
        context map should not pay for reading it: ``pooled`` is always read (it is small
        and counts the actors); an unread ``context`` comes back as an empty
        ``[0]`` array and an unread ``roi``/``roi_t`` as None.

        Returns them in the order given; raises KeyframeNotFoundError for an absent one.
        """
        names = self._array_names(arrays)
        plan: list[tuple[str, int, int, int]] = []
        reads: list[tuple[str, str, int, int]] = []
        for video_id, timestamp in items:
            row = self.keyframe_row(video_id, timestamp)
            offsets = self._small_arrays(video_id)["actor_offset"]
            a0, a1 = int(offsets[row]), int(offsets[row + 1])
            plan.append((video_id, row, a0, a1))
            for name in names:
                span = (row, row + 1) if name == "context" else (a0, a1)
                reads.append((video_id, name, *span))
        values = iter(self._read_slices(reads))
        out = []
        for video_id, row, a0, a1 in plan:
            large = {name: next(values) for name in names}
            small = self._small_arrays(video_id)
            context = large.pop("context")[0] if "context" in large else _NOT_READ
            out.append(
                KeyframeFeatures(
                    video_id=video_id,
                    timestamp=int(small["timestamps"][row]),
                    context=context,
                    boxes=small["boxes"][a0:a1].copy(),
                    scores=small["scores"][a0:a1].copy(),
                    track=small["track"][a0:a1].copy(),
                    **large,
                )
            )
        return out

    def read_keyframes_by_video(
        self, items: Sequence[tuple[str, int]], arrays: Collection[str] | None = None
    ) -> list[KeyframeFeatures]:
        """What :meth:`read_keyframes` returns, read one video at a time: each video's
        keyframe rows ``[first, last]`` of ``items`` as one slice per array (preloading a
        split: a few large reads instead of one per keyframe and array, and only one
        video's chunks in flight, so the memory held is the result's, not every chunk's).

        The keyframes of a video share its arrays (views of one read per array).
        """
        names = self._array_names(arrays)
        by_video: dict[str, list[int]] = {}
        for i, (video_id, _) in enumerate(items):
            by_video.setdefault(video_id, []).append(i)
        out: list[Any] = [None] * len(items)
        for video_id, positions in by_video.items():
            small = self._small_arrays(video_id)
            offsets, stamps = small["actor_offset"], small["timestamps"]
            wanted = np.asarray([items[i][1] for i in positions], dtype=np.int64)
            found = np.searchsorted(stamps, wanted)
            clipped = np.minimum(found, max(len(stamps) - 1, 0))
            bad = (found >= len(stamps)) | (stamps[clipped] != wanted if len(stamps) else True)
            if bad.any():  # the error keyframe_row gives
                self.keyframe_row(video_id, int(wanted[np.argmax(bad)]))
            rows = dict(zip(positions, found.tolist(), strict=True))
            k0, k1 = int(found.min()), int(found.max()) + 1
            a0, a1 = int(offsets[k0]), int(offsets[k1])
            spans = [(k0, k1) if n == "context" else (a0, a1) for n in names]
            values = self._read_slices(
                [(video_id, n, *span) for n, span in zip(names, spans, strict=True)]
            )
            large_all = dict(zip(names, values, strict=True))
            for i in positions:
                row = rows[i]
                r0, r1 = int(offsets[row]), int(offsets[row + 1])
                large = {
                    n: v[row - k0 : row - k0 + 1] if n == "context" else v[r0 - a0 : r1 - a0]
                    for n, v in large_all.items()
                }
                context = large.pop("context")[0] if "context" in large else _NOT_READ
                out[i] = KeyframeFeatures(
                    video_id=video_id,
                    timestamp=int(small["timestamps"][row]),
                    context=context,
                    boxes=small["boxes"][r0:r1].copy(),
                    scores=small["scores"][r0:r1].copy(),
                    track=small["track"][r0:r1].copy(),
                    **large,
                )
        return out

    def read_pooled(self, video_id: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Pooled features [len(rows), C] of actor rows (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        n_actors = int(self.index(video_id)[1][-1])
        if rows.size and (rows.min() < 0 or rows.max() >= n_actors):
            raise StoreError(
                f"{where(self.url, video_id, 'pooled')}: actor rows must be in [0, {n_actors}), "
                f"got {rows.min()}..{rows.max()}"
            )
        arr = self.array(video_id, "pooled")
        if rows.size == 0:
            return np.zeros((0, self.schema.pooled_dim), dtype=arr.dtype)
        unique, inverse = np.unique(rows, return_inverse=True)
        # An orthogonal selection decodes each touched chunk once, whatever the row order.
        try:
            values = cast(np.ndarray, arr.get_orthogonal_selection((unique,)))
        except DECODE_ERRORS as exc:
            raise corrupt_chunk_error(self.url, video_id, "pooled", arr, unique, exc) from None
        return values[inverse.reshape(-1)]

    def actor_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every actor of every complete video: (video id str [N], keyframe row [N], actor row [N]).

        Rows are within the video's arrays; videos in sorted order, actors in stored order.
        """
        vids, kf_rows, actor_rows = [], [], []
        for video_id in self.videos():
            _, offsets = self.index(video_id)
            counts = np.diff(offsets)
            vids.append(np.full(int(offsets[-1]), video_id, dtype=object))
            kf_rows.append(np.repeat(np.arange(len(counts), dtype=np.int64), counts))
            actor_rows.append(np.arange(int(offsets[-1]), dtype=np.int64))
        if not vids:
            return np.zeros(0, dtype=str), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (
            np.concatenate(vids).astype(str),
            np.concatenate(kf_rows),
            np.concatenate(actor_rows),
        )


def _gather(coros: list[Any]) -> list[np.ndarray]:
    """Run zarr reads concurrently on zarr's event loop; numpy arrays in input order."""

    async def run() -> list[Any]:
        return list(await asyncio.gather(*coros))

    return [np.asarray(v) for v in sync(run())] if coros else []
