"""ClipSpec.frame_indices and center_frame: sampling conventions, clamping, rounding."""

from __future__ import annotations

import numpy as np
import pytest

from stages.video import ClipSpec, center_frame, round_half_up


def test_even_clip_has_one_more_frame_before_the_center() -> None:
    spec = ClipSpec(num_frames=4, stride=2)
    np.testing.assert_array_equal(spec.frame_indices(10, 100), [6, 8, 10, 12])


def test_odd_clip_is_centered() -> None:
    spec = ClipSpec(num_frames=5, stride=3)
    np.testing.assert_array_equal(spec.frame_indices(10, 100), [4, 7, 10, 13, 16])


def test_slowfast_fast_path_clip() -> None:
    indices = ClipSpec(num_frames=32, stride=2).frame_indices(100, 1000)
    assert indices.shape == (32,) and indices.dtype == np.int64
    assert indices[0] == 100 - 32 and indices[-1] == 100 + 30 and indices[16] == 100
    np.testing.assert_array_equal(np.diff(indices), 2)


def test_clamping_repeats_border_frames_at_both_ends() -> None:
    spec = ClipSpec(num_frames=6, stride=2)
    np.testing.assert_array_equal(spec.frame_indices(1, 8), [0, 0, 0, 1, 3, 5])
    np.testing.assert_array_equal(spec.frame_indices(6, 8), [0, 2, 4, 6, 7, 7])
    np.testing.assert_array_equal(spec.frame_indices(0, 1), [0] * 6)


def test_target_fps_measures_stride_at_the_resampled_rate() -> None:
    # A 25 fps video sampled as if it were 30 fps: 2 frames at 30 fps = 1.667 native frames.
    spec = ClipSpec(num_frames=4, stride=2, target_fps=30.0)
    np.testing.assert_array_equal(spec.frame_indices(50, 200, video_fps=25.0), [47, 48, 50, 52])
    # At the same rate it is the plain stride.
    same = ClipSpec(num_frames=4, stride=2, target_fps=25.0)
    np.testing.assert_array_equal(same.frame_indices(50, 200, video_fps=25.0), [46, 48, 50, 52])
    with pytest.raises(ValueError, match="fps"):
        spec.frame_indices(50, 200)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0, "stride": 1},
        {"num_frames": 8, "stride": 0},
        {"num_frames": 8, "stride": 1, "short_side": 0},
        {"num_frames": 8, "stride": 1, "target_fps": -1.0},
    ],
)
def test_invalid_spec_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="ClipSpec"):
        ClipSpec(**kwargs)


def test_center_outside_video_raises() -> None:
    with pytest.raises(ValueError, match="center frame 8"):
        ClipSpec(num_frames=2, stride=1).frame_indices(8, 8)


def test_round_half_up_differs_from_python_round_on_even_halves() -> None:
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, -0.5, 2.49)] == [1, 2, 3, 0, 2]


def test_center_frame_with_offset_and_ntsc_fps() -> None:
    fps = 30000 / 1001  # 29.97
    assert center_frame(900, 900, fps) == 0
    assert center_frame(902, 900, fps) == 60  # 59.94 -> 60
    assert center_frame(1798, 900, fps) == 26_913  # 898 s * 29.97 = 26913.09
    assert center_frame(905, 900, fps) == 150  # 149.85 -> 150
    assert center_frame(900.0164, 900, fps) == 0  # 0.4915 frames


def test_center_frame_rounds_halves_up() -> None:
    # fps 2: 0.25 s past the offset is exactly half a frame (binary-exact floats).
    assert center_frame(900.25, 900, 2.0) == 1
    assert center_frame(900.75, 900, 2.0) == 2  # Python round(1.5) would also give 2
    assert center_frame(901.25, 900, 2.0) == 3  # Python round(2.5) would give 2


def test_center_frame_out_of_range_names_video_and_timestamp() -> None:
    with pytest.raises(ValueError, match=r"clip7: timestamp 899.0 s is before"):
        center_frame(899.0, 900, 25.0, video="clip7")
    with pytest.raises(ValueError, match=r"clip7: timestamp 904 s is after .* 100 frames"):
        center_frame(904, 900, 25.0, num_frames=100, video="clip7")
    assert center_frame(903.96, 900, 25.0, num_frames=100) == 99


def test_center_frame_rejects_non_finite_timestamps() -> None:
    with pytest.raises(ValueError, match=r"clip7: timestamp nan s .* not finite"):
        center_frame(float("nan"), 900, 25.0, video="clip7")
