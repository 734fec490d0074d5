"""Chunk integrity: the checksum codec chain, reads that name a corrupt chunk, full decodes.

Every array is written with a crc32c checksum as the last bytes-to-bytes codec (Zarr v3
``crc32c``: 4 bytes appended to each stored chunk, checked on decode), so a chunk that was
truncated, overwritten or bit-flipped fails its read instead of decoding into wrong
features. Stores written before the checksum (no ``crc32c`` in their codec chain) are still
read; a truncated chunk of theirs fails zarr's reshape, which is reported the same way.

Zarr says neither which chunk failed nor which video it belongs to, so on a failed read
the chunks of the selection are decoded one by one to name the first bad one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from featurestore.errors import StoreError, where

# What zarr raises for a chunk it cannot decode: the checksum mismatch and a wrong byte
# count are ValueError, a broken zstd frame is RuntimeError. OSError (a backend that
# cannot be reached) is not corruption and passes through.
DECODE_ERRORS = (ValueError, RuntimeError)

# Bytes decoded per read while verifying (a whole AVA video's context does not fit in RAM).
VERIFY_BLOCK_BYTES = 64 << 20


def chunk_codecs(compression: str) -> tuple[Any, ...]:
    """Bytes-to-bytes codecs of a new array: optional zstd, then the crc32c checksum."""
    if compression == "none":
        return (Crc32cCodec(),)
    if compression == "zstd":
        return (ZstdCodec(), Crc32cCodec())
    raise ValueError(f"compression must be 'none' or 'zstd', got {compression!r}")


def has_checksum(arr: Any) -> bool:
    """True if the array's codec chain ends with crc32c (stores written since issue 20)."""
    return any(isinstance(c, Crc32cCodec) for c in arr.compressors)


def chunk_key(arr: Any, index: int) -> str:
    """Storage key (relative to the store root) of chunk ``index`` along axis 0."""
    coords = (index,) + (0,) * (len(arr.shape) - 1)
    return f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"


def _rows_of_chunk(arr: Any, index: int) -> slice:
    step = arr.chunks[0]
    return slice(index * step, min((index + 1) * step, arr.shape[0]))


async def _first_bad_chunk(arr: Any, indices: list[int]) -> tuple[int, str] | None:
    """Decode chunks ``indices`` of an async array one by one; the first failing one."""
    for index in indices:
        try:
            await arr.getitem(_rows_of_chunk(arr, index))
        except DECODE_ERRORS as exc:
            return index, _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "checksum" in text.lower():
        return "crc32c checksum mismatch"
    return f"cannot be decoded ({type(exc).__name__}: {text.splitlines()[0][:120]})"


def _chunk_indices(arr: Any, selection: Any) -> list[int]:
    """Chunk indices along axis 0 touched by ``selection`` (a slice, row array or tuple)."""
    step, n = arr.chunks[0], arr.shape[0]
    sel = selection[0] if isinstance(selection, tuple) else selection
    if isinstance(sel, slice):
        start, stop, _ = sel.indices(n)
        return list(range(start // step, -(-stop // step))) if stop > start else []
    if sel is Ellipsis:
        return list(range(-(-n // step)))
    rows = np.asarray(sel, dtype=np.int64).reshape(-1)
    return sorted({int(r) // step for r in rows})


async def _corrupt_chunk_error(
    url: str, video_id: str, name: str, arr: Any, selection: Any, exc: BaseException
) -> StoreError:
    found = await _first_bad_chunk(arr, _chunk_indices(arr, selection))
    if found is None:  # every chunk decodes on its own: name the read that failed
        return StoreError(f"{where(url, video_id, name)}: read failed: {_reason(exc)}")
    index, reason = found
    return StoreError(
        f"{where(url, video_id, name)}, chunk {chunk_key(arr, index)!r}: corrupt, "
        f"{reason} (bankflow store verify {url} lists every bad chunk)"
    )


def corrupt_chunk_error(
    url: str, video_id: str, name: str, arr: Any, selection: Any, exc: BaseException
) -> StoreError:
    """The StoreError for a failed read of ``arr[selection]`` (a sync array), naming the
    first chunk of the selection that does not decode."""
    return sync(_corrupt_chunk_error(url, video_id, name, arr.async_array, selection, exc))


async def read_checked(url: str, video_id: str, name: str, arr: Any, selection: Any) -> Any:
    """``await arr.getitem(selection)`` of an AsyncArray; a corrupt chunk -> StoreError."""
    try:
        return await arr.getitem(selection)
    except DECODE_ERRORS as exc:
        raise await _corrupt_chunk_error(url, video_id, name, arr, selection, exc) from None


def bad_chunks(arr: Any) -> tuple[int, list[str]]:
    """Decode every chunk of a (sync) array: (chunks decoded, ["<key>: <reason>", ...]).

    Reads blocks of whole chunks of at most ``VERIFY_BLOCK_BYTES``; a block that fails is
    decoded chunk by chunk to name each bad one.
    """
    async_arr = arr.async_array
    n_chunks = -(-arr.shape[0] // arr.chunks[0]) if arr.shape[0] else 0
    chunk_bytes = max(1, int(np.prod(arr.chunks)) * arr.dtype.itemsize)
    per_block = max(1, VERIFY_BLOCK_BYTES // chunk_bytes)

    async def scan() -> list[str]:
        bad: list[str] = []
        for first in range(0, n_chunks, per_block):
            last = min(first + per_block, n_chunks)
            rows = slice(first * arr.chunks[0], min(last * arr.chunks[0], arr.shape[0]))
            try:
                await async_arr.getitem(rows)
                continue
            except DECODE_ERRORS:
                pass
            for index in range(first, last):
                try:
                    await async_arr.getitem(_rows_of_chunk(arr, index))
                except DECODE_ERRORS as exc:
                    bad.append(f"{chunk_key(arr, index)}: {_reason(exc)}")
        return bad

    return n_chunks, sync(scan())
