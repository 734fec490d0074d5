"""Reading a local store's chunks as plain files: the training reader's hot path.

A zarr read costs ~0.6 ms of Python per chunk here (event-loop hop, codec pipeline,
selection indexing), whatever its size: a 16-keyframe batch of three arrays took 40-100
ms for a few MB (issue 22, item 4). For the layout bankflow writes -- a regular grid
chunked along axis 0 only, little-endian ``bytes`` codec, optionally the crc32c checksum,
no compression -- a stored chunk is its rows' raw bytes followed by 4 checksum bytes, so a
read is one ``readinto`` of a file into a numpy buffer and one crc32c over it (C code,
~7 GB/s). Chunk files are read by a small thread pool (the read syscall releases the GIL)
so that a cold batch keeps the disk's queue busy.

The checks zarr's codec makes are kept: a wrong size (truncated or overwritten chunk) or a
checksum mismatch raises ``StoreError`` naming store, video, array and chunk key; a missing
chunk (bankflow writes every chunk, even all-zero ones) is an error too, not zeros.
Arrays with another layout (zstd, remote stores, foreign codecs) return None from
:func:`raw_array` and are read through zarr as before.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.storage import LocalStore

from featurestore.errors import StoreError, where

# Threads reading chunk files of one batch. A warm read is a memcpy (threads add ~20 us per
# chunk of hand-off), a cold one waits on the disk: batches touching fewer chunks, or fewer
# bytes, than these are read in the calling thread.
READ_THREADS = 4
_POOL_MIN_CHUNKS = 8
_POOL_MIN_BYTES = 4 << 20
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="bankflow-chunks")
        return _pool


def _forget_pool_after_fork() -> None:
    """A forked child makes its own pool: the parent's threads are not in it, and a pool
    without its threads would never run what it is given."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


@dataclass(frozen=True)
class RawArray:
    """Where and how one array's chunks are stored (see the module docstring)."""

    directory: str  # absolute directory of the array (its chunk keys are relative to it)
    key_prefix: str  # the array's path in the store, for messages
    separator: str  # of the chunk key encoding ("/" or ".")
    shape: tuple[int, ...]
    rows: int  # rows per chunk along axis 0
    dtype: np.dtype
    checksum: bool

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def chunk_bytes(self) -> int:
        """Bytes of a stored chunk: every chunk, the last included, holds ``rows`` rows."""
        return self.rows * self.row_bytes + (4 if self.checksum else 0)

    def chunk_key(self, index: int) -> str:
        return self.separator.join(["c", str(index)] + ["0"] * (len(self.shape) - 1))


def raw_array(zstore: Any, arr: Any) -> RawArray | None:
    """A :class:`RawArray` for a zarr array of a local store in bankflow's plain layout,
    or None if it must be read through zarr."""
    meta = arr.metadata
    if not isinstance(zstore, LocalStore) or getattr(meta, "zarr_format", None) != 3:
        return None
    grid = meta.chunk_grid
    shape = tuple(int(s) for s in meta.shape)
    if not isinstance(grid, RegularChunkGrid) or not shape:
        return None
    chunks = tuple(int(c) for c in grid.chunk_shape)
    if chunks[1:] != shape[1:] or chunks[0] < 1:
        return None
    codecs = list(meta.codecs)
    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    if checksum:
        codecs = codecs[:-1]
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return None
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "iufb":
        return None
    endian = codecs[0].endian
    if dtype.itemsize > 1:
        if endian is None:
            return None
        dtype = dtype.newbyteorder("<" if endian.value == "little" else ">")
    encoding = meta.chunk_key_encoding
    separator = getattr(encoding, "separator", None)
    if getattr(encoding, "name", "default") != "default" or separator not in ("/", "."):
        return None
    return RawArray(
        directory=os.path.join(os.fspath(Path(zstore.root)), arr.path),
        key_prefix=arr.path,
        separator=separator,
        shape=shape,
        rows=chunks[0],
        dtype=dtype,
        checksum=checksum,
    )


@dataclass(frozen=True)
class RowRead:
    """Rows ``[start, stop)`` of one array of one video (``raw`` from :func:`raw_array`)."""

    url: str
    video_id: str
    name: str
    raw: RawArray
    start: int
    stop: int


def _load_chunk(read: RowRead, index: int, buf: np.ndarray) -> np.ndarray:
    """Chunk ``index`` of ``read.raw`` read into ``buf`` (uint8 [chunk_bytes]), its size and
    checksum checked; the rows as an array [rows, ...] (a view of ``buf``)."""
    raw = read.raw
    key = raw.chunk_key(index)
    problem = None
    try:
        with open(os.path.join(raw.directory, key), "rb", buffering=0) as f:
            got = f.readinto(buf.data)  # buf.data: the memoryview of buf
            if got == len(buf) and f.read(1):
                got += 1
    except FileNotFoundError:
        problem = "missing (every chunk is written, even an all-zero one)"
    else:
        if got != len(buf):
            size = f"{got} bytes" if got < len(buf) else f"more than {len(buf)} bytes"
            problem = f"cannot be decoded (holds {size}, expected {len(buf)})"
        elif raw.checksum:
            stored = int.from_bytes(buf[-4:].tobytes(), "little")
            if google_crc32c.value(buf[:-4]) != stored:
                problem = "crc32c checksum mismatch"
    if problem is not None:
        raise StoreError(
            f"{where(read.url, read.video_id, read.name)}, chunk "
            f"{raw.key_prefix + '/' + key!r}: corrupt, {problem} "
            f"(bankflow store verify {read.url} lists every bad chunk)"
        )
    body = buf[: raw.rows * raw.row_bytes]
    return body.view(raw.dtype).reshape((raw.rows, *raw.shape[1:]))


def _aligned(n: int) -> int:
    return -(-n // 64) * 64


def read_rows(reads: list[RowRead]) -> list[np.ndarray]:
    """The rows of each read, in order. A chunk touched by several reads is read once.

    A read that is exactly one chunk gets that chunk's rows without a copy (the first such
    read only: no two results share memory); the others are copied out of their chunks.
    Chunks are read into two buffers allocated once per call -- the ones handed out and
    the ones copied from (freed on return) -- rather than one allocation per chunk: a
    large buffer is backed by huge pages, where per-chunk ones page-fault every 4 KiB.
    """
    wanted: dict[tuple[str, int], RowRead] = {}
    whole: set[tuple[str, int]] = set()  # chunks handed out as they are
    for r in reads:
        if r.stop > r.start:
            step = r.raw.rows
            first, last = r.start // step, (r.stop - 1) // step
            for index in range(first, last + 1):
                wanted.setdefault((r.raw.directory, index), r)
            if first == last and r.stop - r.start == step:
                whole.add((r.raw.directory, first))
    keys = list(wanted)
    offsets: dict[tuple[str, int], int] = {}
    sizes = [0, 0]  # bytes of the handed-out buffer, of the scratch one
    for k in keys:
        kept = 0 if k in whole else 1
        offsets[k] = sizes[kept]
        sizes[kept] += _aligned(wanted[k].raw.chunk_bytes)
    arenas = [np.empty(n, dtype=np.uint8) for n in sizes]

    def load(k: tuple[str, int]) -> np.ndarray:
        off, n = offsets[k], wanted[k].raw.chunk_bytes
        return _load_chunk(wanted[k], k[1], arenas[0 if k in whole else 1][off : off + n])

    if len(keys) >= _POOL_MIN_CHUNKS and sum(sizes) >= _POOL_MIN_BYTES:
        loaded = list(_executor().map(load, keys))
    else:
        loaded = [load(k) for k in keys]
    chunks = dict(zip(keys, loaded, strict=True))
    handed_out: set[tuple[str, int]] = set()
    out = []
    for r in reads:
        raw, step = r.raw, r.raw.rows
        first, last = r.start // step, (r.stop - 1) // step
        if r.stop <= r.start:
            out.append(np.zeros((0, *raw.shape[1:]), dtype=raw.dtype.newbyteorder("=")))
        elif first == last:
            key = (raw.directory, first)
            part = chunks[key][r.start - first * step : r.stop - first * step]
            as_is = len(part) == step and key not in handed_out
            if as_is:
                handed_out.add(key)
            out.append(part if as_is else part.copy())
        else:
            out.append(
                np.concatenate(
                    [
                        chunks[(raw.directory, i)][
                            max(r.start - i * step, 0) : min(r.stop - i * step, step)
                        ]
                        for i in range(first, last + 1)
                    ]
                )
            )
    return out
