"""Where a store lives: a local directory (``LocalStore``) or any fsspec URL (``FsspecStore``).

Also the two things zarr does not give us: listing the stored keys under a prefix (to find
missing chunks) and small exclusive-create files (claim locks) on the same backend.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import fsspec
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore


def local_path(url: str | os.PathLike) -> Path | None:
    """The local directory of ``url`` (plain path or ``file://``), or None for remote URLs."""
    text = os.fspath(url)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if "://" in text:
        return None
    return Path(text)


def normalize_url(url: str | os.PathLike) -> str:
    """A canonical string for messages and provenance: absolute path for local stores."""
    path = local_path(url)
    return str(path.absolute()) if path is not None else os.fspath(url).rstrip("/")


def open_zarr_store(url: str | os.PathLike, *, read_only: bool) -> Store:
    """A zarr store object for ``url``; local paths use ``LocalStore`` (atomic file writes)."""
    path = local_path(url)
    if path is not None:
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(os.fspath(url), read_only=read_only)


@contextlib.contextmanager
def naming_failed_writes(location: str) -> Iterator[None]:
    """Give an OSError raised without a file name (zarr's chunk writes: ENOSPC, EIO) the
    location being written, so that "No space left on device" says where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, location) from exc


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [key async for key in it]


def list_keys(store: Store, prefix: str) -> set[str]:
    """All keys stored under ``prefix`` (relative to the store root)."""
    return set(sync(_collect(store.list_prefix(prefix))))


def store_nbytes(store: Store) -> int:
    """Bytes stored (sum of object sizes) under the store root."""
    return int(sync(store.getsize_prefix("")))


class LockFiles:
    """Small JSON files beside the zarr hierarchy (``<store>/locks/<name>``) with create-exclusive.

    Local directories write a temporary file and hard-link it (atomic and exclusive on POSIX
    and NFS: the file appears whole or not at all); other URLs use
    fsspec's ``"xb"`` mode, which is exclusive where the backend supports it (memory, local,
    s3 with conditional writes).
    """

    def __init__(self, url: str | os.PathLike, subdir: str = "locks") -> None:
        path = local_path(url)
        self._local = path / subdir if path is not None else None
        if self._local is None:
            self._fs, root = fsspec.core.url_to_fs(os.fspath(url))
            self._root = f"{root.rstrip('/')}/{subdir}"

    def _path(self, name: str) -> str:
        if self._local is not None:
            return str(self._local / name)
        return f"{self._root}/{name}"

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Write ``data`` to ``name`` only if it does not exist; True if this call created it."""
        if self._local is not None:
            # Written whole under a temporary name, then hard-linked to ``name`` (fails if it
            # exists; atomic on POSIX and NFS): a reader never sees an empty or half-written
            # lock, which it could neither parse nor break.
            self._local.mkdir(parents=True, exist_ok=True)
            tmp = self._local / f".{name}.{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(data)
            try:
                os.link(tmp, self._path(name))
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
            return True
        try:
            with self._fs.open(self._path(name), "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None if it does not exist."""
        try:
            if self._local is not None:
                return Path(self._path(name)).read_bytes()
            with self._fs.open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def replace(self, name: str, data: bytes) -> None:
        """Overwrite ``name`` atomically (readers never see a half-written file)."""
        if self._local is not None:
            tmp = self._local / f".{name}.{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self._path(name))
            return
        self._fs.pipe_file(self._path(name), data)

    def delete(self, name: str) -> None:
        """Remove ``name`` if present."""
        try:
            if self._local is not None:
                os.unlink(self._path(name))
            else:
                self._fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        """Names of the files present (none if the directory does not exist)."""
        try:
            if self._local is not None:
                return sorted(os.listdir(self._local))
            return sorted(p.rsplit("/", 1)[-1] for p in self._fs.ls(self._root, detail=False))
        except FileNotFoundError:
            return []

    def modified_time(self, name: str) -> float | None:
        """Last-modified time (POSIX seconds) of ``name``, or None if it does not exist."""
        try:
            if self._local is not None:
                return os.stat(self._path(name)).st_mtime
            return self._fs.modified(self._path(name)).timestamp()
        except FileNotFoundError:
            return None
