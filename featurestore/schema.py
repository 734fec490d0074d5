"""What a feature store holds (``StoreSchema``) and how big it will be before it is written.

A store is keyed by the extraction that produced it; its schema (backbone, weights, detector,
clip sampling, feature shapes, dtype) is stored in the root ``zarr.json`` and compared on
open, so that a head trained on one backbone's features never silently reads another's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from featurestore.errors import StoreError

SCHEMA_VERSION = 1
CLIP_KEYS = ("frames", "stride", "fps", "short_side")
# bfloat16 has no zarr dtype; float32 is allowed for small exact-test stores.
ALLOWED_DTYPES = ("float16", "float32")


def _as_shape(value: Any, name: str, ndim: int) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value)
    except TypeError as exc:
        raise StoreError(
            f"StoreSchema.{name} must be a tuple of {ndim} ints, got {value!r}"
        ) from exc
    if len(shape) != ndim or any(v <= 0 for v in shape):
        raise StoreError(f"StoreSchema.{name} must be {ndim} positive ints, got {value!r}")
    return shape


@dataclass(frozen=True)
class StoreSchema:
    """The contract of a feature store: every video in it has these feature shapes.

    Attributes:
        backbone: backbone id, e.g. ``"slowfast_r50_8x8"``.
        weights_sha256: sha256 of the backbone checkpoint, or None for random/demo weights.
        detector_key: key of the detect stage whose boxes were pooled, or None (GT boxes).
        clip: clip sampling: ``frames`` (int), ``stride`` (frames), ``fps`` (float or None =
            the video's own rate), ``short_side`` (pixels).
        context_shape: (C, H, W) of the per-keyframe temporally pooled context map.
        pooled_dim: C of the per-actor pooled feature.
        roi_shape: (C, 7, 7) of the per-actor RoIAlign map, or None if not stored.
        roi_t_shape: (C, T', 7, 7) of the per-actor temporal RoI map, or None.
        dtype: storage dtype of the float features, ``"float16"`` (default) or ``"float32"``.
        extra: free-form JSON-able settings; compared like every other field.
    """

    backbone: str
    weights_sha256: str | None
    detector_key: str | None
    clip: dict
    context_shape: tuple[int, int, int]
    pooled_dim: int
    roi_shape: tuple[int, ...] | None = None
    roi_t_shape: tuple[int, ...] | None = None
    dtype: str = "float16"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [k for k in CLIP_KEYS if k not in self.clip]
        if missing:
            raise StoreError(
                f"StoreSchema.clip must have keys {list(CLIP_KEYS)}; missing {missing} in {self.clip!r}"
            )
        if self.dtype not in ALLOWED_DTYPES:
            raise StoreError(
                f"StoreSchema.dtype must be one of {ALLOWED_DTYPES} (bfloat16 is not a zarr dtype; "
                f"store float16), got {self.dtype!r}"
            )
        if int(self.pooled_dim) <= 0:
            raise StoreError(f"StoreSchema.pooled_dim must be positive, got {self.pooled_dim!r}")
        # Normalise sequences to tuples so a schema read back from JSON compares equal.
        object.__setattr__(self, "context_shape", _as_shape(self.context_shape, "context_shape", 3))
        object.__setattr__(self, "pooled_dim", int(self.pooled_dim))
        if self.roi_shape is not None:
            object.__setattr__(self, "roi_shape", _as_shape(self.roi_shape, "roi_shape", 3))
        if self.roi_t_shape is not None:
            object.__setattr__(self, "roi_t_shape", _as_shape(self.roi_t_shape, "roi_t_shape", 4))
        object.__setattr__(self, "clip", dict(self.clip))
        object.__setattr__(self, "extra", dict(self.extra))
        try:
            json.dumps(self.to_json())
        except TypeError as exc:
            raise StoreError(f"StoreSchema must be JSON-serialisable: {exc}") from exc

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists) stored in the root ``zarr.json``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreSchema:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StoreError(f"unknown StoreSchema fields {unknown} (newer bankflow?)")
        return cls(**data)

    def diff(self, other: StoreSchema) -> list[str]:
        """Each differing field as ``"name: <self value> != <other value>"`` (extra per key)."""
        mine, theirs = self.to_json(), other.to_json()
        out: list[str] = []
        for name in mine:
            if name in ("extra", "clip"):
                a, b = mine[name], theirs[name]
                for key in sorted(set(a) | set(b)):
                    if a.get(key, "<absent>") != b.get(key, "<absent>"):
                        out.append(
                            f"{name}.{key}: {a.get(key, '<absent>')!r} != {b.get(key, '<absent>')!r}"
                        )
            elif mine[name] != theirs[name]:
                out.append(f"{name}: {mine[name]!r} != {theirs[name]!r}")
        return out


def _bytes_per_keyframe(schema: StoreSchema) -> int:
    c, h, w = schema.context_shape
    # timestamps int32 + one actor_offset int64 + the context map.
    return 4 + 8 + c * h * w * schema.np_dtype.itemsize


def _bytes_per_actor(schema: StoreSchema) -> int:
    item = schema.np_dtype.itemsize
    n = 16 + 4 + 4 + schema.pooled_dim * item  # boxes f32[4], scores f32, track i32, pooled
    if schema.roi_shape is not None:
        n += int(np.prod(schema.roi_shape)) * item
    if schema.roi_t_shape is not None:
        n += int(np.prod(schema.roi_t_shape)) * item
    return n


def estimate_store_bytes(schema: StoreSchema, n_keyframes: int, n_actors: int) -> int:
    """Uncompressed bytes of a store with ``n_keyframes`` keyframes and ``n_actors`` boxes.

    Per-video overheads (one extra offset, metadata JSON) are ignored: they are < 1 kB/video.
    Compression (zstd) usually makes the real store smaller, never much larger.
    """
    if n_keyframes < 0 or n_actors < 0:
        raise StoreError(f"counts must be >= 0, got {n_keyframes} keyframes, {n_actors} actors")
    return n_keyframes * _bytes_per_keyframe(schema) + n_actors * _bytes_per_actor(schema)


def format_bytes(n: float) -> str:
    """``1234567 -> "1.2 MB"`` (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def describe_store_estimate(
    schema: StoreSchema, n_keyframes: int, n_actors: int, label: str = "store"
) -> str:
    """A one-line projection, e.g. ``"AVA v2.2 train+val ≈ 429.6 GB (268,000 keyframes, ...)"``."""
    total = estimate_store_bytes(schema, n_keyframes, n_actors)
    c, h, w = schema.context_shape
    return (
        f"{label} ≈ {format_bytes(total)} ({n_keyframes:,} keyframes, {n_actors:,} actors; "
        f"context {c}×{h}×{w} {schema.dtype} = {format_bytes(_bytes_per_keyframe(schema))}/keyframe, "
        f"{format_bytes(_bytes_per_actor(schema))}/actor)"
    )
