"""``BankStore``: a Zarr v3 store of long-term feature banks, rows aligned with a feature store.

A bank holds, for every actor row of a feature store split, what a trained stage-1 head
computed for that actor (LFB features, ACAR first-order maps, AMCR interaction/movement
features, ...). Layout (one group per video, written by one writer, complete marker last)::

    <bank>.zarr/zarr.json            attrs["bankflow_bank"]: kind, arrays {name: row shape},
                                     provenance, expected_videos, complete
    <bank>.zarr/videos/<video_id>/   timestamps int32 [K], actor_offset int64 [K+1],
                                     track int32 [A], <kind arrays> float16 [A, ...];
                                     attrs: complete, n_keyframes, n_actors, video_key

``timestamps``/``actor_offset``/``track`` are copies of the feature store's, so actor row
``a`` of a video here is actor row ``a`` there. The kind's arrays are chunked along rows
(~1 MiB chunks: a bank is read as row windows around a keyframe, so a window is one or two
contiguous chunk reads, and zarr's per-chunk cost argues against small chunks).
``video_key`` lets a later dump reuse a video whose inputs did not change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import zarr
import zarr.api.asynchronous
import zarr.errors
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from featurestore.backend import (
    list_keys,
    local_path,
    naming_failed_writes,
    normalize_url,
    open_zarr_store,
)
from featurestore.chunks import bad_chunks, chunk_codecs, read_checked
from featurestore.errors import StoreError, where
from featurestore.layout import VIDEOS, check_video_id, chunk_rows
from featurestore.nodes import open_videos_group, video_group_states
from featurestore.rawread import RawArray, RowRead, raw_array
from featurestore.rawread import read_rows as read_raw_rows

BANK_KEY = "bankflow_bank"
BANK_VERSION = 1
BANK_DTYPE = np.dtype("float16")
INDEX_ARRAYS = {"timestamps": "int32", "actor_offset": "int64", "track": "int32"}
DEFAULT_BANK_CHUNK_BYTES = 1 << 20


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _gather(coros: list[Any]) -> list[np.ndarray]:
    async def run() -> list[Any]:
        return list(await asyncio.gather(*coros))

    return [np.asarray(v) for v in sync(run())] if coros else []


class BankStore:
    """One split's bank. Build with ``BankStore.create``; read with ``BankStore.open``.

    Attributes:
        kind: the bank kind (``lfb``, ``acfb``, ``hrafb``, ``memory``, ``identity``).
        arrays: name -> per-row shape of the kind's arrays (``{"features": (D,)}``).
    """

    def __init__(self, url: str, zstore: Any, mode: Literal["r", "a"], attrs: dict) -> None:
        self.url, self.mode, self._zstore, self._attrs = url, mode, zstore, attrs
        self.kind: str = attrs["kind"]
        self.arrays: dict[str, tuple[int, ...]] = {
            name: tuple(int(s) for s in shape) for name, shape in attrs["arrays"].items()
        }
        self._root = zarr.open_group(zstore, mode="r" if mode == "r" else "r+")
        # None while the bank is being created (root metadata written, videos group not yet).
        self._videos_node = open_videos_group(self._root, create=mode == "a")
        self._handles: dict[tuple[str, str], zarr.Array] = {}
        self._raws: dict[tuple[str, str], RawArray | None] = {}
        self._index: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def _videos(self) -> zarr.Group | None:
        if self._videos_node is None:
            self._videos_node = open_videos_group(self._root, create=self.mode == "a")
        return self._videos_node

    def _video_group(self, video_id: str) -> zarr.Group:
        try:
            if self._videos is None:
                raise KeyError(video_id)
            return cast(zarr.Group, self._videos[video_id])
        except KeyError:
            raise StoreError(f"{where(self.url, video_id)}: no such video in the bank") from None

    # ----------------------------------------------------------------- create / open

    @classmethod
    def create(
        cls,
        url: str | os.PathLike,
        *,
        kind: str,
        arrays: Mapping[str, Sequence[int]],
        provenance: dict,
        expected_videos: Sequence[str] | None = None,
        exist_ok: bool = False,
        chunk_target_bytes: int = DEFAULT_BANK_CHUNK_BYTES,
    ) -> BankStore:
        """Create an empty bank; with ``exist_ok`` reopen one of the same kind and arrays
        for appending (a resumed dump). ``arrays``: name -> per-row shape."""
        name = normalize_url(url)
        if not arrays:
            raise StoreError(f"{where(name)}: a bank needs at least one array")
        clash = sorted(set(arrays) & set(INDEX_ARRAYS))
        if clash:
            raise StoreError(f"{where(name)}: bank array names {clash} are reserved")
        attrs: dict[str, Any] = {
            "version": BANK_VERSION,
            "kind": kind,
            "arrays": {k: [int(s) for s in v] for k, v in arrays.items()},
            "provenance": dict(provenance),
            "expected_videos": None if expected_videos is None else list(expected_videos),
            "chunk_target_bytes": int(chunk_target_bytes),
            "complete": False,
            "created_at": _now(),
        }
        zstore = open_zarr_store(url, read_only=False)
        try:
            zarr.open_group(zstore, mode="r")
            exists = True
        except (FileNotFoundError, zarr.errors.BaseZarrError):
            exists = False
        if exists:
            if not exist_ok:
                raise StoreError(f"{where(name)}: already exists (pass exist_ok=True to resume)")
            bank = cls.open(url, mode="a", allow_incomplete=True)
            if bank.kind != kind or bank.arrays != {
                k: tuple(int(s) for s in v) for k, v in arrays.items()
            }:
                raise StoreError(
                    f"{where(name)}: holds a {bank.kind!r} bank with arrays {bank.arrays}, "
                    f"expected a {kind!r} bank with {dict(arrays)}; delete it to start over"
                )
            return bank
        path = local_path(url)
        if path is not None and path.is_dir() and any(path.iterdir()):
            raise StoreError(f"{where(name)}: directory exists and is not a zarr store")
        root = zarr.open_group(zstore, mode="w-", attributes={BANK_KEY: attrs})
        root.create_group(VIDEOS)
        return cls(name, zstore, "a", attrs)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike,
        *,
        mode: Literal["r", "a"] = "r",
        allow_incomplete: bool = False,
    ) -> BankStore:
        """Open a bank; a bank not finalized is refused unless ``allow_incomplete``."""
        name = normalize_url(url)
        zstore = open_zarr_store(url, read_only=mode == "r")
        not_bank = f"{where(name)}: not a bankflow bank (no zarr.json with {BANK_KEY} attributes)"
        try:
            root = zarr.open_group(zstore, mode="r")
        except (FileNotFoundError, zarr.errors.BaseZarrError) as exc:
            raise StoreError(not_bank) from exc
        attrs = root.attrs.asdict().get(BANK_KEY)
        if not isinstance(attrs, dict) or "kind" not in attrs:
            raise StoreError(not_bank)
        if attrs.get("version") != BANK_VERSION:
            raise StoreError(
                f"{where(name)}: bank version {attrs.get('version')!r}, this bankflow reads "
                f"version {BANK_VERSION}"
            )
        bank = cls(name, zstore, mode, attrs)
        if not bank.complete and not allow_incomplete:
            states = bank.video_states()
            unfinished = sorted(v for v, done in states.items() if not done)
            raise StoreError(
                f"{where(name)}: bank is incomplete (not finalized; {sum(states.values())} "
                f"complete videos, unfinished {unfinished}); rerun the dump"
            )
        return bank

    # ----------------------------------------------------------------- properties

    @property
    def complete(self) -> bool:
        return bool(self._attrs.get("complete", False))

    @property
    def provenance(self) -> dict:
        return dict(self._attrs.get("provenance", {}))

    @property
    def expected_videos(self) -> list[str] | None:
        ev = self._attrs.get("expected_videos")
        return None if ev is None else list(ev)

    def video_states(self) -> dict[str, bool]:
        """Every video group present -> its ``complete`` attribute."""
        return video_group_states(self._zstore)

    def videos(self) -> list[str]:
        """Sorted ids of the complete videos."""
        return sorted(v for v, done in self.video_states().items() if done)

    def video_attrs(self, video_id: str) -> dict:
        return self._video_group(video_id).attrs.asdict()

    def is_complete_video(self, video_id: str) -> bool:
        try:
            group = zarr.open_group(self._zstore, path=f"{VIDEOS}/{video_id}", mode="r")
        except (FileNotFoundError, zarr.errors.BaseZarrError):
            return False
        return bool(group.attrs.get("complete", False))

    def video_key(self, video_id: str) -> str | None:
        """The per-video key recorded when the video was written (None if incomplete)."""
        if not self.is_complete_video(video_id):
            return None
        return self.video_attrs(video_id).get("video_key")

    # ----------------------------------------------------------------- writing

    def _require_writable(self, video_id: str | None = None) -> None:
        if self.mode != "a":
            raise StoreError(f"{where(self.url, video_id)}: bank is open read-only")
        if self.complete:
            raise StoreError(f"{where(self.url, video_id)}: bank is finalized; never modified")

    def write_video(
        self,
        video_id: str,
        *,
        timestamps: np.ndarray,
        actor_offset: np.ndarray,
        track: np.ndarray,
        arrays: dict[str, np.ndarray],
        video_key: str,
        provenance: dict | None = None,
    ) -> None:
        """Write one video's rows (replacing an incomplete group), marking it complete last.

        ``arrays``: the kind's arrays, each [A, *row shape] (cast to float16), A =
        ``actor_offset[-1]``.
        """
        check_video_id(video_id)
        self._require_writable(video_id)
        timestamps = np.asarray(timestamps, dtype=np.int32)
        actor_offset = np.asarray(actor_offset, dtype=np.int64)
        track = np.asarray(track, dtype=np.int32)
        n_kf = len(timestamps)
        if actor_offset.shape != (n_kf + 1,) or actor_offset[0] != 0:
            raise StoreError(
                f"{where(self.url, video_id)}: actor_offset must be [K+1] = [{n_kf + 1}] "
                f"starting at 0, got shape {actor_offset.shape}"
            )
        n_act = int(actor_offset[-1])
        if track.shape != (n_act,):
            raise StoreError(
                f"{where(self.url, video_id, 'track')}: expected shape ({n_act},), got {track.shape}"
            )
        if set(arrays) != set(self.arrays):
            raise StoreError(
                f"{where(self.url, video_id)}: {self.kind!r} bank arrays are {sorted(self.arrays)}, "
                f"got {sorted(arrays)}"
            )
        data: dict[str, np.ndarray] = dict(
            timestamps=timestamps, actor_offset=actor_offset, track=track
        )
        for name, value in arrays.items():
            expected = (n_act, *self.arrays[name])
            if tuple(value.shape) != expected:
                raise StoreError(
                    f"{where(self.url, video_id, name)}: expected shape {expected}, "
                    f"got {tuple(value.shape)}"
                )
            if not np.all(np.isfinite(value)):
                raise StoreError(f"{where(self.url, video_id, name)}: non-finite values")
            data[name] = np.asarray(value, dtype=BANK_DTYPE)
        videos = self._videos
        assert videos is not None  # mode "a" creates it
        if video_id in videos:
            if self.is_complete_video(video_id):
                raise StoreError(f"{where(self.url, video_id)}: already complete in the bank")
            del videos[video_id]
        self._forget(video_id)
        group = videos.create_group(video_id, attributes={"complete": False})
        target = int(self._attrs.get("chunk_target_bytes", DEFAULT_BANK_CHUNK_BYTES))

        async def create_and_fill(name: str, value: np.ndarray) -> None:
            rows = chunk_rows(value.shape, value.dtype.itemsize, target)
            arr = await zarr.api.asynchronous.create_array(
                self._zstore,
                name=f"{VIDEOS}/{video_id}/{name}",
                shape=value.shape,
                dtype=value.dtype,
                chunks=(rows, *value.shape[1:]),
                fill_value=0,
                compressors=chunk_codecs("none"),
                config={"write_empty_chunks": True},
            )
            if value.size:
                await arr.setitem(Ellipsis, value)

        async def write_all() -> None:
            await asyncio.gather(*(create_and_fill(n, v) for n, v in data.items()))

        with naming_failed_writes(f"{self.url}/{VIDEOS}/{video_id}"):
            sync(write_all())
        group.update_attributes(
            {
                "complete": True,
                "n_keyframes": n_kf,
                "n_actors": n_act,
                "video_key": video_key,
                "provenance": dict(provenance or {}),
                "written_at": _now(),
            }
        )

    def copy_video(self, source: BankStore, video_id: str) -> None:
        """Copy a complete video group of another bank of the same kind (an incremental dump)."""
        if source.kind != self.kind or source.arrays != self.arrays:
            raise StoreError(
                f"{where(self.url, video_id)}: cannot copy from {source.url} "
                f"({source.kind} {source.arrays} != {self.kind} {self.arrays})"
            )
        attrs = source.video_attrs(video_id)
        if not attrs.get("complete"):
            raise StoreError(f"{where(source.url, video_id)}: incomplete; cannot copy")
        names = [*INDEX_ARRAYS, *self.arrays]
        values = dict(zip(names, source._read_whole(video_id, names), strict=True))
        self.write_video(
            video_id,
            timestamps=values.pop("timestamps"),
            actor_offset=values.pop("actor_offset"),
            track=values.pop("track"),
            arrays=values,
            video_key=attrs["video_key"],
            provenance={**attrs.get("provenance", {}), "copied_from": source.url},
        )

    def finalize(self, expected_videos: Sequence[str] | None = None) -> None:
        """Mark the bank complete after checking every expected video is complete."""
        self._require_writable()
        expected = self.expected_videos if expected_videos is None else list(expected_videos)
        states = self.video_states()
        missing = sorted(set(expected or ()) - {v for v, done in states.items() if done})
        incomplete = sorted(v for v, done in states.items() if not done)
        if missing or incomplete:
            raise StoreError(
                f"{where(self.url)}: cannot finalize: missing videos {missing}, "
                f"incomplete videos {incomplete}"
            )
        attrs = {**self._attrs, "complete": True, "finalized_at": _now(), "n_videos": len(states)}
        self._root.attrs.update({BANK_KEY: attrs})
        self._attrs = attrs

    # ----------------------------------------------------------------- reading

    def _forget(self, video_id: str) -> None:
        self._index.pop(video_id, None)
        for key in [k for k in self._handles if k[0] == video_id]:
            del self._handles[key]
        for key in [k for k in self._raws if k[0] == video_id]:
            del self._raws[key]

    def array(self, video_id: str, name: str) -> zarr.Array:
        key = (video_id, name)
        if key not in self._handles:
            try:
                self._handles[key] = cast(zarr.Array, self._video_group(video_id)[name])
            except (KeyError, StoreError):
                raise StoreError(
                    f"{where(self.url, video_id, name)}: no such video/array in the bank"
                ) from None
        return self._handles[key]

    def _read(self, video_id: str, name: str, selection: Any) -> Any:
        """A coroutine reading ``name[selection]``; a corrupt chunk raises StoreError."""
        arr = self.array(video_id, name).async_array
        return read_checked(self.url, video_id, name, arr, selection)

    def _raw(self, video_id: str, name: str) -> RawArray | None:
        """How to read ``name`` of ``video_id`` as files (featurestore.rawread); None:
        through zarr (cached)."""
        key = (video_id, name)
        if key not in self._raws:
            self._raws[key] = raw_array(self._zstore, self.array(video_id, name))
        return self._raws[key]

    def _read_whole(self, video_id: str, names: Sequence[str]) -> list[np.ndarray]:
        return _gather([self._read(video_id, n, slice(None)) for n in names])

    def index(self, video_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(timestamps int32 [K], actor_offset int64 [K+1], track int32 [A]), cached.

        These are small (~16 bytes per actor); the kind's arrays are never cached.
        """
        if video_id not in self._index:
            if not self.is_complete_video(video_id):
                raise StoreError(
                    f"{where(self.url, video_id)}: video is not (completely) in the bank"
                )
            ts, off, tr = self._read_whole(video_id, list(INDEX_ARRAYS))
            self._index[video_id] = (ts, off, tr)
        return self._index[video_id]

    def read_rows(
        self, ranges: Sequence[tuple[str, int, int]], names: Sequence[str] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """The kind's arrays of actor rows ``[a0, a1)`` of each ``(video, a0, a1)``, float16.

        All slices are read in one concurrent call; only the chunks the rows fall in are read.
        """
        names = list(self.arrays) if names is None else list(names)
        raw_reads: list[tuple[int, RowRead]] = []
        zarr_reads: list[tuple[int, Any]] = []
        for i, (video_id, a0, a1) in enumerate(ranges):
            n_act = int(self.index(video_id)[1][-1])
            if not 0 <= a0 <= a1 <= n_act:
                raise StoreError(
                    f"{where(self.url, video_id)}: rows [{a0}, {a1}) outside [0, {n_act})"
                )
            for j, n in enumerate(names):
                raw = self._raw(video_id, n)
                at = i * len(names) + j
                if raw is not None:  # local plain chunks: read as files, checksum checked
                    raw_reads.append((at, RowRead(self.url, video_id, n, raw, a0, a1)))
                else:
                    zarr_reads.append((at, self._read(video_id, n, slice(a0, a1))))
        flat: list[Any] = [None] * (len(ranges) * len(names))
        for (at, _), value in zip(raw_reads, read_raw_rows([r for _, r in raw_reads]), strict=True):
            flat[at] = value
        for (at, _), value in zip(zarr_reads, _gather([c for _, c in zarr_reads]), strict=True):
            flat[at] = value
        values = iter(flat)
        return [{n: next(values) for n in names} for _ in ranges]

    def read_video(self, video_id: str) -> dict[str, np.ndarray]:
        """Every array of one video (tests, export; readers use ``read_rows``)."""
        names = [*INDEX_ARRAYS, *self.arrays]
        return dict(zip(names, self._read_whole(video_id, names), strict=True))

    def verify(self, *, quick: bool = False) -> list[str]:
        """Problems found (empty: OK): completeness, shapes, dtypes, CSR, missing chunks and,
        unless ``quick``, chunks that do not decode or fail their checksum."""
        problems: list[str] = []
        states = self.video_states()
        missing = sorted(set(self.expected_videos or ()) - set(states))
        if missing:
            problems.append(f"missing videos {missing}")
        for video_id, done in sorted(states.items()):
            if not done:
                problems.append(f"video {video_id!r}: incomplete (a killed writer?)")
                continue
            attrs = self.video_attrs(video_id)
            n_kf, n_act = int(attrs["n_keyframes"]), int(attrs["n_actors"])
            shapes: dict[str, tuple[int, ...]] = {
                "timestamps": (n_kf,),
                "actor_offset": (n_kf + 1,),
                "track": (n_act,),
            }
            shapes.update({n: (n_act, *s) for n, s in self.arrays.items()})
            present = list_keys(self._zstore, f"{VIDEOS}/{video_id}/")
            index_ok = True
            for name, shape in shapes.items():
                arr = self.array(video_id, name)
                dtype = INDEX_ARRAYS.get(name, BANK_DTYPE)
                if arr.shape != shape or arr.dtype != np.dtype(dtype):
                    problems.append(
                        f"video {video_id!r}: {name} is {arr.dtype}{arr.shape}, "
                        f"expected {np.dtype(dtype)}{shape}"
                    )
                    continue
                grid = [-(-s // c) for s, c in zip(arr.shape, arr.chunks, strict=True)]
                n_missing = sum(
                    f"{arr.path}/{arr.metadata.encode_chunk_key(c)}" not in present
                    for c in np.ndindex(*grid)
                )
                if n_missing:
                    problems.append(f"video {video_id!r}: {name} misses {n_missing} chunks")
                elif not quick:
                    corrupt = bad_chunks(arr)[1]
                    problems += [f"video {video_id!r}: {name} chunk {c}" for c in corrupt[:5]]
                    if name in INDEX_ARRAYS and corrupt:
                        index_ok = False
            if not index_ok:
                continue
            _, off, _ = self.index(video_id)
            if off[-1] != n_act or np.any(np.diff(off) < 0):
                problems.append(f"video {video_id!r}: actor_offset is not CSR over {n_act} rows")
        if not self.complete:
            problems.append("bank is not finalized")
        return problems


def feature_video_digest(zstore: Any, video_id: str) -> str:
    """sha256 over the stored objects of one video of a feature store (array metadata and
    chunk bytes; not the group attributes, which hold write times).

    Two stores give the same digest for a video exactly when its stored features are the
    same bytes: the dump's per-video key uses it to decide what to re-dump.
    """
    keys = sorted(
        k for k in list_keys(zstore, f"{VIDEOS}/{video_id}/") if k.count("/") >= 3
    )  # skip the group's own zarr.json (videos/<id>/zarr.json)
    if not keys:
        raise StoreError(f"video {video_id!r}: nothing stored under {VIDEOS}/{video_id}/")
    proto = default_buffer_prototype()

    async def read_all() -> list[Any]:
        return list(await asyncio.gather(*(zstore.get(k, prototype=proto) for k in keys)))

    h = hashlib.sha256()
    for key, buf in zip(keys, sync(read_all()), strict=True):
        h.update(key.encode())
        h.update(b"\0")
        h.update(b"" if buf is None else buf.to_bytes())
    return h.hexdigest()
