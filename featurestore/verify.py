"""``verify``: check a store end to end without trusting zarr's fill values.

Zarr reads a missing chunk as the fill value (zeros), so a deleted or never-written chunk
looks like valid all-zero features. We therefore list the objects under each array and
compare with the chunk keys its shape and chunking require. Then (unless ``quick``) every
chunk is decoded, which checks its crc32c checksum (``featurestore.chunks``) and, for
stores written without one, at least its length.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from featurestore.backend import list_keys
from featurestore.chunks import bad_chunks
from featurestore.features import expected_dtype, expected_shapes
from featurestore.layout import VIDEOS
from featurestore.store import FeatureStore

_MAX_LISTED = 5  # chunk keys named per array in a problem line


@dataclass
class VerifyReport:
    """Outcome of ``FeatureStore.verify``.

    Attributes:
        url: the store.  problems: one human-readable line per problem (empty if ok).
        n_videos: video groups checked.  n_chunks: chunk objects confirmed present.
        n_decoded: chunks decoded (0 with ``quick``).
    """

    url: str
    problems: list[str] = field(default_factory=list)
    n_videos: int = 0
    n_chunks: int = 0
    n_decoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (
            f"{self.url}: {self.n_videos} videos, {self.n_chunks} chunks present, "
            f"{self.n_decoded} decoded"
        )
        if self.ok:
            return f"{head}: OK"
        return f"{head}: {len(self.problems)} problems\n" + "\n".join(
            f"  - {p}" for p in self.problems
        )


def _chunk_keys(arr) -> list[str]:
    """Storage keys (relative to the store root) of every chunk of a zarr v3 array."""
    grid = [math.ceil(s / c) if s else 0 for s, c in zip(arr.shape, arr.chunks, strict=True)]
    coords = itertools.product(*(range(n) for n in grid))
    return [f"{arr.path}/{arr.metadata.encode_chunk_key(c)}" for c in coords]


def _verify_video(store: FeatureStore, video_id: str, report: VerifyReport, *, quick: bool) -> None:
    def problem(text: str) -> None:
        report.problems.append(f"video {video_id!r}: {text}")

    attrs = store.video_attrs(video_id)
    if not attrs.get("complete", False):
        problem("incomplete (no 'complete' attribute: a writer was killed or is still running)")
        return
    schema = store.schema
    try:
        shapes = expected_shapes(schema, int(attrs["n_keyframes"]), int(attrs["n_actors"]))
    except (KeyError, TypeError, ValueError):
        problem(f"attributes lack n_keyframes/n_actors: {attrs}")
        return
    present = list_keys(store.zarr_store, f"{VIDEOS}/{video_id}/")
    bad: set[str] = set()
    for name, shape in shapes.items():
        try:
            arr = store.array(video_id, name)
        except Exception as exc:  # a missing or unreadable array is a problem, not a crash
            problem(f"array {name!r} cannot be opened: {exc}")
            bad.add(name)
            continue
        if arr.shape != shape:
            problem(f"array {name!r} has shape {arr.shape}, expected {shape}")
            bad.add(name)
            continue
        if arr.dtype != expected_dtype(schema, name):
            problem(
                f"array {name!r} has dtype {arr.dtype}, expected {expected_dtype(schema, name)}"
            )
            bad.add(name)
        keys = _chunk_keys(arr)
        missing = [k for k in keys if k not in present]
        report.n_chunks += len(keys) - len(missing)
        if missing:
            shown = ", ".join(missing[:_MAX_LISTED]) + (
                " ..." if len(missing) > _MAX_LISTED else ""
            )
            problem(f"array {name!r} misses {len(missing)} of {len(keys)} chunks: {shown}")
            bad.add(name)
        elif not quick and name not in bad:
            n_decoded, corrupt = bad_chunks(arr)
            report.n_decoded += n_decoded
            for line in corrupt[:_MAX_LISTED]:
                problem(f"array {name!r} chunk {line}")
            if len(corrupt) > _MAX_LISTED:
                problem(f"array {name!r}: {len(corrupt) - _MAX_LISTED} more corrupt chunks")
            if corrupt:
                bad.add(name)
    extra = sorted({k.split("/")[2] for k in present if k.count("/") >= 3} - set(shapes))
    if extra:
        problem(f"unexpected arrays {extra} (schema does not store them)")
    if bad & {"timestamps", "actor_offset"}:
        return  # their values are unreadable or zero-filled; the problem is already named
    timestamps, offsets = store.index(video_id)
    if len(timestamps) > 1 and np.any(np.diff(timestamps) <= 0):
        problem("timestamps are not sorted and unique")
    n_actors = int(attrs["n_actors"])
    if len(offsets) and (
        offsets[0] != 0 or offsets[-1] != n_actors or np.any(np.diff(offsets) < 0)
    ):
        problem(
            f"actor_offset is not a CSR offset array over {n_actors} actors "
            f"(starts {offsets[0]}, ends {offsets[-1]})"
        )


def verify_store(store: FeatureStore, *, quick: bool = False) -> VerifyReport:
    """Check every video (complete, shapes/dtypes vs schema, CSR, sorted timestamps, chunks
    present and, unless ``quick``, decoding with a matching checksum)."""
    report = VerifyReport(url=store.url)
    states = store.video_states()
    expected = store.expected_videos
    if expected is not None:
        missing = sorted(set(expected) - set(states))
        if missing:
            report.problems.append(f"missing videos {missing} (expected at create/finalize)")
    for video_id in sorted(states):
        report.n_videos += 1
        _verify_video(store, video_id, report, quick=quick)
    if not store.complete:
        report.problems.append("store is not finalized (root 'complete' attribute is false)")
    return report
