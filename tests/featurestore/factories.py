"""Small deterministic schemas and videos for feature store tests (and the worker script)."""

from __future__ import annotations

import numpy as np

from featurestore import StoreSchema, VideoFeatures


def small_schema(**overrides) -> StoreSchema:
    """A tiny schema: context 4×2×3, pooled 5, roi 5×7×7 (all sizes unlike the demo world)."""
    fields = dict(
        backbone="test_backbone",
        weights_sha256="ab" * 32,
        detector_key="det-123",
        clip={"frames": 8, "stride": 2, "fps": None, "short_side": 64},
        context_shape=(4, 2, 3),
        pooled_dim=5,
        roi_shape=(5, 7, 7),
        roi_t_shape=None,
        dtype="float16",
        extra={"pool": "max"},
    )
    fields.update(overrides)
    return StoreSchema(**fields)


def make_video(
    schema: StoreSchema, n_keyframes: int = 6, seed: int = 0, t0: int = 902, max_actors: int = 3
) -> VideoFeatures:
    """Random features with 0..max_actors actors per keyframe (some keyframes empty)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_actors + 1, n_keyframes)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    a = int(offsets[-1])
    xy = rng.uniform(0, 0.5, (a, 2))
    wh = rng.uniform(0.05, 0.5, (a, 2))
    dt = schema.np_dtype
    return VideoFeatures(
        timestamps=(t0 + np.arange(n_keyframes) * 1).astype(np.int32),
        context=rng.standard_normal((n_keyframes, *schema.context_shape)).astype(dt),
        actor_offset=offsets,
        boxes=np.concatenate([xy, xy + wh], axis=1).astype(np.float32),
        scores=rng.uniform(0.5, 1, a).astype(np.float32),
        track=rng.integers(-1, 5, a).astype(np.int32),
        pooled=rng.standard_normal((a, schema.pooled_dim)).astype(dt),
        roi=None
        if schema.roi_shape is None
        else rng.standard_normal((a, *schema.roi_shape)).astype(dt),
        roi_t=None
        if schema.roi_t_shape is None
        else rng.standard_normal((a, *schema.roi_t_shape)).astype(dt),
    )


def assert_same(a: VideoFeatures, b: VideoFeatures) -> None:
    """Bitwise equality of every array (dtype included)."""
    arrays_a, arrays_b = a.arrays(), b.arrays()
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype, name
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
