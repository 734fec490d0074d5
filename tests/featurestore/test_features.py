"""VideoFeatures validation and stacking from per-keyframe records."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore import KeyframeFeatures, StoreError, VideoFeatures
from tests.featurestore.factories import assert_same, make_video, small_schema


def test_valid_video_passes() -> None:
    schema = small_schema()
    make_video(schema, seed=0).validate(schema, "v")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda f: setattr(f, "timestamps", f.timestamps.astype(np.int64)),
            "'timestamps' has dtype int64",
        ),
        (
            lambda f: setattr(f, "context", f.context[:, :2]),
            r"'context' has shape \(6, 2, 2, 3\), expected \(6, 4, 2, 3\)",
        ),
        (lambda f: setattr(f, "roi", None), "'roi' is missing but the schema requires it"),
        (lambda f: f.timestamps.__setitem__(3, 902), "strictly increasing; row 3 has 902"),
        (lambda f: f.boxes.__setitem__((0, 2), 1.5), "'boxes' row 0 .* expected normalized"),
        (lambda f: f.actor_offset.__setitem__(0, 1), "'actor_offset' must start at 0"),
    ],
)
def test_validate_names_video_and_problem(mutate, message: str) -> None:
    schema = small_schema()
    feats = make_video(schema, seed=0, max_actors=4)
    mutate(feats)
    with pytest.raises(StoreError, match=f"video 'vid7': .*{message}"):
        feats.validate(schema, "vid7")


def test_actor_count_must_match_offsets() -> None:
    schema = small_schema()
    feats = make_video(schema, seed=0)
    feats.actor_offset[-1] += 1
    with pytest.raises(StoreError, match=r"'boxes' has shape .* A=\d+ actors from actor_offset"):
        feats.validate(schema, "v")


def test_from_keyframes_sorts_and_casts() -> None:
    schema = small_schema()
    feats = make_video(schema, seed=4)
    kfs = [feats.keyframe("v", row) for row in range(feats.n_keyframes)][::-1]
    # Extractors produce float32 from torch; stacking casts to the store dtype.
    kfs = [
        KeyframeFeatures(
            k.video_id,
            k.timestamp,
            k.context.astype(np.float32),
            k.boxes,
            k.scores,
            k.track,
            k.pooled.astype(np.float32),
            k.roi,
        )
        for k in kfs
    ]
    stacked = VideoFeatures.from_keyframes(kfs, schema)
    stacked.validate(schema, "v")
    assert_same(stacked, feats)


def test_from_keyframes_shape_error_names_keyframe() -> None:
    schema = small_schema()
    kf = make_video(schema, seed=4).keyframe("v", 0)
    kf.context = kf.context[:, :1]
    with pytest.raises(StoreError, match=r"video 'v', keyframe 902: context has shape"):
        VideoFeatures.from_keyframes([kf], schema)


def test_empty_video() -> None:
    schema = small_schema()
    empty = VideoFeatures.from_keyframes([], schema)
    empty.validate(schema, "v")
    assert empty.n_keyframes == 0 and empty.n_actors == 0
