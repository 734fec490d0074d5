"""StoreSchema: validation, JSON round trip, diff messages, size projections."""

from __future__ import annotations

import pytest

from featurestore import (
    StoreError,
    StoreSchema,
    chunk_rows,
    describe_store_estimate,
    estimate_store_bytes,
    format_bytes,
)
from tests.featurestore.factories import small_schema


def test_json_round_trip_normalises_tuples() -> None:
    schema = small_schema(roi_t_shape=[5, 2, 7, 7])
    back = StoreSchema.from_json(schema.to_json())
    assert back == schema
    assert back.roi_t_shape == (5, 2, 7, 7)
    assert back.diff(schema) == []


def test_diff_names_each_field_with_both_values() -> None:
    a = small_schema()
    b = small_schema(
        pooled_dim=7, clip={"frames": 32, "stride": 2, "fps": 30.0, "short_side": 64}, extra={}
    )
    assert a.diff(b) == [
        "clip.fps: None != 30.0",
        "clip.frames: 8 != 32",
        "pooled_dim: 5 != 7",
        "extra.pool: 'max' != '<absent>'",
    ]


def test_rejects_bad_fields() -> None:
    with pytest.raises(StoreError, match="bfloat16 is not a zarr dtype"):
        small_schema(dtype="bfloat16")
    with pytest.raises(StoreError, match=r"missing \['short_side'\]"):
        small_schema(clip={"frames": 8, "stride": 2, "fps": None})
    with pytest.raises(StoreError, match="context_shape must be 3 positive ints"):
        small_schema(context_shape=(4, 0, 3))
    with pytest.raises(StoreError, match="JSON-serialisable"):
        small_schema(extra={"f": object()})


def test_estimate_matches_design_figure() -> None:
    # docs/design.md §3: SlowFast-R50 res5 2304×16×22 f16 ≈ 1.6 MB per keyframe, ~400 GB for AVA.
    full = small_schema(context_shape=(2304, 16, 22), pooled_dim=2304, roi_shape=None)
    per_kf = estimate_store_bytes(full, 1, 0)
    assert per_kf == 2304 * 16 * 22 * 2 + 12
    ava = estimate_store_bytes(full, 268_000, 670_000)
    assert 430e9 < ava < 440e9
    text = describe_store_estimate(full, 268_000, 670_000, label="AVA v2.2 train+val")
    assert text.startswith("AVA v2.2 train+val ≈ 43")
    assert "GB" in text and "1.6 MB/keyframe" in text
    pooled = small_schema(context_shape=(2304, 8, 8), pooled_dim=2304, roi_shape=None)
    assert estimate_store_bytes(pooled, 268_000, 670_000) < ava / 5


def test_estimate_counts_optional_arrays() -> None:
    base = small_schema(roi_shape=None)
    with_roi = small_schema()
    assert estimate_store_bytes(with_roi, 0, 1) - estimate_store_bytes(base, 0, 1) == 5 * 49 * 2
    assert estimate_store_bytes(base, 0, 1) == 16 + 4 + 4 + 5 * 2
    with pytest.raises(StoreError, match=">= 0"):
        estimate_store_bytes(base, -1, 0)


def test_format_bytes() -> None:
    assert format_bytes(999) == "999 B"
    assert format_bytes(1_620_000) == "1.6 MB"
    assert format_bytes(434e9) == "434.0 GB"


def test_chunk_rows_reach_target_or_array_length() -> None:
    # 256×8×8 f16 = 32 KiB per row -> 32 rows reach 1 MiB.
    assert chunk_rows((60, 256, 8, 8), 2, 1 << 20) == 32
    assert chunk_rows((10, 256, 8, 8), 2, 1 << 20) == 10
    # A full SlowFast map is bigger than the target: one keyframe per chunk.
    assert chunk_rows((60, 2304, 16, 22), 2, 1 << 20) == 1
    assert chunk_rows((0, 4), 4, 1 << 20) == 1
