"""``FeatureStore``: a Zarr v3 store of per-video backbone features, written once per video.

Layout (one group per video, written by exactly one writer)::

    <store>.zarr/zarr.json          attrs["bankflow"]: schema, provenance, complete, ...
    <store>.zarr/videos/<video_id>/ timestamps, actor_offset, context, boxes, scores, track,
                                    pooled, [roi], [roi_t]; attrs: complete, counts, provenance
    <store>.zarr/locks/<video_id>.json   claims of concurrent writers (see ``claims``)

Chunking and compression: see ``featurestore.layout``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
import zarr.api.asynchronous
import zarr.errors
from zarr.core.sync import sync

from featurestore.backend import (
    LockFiles,
    local_path,
    naming_failed_writes,
    normalize_url,
    open_zarr_store,
    store_nbytes,
)
from featurestore.chunks import chunk_codecs
from featurestore.claims import DEFAULT_TTL_S, Claim, try_claim
from featurestore.errors import StoreError, where
from featurestore.features import (
    ARRAY_DTYPES,
    VideoFeatures,
    expected_shapes,
)
from featurestore.layout import (
    COMPRESSIONS,
    DEFAULT_CHUNK_TARGET_BYTES,
    ROOT_KEY,
    VIDEOS,
    check_video_id,
    chunk_rows,
)
from featurestore.nodes import open_videos_group, video_group_states
from featurestore.reading import StoreReading
from featurestore.schema import SCHEMA_VERSION, StoreSchema

if TYPE_CHECKING:
    from featurestore.verify import VerifyReport


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _read_root_attrs(zstore: Any, url: str) -> dict[str, Any]:
    """The ``bankflow`` root attributes, or StoreError if ``url`` is not a bankflow store."""
    not_store = f"{url} is not a bankflow feature store: no zarr.json with bankflow attributes"
    try:
        root = zarr.open_group(zstore, mode="r")
    except (FileNotFoundError, zarr.errors.BaseZarrError) as exc:
        raise StoreError(not_store) from exc
    except ValueError as exc:  # a zarr.json that is not JSON (truncated, overwritten)
        raise StoreError(f"{url}: its zarr.json is not valid JSON ({exc})") from exc
    attrs = root.attrs.asdict().get(ROOT_KEY)
    if not isinstance(attrs, dict) or "schema" not in attrs:
        raise StoreError(not_store)
    return attrs


class FeatureStore(StoreReading):
    """A bankflow feature store. Build with ``FeatureStore.create`` or ``FeatureStore.open``.

    Array handles and each video's (timestamps, actor_offset) are cached per instance:
    opening a zarr array reads its metadata, which costs about as much as reading a chunk.
    """

    def __init__(self, url: str, zstore: Any, mode: Literal["r", "a"], attrs: dict) -> None:
        self.url = url
        self.mode = mode
        self._zstore = zstore
        self._attrs = attrs
        self.schema = StoreSchema.from_json(attrs["schema"])
        self._root = zarr.open_group(zstore, mode="r" if mode == "r" else "r+")
        # None while the store is being created (root metadata written, videos group not yet).
        self._videos_node = open_videos_group(self._root, create=mode == "a")
        self._locks = LockFiles(url)
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._small: dict[str, dict[str, np.ndarray]] = {}
        self._raws: dict = {}  # (video, array) -> how to read it as files (StoreReading._raw)

    # Read-only here: opened lazily (StoreReading declares it as a plain attribute).
    @property
    def _videos(self) -> zarr.Group | None:  # type: ignore[override]
        if self._videos_node is None:
            self._videos_node = open_videos_group(self._root, create=self.mode == "a")
        return self._videos_node

    # ----------------------------------------------------------------- create / open

    @classmethod
    def create(
        cls,
        url: str | os.PathLike,
        schema: StoreSchema,
        *,
        provenance: dict,
        exist_ok: bool = False,
        expected_videos: Sequence[str] | None = None,
        chunk_target_bytes: int = DEFAULT_CHUNK_TARGET_BYTES,
        compression: Literal["none", "zstd"] = "none",
    ) -> FeatureStore:
        """Create an empty store at ``url`` (a path, ``file://``, ``memory://``, any fsspec URL).

        With ``exist_ok``, an existing store with the same schema is opened for appending
        (this is how a restarted extraction resumes); a different schema is an error.
        Create from one process before starting writers; writers use ``open(url, mode="a")``.
        """
        name = normalize_url(url)
        zstore = open_zarr_store(url, read_only=False)
        try:
            existing = zarr.open_group(zstore, mode="r")
        except (FileNotFoundError, zarr.errors.BaseZarrError):
            existing = None
        path = local_path(url)
        if existing is None and path is not None and path.is_dir() and any(path.iterdir()):
            raise StoreError(
                f"{where(name)}: directory exists, is not empty and is not a zarr store; "
                "refusing to create a feature store inside it"
            )
        if existing is not None:
            if not exist_ok:
                raise StoreError(f"{where(name)}: already exists (pass exist_ok=True to resume)")
            return cls.open(url, mode="a", expect_schema=schema)
        for video_id in expected_videos or ():
            check_video_id(video_id)
        if compression not in COMPRESSIONS:
            raise StoreError(
                f"{where(name)}: compression must be one of {sorted(COMPRESSIONS)}, "
                f"got {compression!r}"
            )
        if chunk_target_bytes <= 0:
            raise StoreError(f"{where(name)}: chunk_target_bytes must be positive")
        attrs: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "schema": schema.to_json(),
            "provenance": dict(provenance),
            "complete": False,
            "expected_videos": None if expected_videos is None else list(expected_videos),
            "chunk_target_bytes": int(chunk_target_bytes),
            "compression": compression,
            "created_at": _now(),
        }
        try:
            root = zarr.open_group(zstore, mode="w-", attributes={ROOT_KEY: attrs})
            root.create_group(VIDEOS)
        except (FileExistsError, zarr.errors.BaseZarrError) as exc:
            # Another process created it between our check and now.
            if exist_ok:
                return cls.open(url, mode="a", expect_schema=schema)
            raise StoreError(f"{where(name)}: already exists (created concurrently)") from exc
        return cls(name, zstore, "a", attrs)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike,
        *,
        mode: Literal["r", "a"] = "r",
        expect_schema: StoreSchema | None = None,
        allow_incomplete: bool = False,
    ) -> FeatureStore:
        """Open an existing store; ``mode="r"`` refuses an unfinalized store by default.

        Raises:
            StoreError: not a store, a schema other than ``expect_schema`` (each difference
                named), or incomplete (the missing/incomplete videos named).
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        name = normalize_url(url)
        zstore = open_zarr_store(url, read_only=mode == "r")
        attrs = _read_root_attrs(zstore, name)
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{where(name)}: schema version {attrs.get('schema_version')!r}, this bankflow "
                f"reads version {SCHEMA_VERSION}"
            )
        store = cls(name, zstore, mode, attrs)
        if expect_schema is not None:
            differences = expect_schema.diff(store.schema)
            if differences:
                raise StoreError(
                    f"{where(name)}: was written with a different schema (expected != stored): "
                    + "; ".join(differences)
                )
        if mode == "r" and not store.complete and not allow_incomplete:
            raise StoreError(
                f"{where(name)}: is incomplete (not finalized): {store._completeness_summary()}; "
                "finish the extraction or pass allow_incomplete=True"
            )
        return store

    # ----------------------------------------------------------------- properties

    @property
    def complete(self) -> bool:
        """True once ``finalize`` has checked every expected video and marked the store."""
        return bool(self._attrs.get("complete", False))

    @property
    def zarr_store(self) -> Any:
        """The underlying zarr store object (``LocalStore`` or ``FsspecStore``)."""
        return self._zstore

    @property
    def provenance(self) -> dict:
        return dict(self._attrs.get("provenance", {}))

    @property
    def expected_videos(self) -> list[str] | None:
        ev = self._attrs.get("expected_videos")
        return None if ev is None else list(ev)

    @property
    def chunk_target_bytes(self) -> int:
        return int(self._attrs.get("chunk_target_bytes", DEFAULT_CHUNK_TARGET_BYTES))

    @property
    def compression(self) -> str:
        return str(self._attrs.get("compression", "none"))

    @property
    def root_attrs(self) -> dict:
        """A copy of the store's ``bankflow`` root attributes."""
        return dict(self._attrs)

    def video_attrs(self, video_id: str) -> dict:
        """A copy of a video group's attributes (complete, counts, provenance)."""
        return self._video_group(video_id).attrs.asdict()

    def nbytes(self) -> int:
        """Bytes the store occupies in its backend (compressed chunks + metadata + locks)."""
        return store_nbytes(self._zstore)

    # ----------------------------------------------------------------- listing

    def video_states(self) -> dict[str, bool]:
        """Every video group present -> its ``complete`` attribute."""
        return video_group_states(self._zstore)

    def videos(self, complete_only: bool = True) -> list[str]:
        """Sorted video ids in the store (only complete ones unless ``complete_only=False``)."""
        states = self.video_states()
        return sorted(v for v, done in states.items() if done or not complete_only)

    def is_complete_video(self, video_id: str) -> bool:
        try:
            group = zarr.open_group(self._zstore, path=f"{VIDEOS}/{video_id}", mode="r")
        except (FileNotFoundError, zarr.errors.BaseZarrError):
            return False
        return bool(group.attrs.get("complete", False))

    def _completeness_summary(self, expected: Sequence[str] | None = None) -> str:
        states = self.video_states()
        expected = self.expected_videos if expected is None else list(expected)
        missing = sorted(set(expected or ()) - set(states))
        incomplete = sorted(v for v, done in states.items() if not done)
        done = sum(states.values())
        parts = [f"{done} complete videos"]
        if expected is not None:
            parts[0] += f" of {len(expected)} expected"
        if missing:
            parts.append(f"missing videos {missing}")
        if incomplete:
            parts.append(f"incomplete videos {incomplete} (killed writers?)")
        return ", ".join(parts)

    # ----------------------------------------------------------------- claims

    def try_claim(self, video_id: str, owner: str, *, ttl_s: float = DEFAULT_TTL_S) -> Claim | None:
        """Claim ``video_id`` for writing; None if complete or claimed by a live writer."""
        check_video_id(video_id)
        self._require_writable(video_id)
        return try_claim(
            self._locks,
            video_id,
            owner,
            ttl_s=ttl_s,
            is_complete=lambda: self.is_complete_video(video_id),
        )

    @contextmanager
    def claim(
        self, video_id: str, owner: str, *, ttl_s: float = DEFAULT_TTL_S
    ) -> Iterator[Claim | None]:
        """``with store.claim(v, "worker-1") as c:`` -- ``c`` is None if not ours to write."""
        held = self.try_claim(video_id, owner, ttl_s=ttl_s)
        try:
            yield held
        finally:
            if held is not None:
                held.release()

    # ----------------------------------------------------------------- writing

    def _require_writable(self, video_id: str | None = None) -> None:
        if self.mode != "a":
            raise StoreError(f"{where(self.url, video_id)}: store is open read-only (mode='r')")
        if self.complete:
            raise StoreError(
                f"{where(self.url, video_id)}: store is finalized; finalized stores are never "
                "modified (write a new store under a new key)"
            )

    def write_video(
        self,
        video_id: str,
        features: VideoFeatures,
        *,
        provenance: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        """Write all arrays of one video, then mark its group ``complete`` (last).

        An incomplete group of the same video (a killed writer's) is deleted and rewritten;
        a complete one raises ``StoreError`` unless ``overwrite=True``.
        """
        check_video_id(video_id)
        self._require_writable(video_id)
        features.validate(self.schema, video_id)
        attrs = {
            "complete": True,
            "n_keyframes": features.n_keyframes,
            "n_actors": features.n_actors,
            "provenance": dict(provenance or {}),
            "written_at": _now(),
        }
        self._write_arrays(video_id, features.arrays(), attrs, overwrite=overwrite)

    def _write_arrays(
        self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict, *, overwrite: bool
    ) -> None:
        """Write ``arrays`` into a fresh group for ``video_id``; set ``attrs`` (complete) last."""
        videos = self._videos
        assert videos is not None  # mode "a" creates it
        if video_id in videos:
            if self.is_complete_video(video_id) and not overwrite:
                raise StoreError(
                    f"{where(self.url, video_id)}: already complete; refusing to overwrite "
                    "(pass overwrite=True)"
                )
            del videos[video_id]
        self._forget(video_id)
        group = videos.create_group(video_id, attributes={"complete": False})
        target = self.chunk_target_bytes
        compressors = chunk_codecs(self.compression)

        async def create_and_fill(name: str, data: np.ndarray) -> None:
            rows = chunk_rows(data.shape, data.dtype.itemsize, target)
            arr = await zarr.api.asynchronous.create_array(
                self._zstore,
                name=f"{VIDEOS}/{video_id}/{name}",
                shape=data.shape,
                dtype=data.dtype,
                chunks=(rows, *data.shape[1:]),
                fill_value=0,
                compressors=compressors,
                # A missing chunk must be detectable by verify(), so write all-zero ones too.
                config={"write_empty_chunks": True},
            )
            if data.size:
                await arr.setitem(Ellipsis, data)

        async def write_all() -> None:
            # One event-loop hop for the whole video: arrays are created and encoded
            # concurrently (zarr runs codecs in threads) instead of ~20 sequential round trips.
            await asyncio.gather(*(create_and_fill(n, d) for n, d in arrays.items()))

        with naming_failed_writes(f"{self.url}/{VIDEOS}/{video_id}"):
            sync(write_all())
        # Last, in one metadata write: the video is complete only once everything is stored.
        group.update_attributes(attrs)

    def finalize(self, expected_videos: Sequence[str] | None = None) -> None:
        """Mark the store complete after checking every expected video is complete.

        ``expected_videos`` defaults to the list given to ``create``; without either, every
        video group present must be complete. Run from a single process after all writers.
        Claims left on complete videos (a writer killed after marking its video complete,
        before releasing) are deleted: a finalized store holds no locks.
        """
        self._require_writable()
        expected = self.expected_videos if expected_videos is None else list(expected_videos)
        states = self.video_states()
        missing = sorted(set(expected or ()) - {v for v, done in states.items() if done})
        incomplete = sorted(v for v, done in states.items() if not done)
        if missing or incomplete:
            raise StoreError(
                f"{where(self.url)}: cannot finalize: {self._completeness_summary(expected)}"
            )
        for name in self._locks.names():
            if name.endswith(".json") and states.get(name[: -len(".json")], False):
                self._locks.delete(name)
        attrs = dict(self._attrs)
        attrs.update(complete=True, finalized_at=_now(), n_videos=len(states))
        if expected is not None:
            attrs["expected_videos"] = list(expected)
        self._root.attrs.update({ROOT_KEY: attrs})
        self._attrs = attrs

    # ----------------------------------------------------------------- reading

    def expected_array_shapes(self, video_id: str) -> dict[str, tuple]:
        """Shapes the video's arrays must have, from its recorded keyframe/actor counts."""
        attrs = self.video_attrs(video_id)
        return expected_shapes(self.schema, int(attrs["n_keyframes"]), int(attrs["n_actors"]))

    @staticmethod
    def array_names() -> tuple[str, ...]:
        return tuple(ARRAY_DTYPES)

    def verify(self, *, quick: bool = False) -> VerifyReport:
        """Check completeness, shapes, CSR offsets, timestamps, that every chunk exists and
        (unless ``quick``) that every chunk decodes and matches its checksum."""
        # verify builds on this class, so it is imported here rather than at module top.
        from featurestore.verify import verify_store

        return verify_store(self, quick=quick)
