"""In-memory feature records: one video (``VideoFeatures``) and one keyframe (``KeyframeFeatures``).

Actors are ragged (a keyframe has 0..n persons), so actor arrays are flat with CSR offsets:
the actors of keyframe ``k`` are rows ``actor_offset[k]:actor_offset[k + 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featurestore.errors import StoreError
from featurestore.schema import StoreSchema

# Array name -> (dtype or None for the schema's float dtype). Order is the write order.
ARRAY_DTYPES: dict[str, str | None] = {
    "timestamps": "int32",
    "actor_offset": "int64",
    "context": None,
    "boxes": "float32",
    "scores": "float32",
    "track": "int32",
    "pooled": None,
    "roi": None,
    "roi_t": None,
}
OPTIONAL_ARRAYS = ("roi", "roi_t")
# Normalized boxes may exceed [0, 1] by rounding only.
_BOX_TOLERANCE = 1e-3


def expected_shapes(schema: StoreSchema, n_keyframes: int, n_actors: int) -> dict[str, tuple]:
    """The shape each array of a video must have under ``schema`` (optional ones if enabled)."""
    shapes: dict[str, tuple] = {
        "timestamps": (n_keyframes,),
        "actor_offset": (n_keyframes + 1,),
        "context": (n_keyframes, *schema.context_shape),
        "boxes": (n_actors, 4),
        "scores": (n_actors,),
        "track": (n_actors,),
        "pooled": (n_actors, schema.pooled_dim),
    }
    if schema.roi_shape is not None:
        shapes["roi"] = (n_actors, *schema.roi_shape)
    if schema.roi_t_shape is not None:
        shapes["roi_t"] = (n_actors, *schema.roi_t_shape)
    return shapes


def expected_dtype(schema: StoreSchema, name: str) -> np.dtype:
    fixed = ARRAY_DTYPES[name]
    return np.dtype(fixed) if fixed is not None else schema.np_dtype


@dataclass
class KeyframeFeatures:
    """Features of one keyframe of one video.

    Attributes:
        video_id: the video.
        timestamp: keyframe time in seconds (AVA: seconds in the source movie).
        context: [C, H, W] temporally pooled backbone map.
        boxes: float32 [n, 4] normalized x1, y1, x2, y2 of the n actors.
        scores: float32 [n] detector scores (1.0 for GT boxes).
        track: int32 [n] track ids (-1 if untracked).
        pooled: [n, C] pooled actor features.
        roi: [n, C, 7, 7] or None.  roi_t: [n, C, T', 7, 7] or None.
    """

    video_id: str
    timestamp: int
    context: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    track: np.ndarray
    pooled: np.ndarray
    roi: np.ndarray | None = None
    roi_t: np.ndarray | None = None


@dataclass
class VideoFeatures:
    """All keyframes of one video (or a window of them), as stored.

    Attributes:
        timestamps: int32 [K] keyframe seconds, strictly increasing.
        context: [K, C, H, W] context maps (schema dtype).
        actor_offset: int64 [K+1] CSR offsets; ``actor_offset[0] == 0``, ``[-1] == A``.
        boxes: float32 [A, 4] normalized x1, y1, x2, y2.
        scores: float32 [A].  track: int32 [A] (-1 = untracked).
        pooled: [A, C] (schema dtype).
        roi: [A, C, 7, 7] or None.  roi_t: [A, C, T', 7, 7] or None.
    """

    timestamps: np.ndarray
    context: np.ndarray
    actor_offset: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    track: np.ndarray
    pooled: np.ndarray
    roi: np.ndarray | None = None
    roi_t: np.ndarray | None = None

    @property
    def n_keyframes(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def n_actors(self) -> int:
        return int(self.boxes.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """Name -> array for every array present (optional ones only if not None)."""
        out = {name: getattr(self, name) for name in ARRAY_DTYPES}
        return {k: v for k, v in out.items() if v is not None}

    def keyframe(self, video_id: str, row: int) -> KeyframeFeatures:
        """The ``row``-th keyframe (0-based) as a ``KeyframeFeatures``."""
        a0, a1 = int(self.actor_offset[row]), int(self.actor_offset[row + 1])
        return KeyframeFeatures(
            video_id=video_id,
            timestamp=int(self.timestamps[row]),
            context=self.context[row],
            boxes=self.boxes[a0:a1],
            scores=self.scores[a0:a1],
            track=self.track[a0:a1],
            pooled=self.pooled[a0:a1],
            roi=None if self.roi is None else self.roi[a0:a1],
            roi_t=None if self.roi_t is None else self.roi_t[a0:a1],
        )

    @classmethod
    def from_keyframes(
        cls, keyframes: Sequence[KeyframeFeatures], schema: StoreSchema
    ) -> VideoFeatures:
        """Stack per-keyframe records (as an extractor produces them), casting to stored dtypes.

        Keyframes are sorted by timestamp. Raises ``StoreError`` if shapes disagree.
        """
        kfs = sorted(keyframes, key=lambda k: k.timestamp)
        counts = np.array([len(k.boxes) for k in kfs], dtype=np.int64)
        offsets = np.zeros(len(kfs) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        shapes = expected_shapes(schema, len(kfs), int(offsets[-1]))

        def stack(name: str, per_actor: bool) -> np.ndarray:
            dtype = expected_dtype(schema, name)
            parts = [np.asarray(getattr(k, name)) for k in kfs]
            if not parts:
                return np.zeros(shapes[name], dtype=dtype)
            for k, p in zip(kfs, parts, strict=True):
                want = shapes[name][1:]
                got = p.shape[1:] if per_actor else p.shape
                if tuple(got) != tuple(want):
                    raise StoreError(
                        f"video {k.video_id!r}, keyframe {k.timestamp}: {name} has shape "
                        f"{p.shape}, expected {'[n, ' if per_actor else '['}{', '.join(map(str, want))}]"
                    )
            if per_actor:
                return np.concatenate(parts).astype(dtype, copy=False).reshape(shapes[name])
            return np.stack(parts).astype(dtype, copy=False)

        return cls(
            timestamps=np.array([k.timestamp for k in kfs], dtype=np.int32),
            context=stack("context", per_actor=False),
            actor_offset=offsets,
            boxes=stack("boxes", per_actor=True),
            scores=stack("scores", per_actor=True),
            track=stack("track", per_actor=True),
            pooled=stack("pooled", per_actor=True),
            roi=stack("roi", per_actor=True) if schema.roi_shape is not None else None,
            roi_t=stack("roi_t", per_actor=True) if schema.roi_t_shape is not None else None,
        )

    def validate(self, schema: StoreSchema, video_id: str = "<unnamed>") -> None:
        """Check dtypes, shapes (vs ``schema``), CSR offsets, sorted timestamps, box ranges.

        Raises:
            StoreError: naming ``video_id``, the array, and what was expected.
        """
        k = self.n_keyframes
        a = int(self.actor_offset[-1]) if self.actor_offset.size else -1
        for name in OPTIONAL_ARRAYS:
            enabled = getattr(schema, f"{name}_shape") is not None
            present = getattr(self, name) is not None
            if enabled != present:
                raise StoreError(
                    f"video {video_id!r}: array {name!r} is "
                    f"{'missing' if enabled else 'present'} but the schema "
                    f"{'requires' if enabled else 'does not store'} it ({name}_shape="
                    f"{getattr(schema, f'{name}_shape')})"
                )
        shapes = expected_shapes(schema, k, max(a, 0))
        for name, arr in self.arrays().items():
            want_dtype = expected_dtype(schema, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != want_dtype:
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise StoreError(
                    f"video {video_id!r}: array {name!r} has dtype {got}, expected {want_dtype}"
                )
            if arr.shape != shapes[name]:
                raise StoreError(
                    f"video {video_id!r}: array {name!r} has shape {arr.shape}, expected "
                    f"{shapes[name]} (K={k} keyframes, A={a} actors from actor_offset[-1])"
                )
        off = self.actor_offset
        if off[0] != 0 or np.any(np.diff(off) < 0):
            raise StoreError(
                f"video {video_id!r}: array 'actor_offset' must start at 0 and be non-decreasing, "
                f"got {off[:8].tolist()}..."
            )
        if k > 1 and np.any(np.diff(self.timestamps) <= 0):
            bad = int(np.flatnonzero(np.diff(self.timestamps) <= 0)[0])
            raise StoreError(
                f"video {video_id!r}: array 'timestamps' must be strictly increasing; row {bad + 1} "
                f"has {self.timestamps[bad + 1]} after {self.timestamps[bad]}"
            )
        b = self.boxes
        bad_box = (
            ~np.isfinite(b).all(axis=1)
            | (b < -_BOX_TOLERANCE).any(axis=1)
            | (b > 1 + _BOX_TOLERANCE).any(axis=1)
            | (b[:, 2] < b[:, 0])
            | (b[:, 3] < b[:, 1])
        )
        if bad_box.any():
            row = int(np.flatnonzero(bad_box)[0])
            kf = int(np.searchsorted(off, row, side="right") - 1)
            raise StoreError(
                f"video {video_id!r}: array 'boxes' row {row} (keyframe {self.timestamps[kf]}) is "
                f"{b[row].tolist()}, expected normalized x1<=x2, y1<=y2 in [0, 1]"
            )
