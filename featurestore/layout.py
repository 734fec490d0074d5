"""Naming and chunking rules of the store layout (shared by writer, reader, verify, export).

Chunking: each array is chunked only along its first (keyframe/actor) axis, with enough
rows per chunk that a chunk holds >= ``chunk_target_bytes`` (capped at the array length).
Zarr's per-chunk cost (~0.6 ms read, ~1.3 ms write here) argues for big chunks, but training
reads random single keyframes, and a read decodes the whole chunk. Measured on 2 cores
shared with other jobs (load ~6, so ±50% run to run; tests/benchmarks/test_bench_store.py,
context 256×8×8 f16, 64-keyframe batches via ``read_keyframes``): 1 MiB chunks wrote
39-95 ms/video and read 267-270 ms/batch; 256 KiB chunks 50-63 ms and 138-196 ms; 64 KiB
chunks 73-135 ms and 88-227 ms. The default, 256 KiB, is never the worst of either; a full
AVA map (2304×16×22 f16, 1.6 MB) is one keyframe per chunk whatever the target.
(Those read figures are zarr's; a local store's plain chunks are now read as files,
``featurestore.rawread``, where a chunk costs a syscall and its bytes, not ~0.6 ms.)
Chunks are uncompressed by default (zstd saves ~40% of disk but makes reads 2-4× slower).
We use plain chunks rather than shards so that ``verify`` sees a missing chunk as a missing
object. Arrays are pre-allocated at their final size (no append/resize, which races on
metadata), and ``write_empty_chunks`` is on so that every chunk exists even if all zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from featurestore.errors import StoreError

ROOT_KEY = "bankflow"
VIDEOS = "videos"
DEFAULT_CHUNK_TARGET_BYTES = 256 << 10
# Backbone activations compress ~40% with zstd, but decoding costs more than reading the
# bytes (tests/benchmarks/test_bench_store.py): stores are uncompressed unless asked.
# Either way every chunk carries a crc32c checksum (featurestore.chunks.chunk_codecs).
COMPRESSIONS = ("none", "zstd")


def chunk_rows(shape: Sequence[int], itemsize: int, target_bytes: int) -> int:
    """Rows per chunk along axis 0 so a chunk is >= ``target_bytes`` (1 <= rows <= len)."""
    row_bytes = itemsize * math.prod(shape[1:])
    rows = math.ceil(target_bytes / max(row_bytes, 1))
    return max(1, min(rows, int(shape[0])))


def check_video_id(video_id: str) -> None:
    """Reject ids that cannot be a zarr node name or a lock file name."""
    if (
        not isinstance(video_id, str)
        or not video_id
        or "/" in video_id
        or "\\" in video_id
        or video_id.startswith("__")
        or set(video_id) == {"."}
    ):
        raise StoreError(
            f"invalid video id {video_id!r}: expected a non-empty name without '/', not starting "
            "with '__' and not only dots"
        )
