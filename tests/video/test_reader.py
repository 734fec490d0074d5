"""VideoReader: sizes, random access to the right frames, decode counting, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.video import VideoError, VideoReader
from tests.video.conftest import HEIGHT, WIDTH, read_frame_number, write_numbered_video


def test_properties_of_a_written_video(numbered_mp4: Path) -> None:
    reader = VideoReader(numbered_mp4)
    assert (reader.num_frames, reader.fps) == (73, 10.0)
    assert (reader.width, reader.height) == (WIDTH, HEIGHT)
    assert reader.path == numbered_mp4 and reader.short_side is None
    assert reader.decode_counter == 0


def test_get_frames_returns_the_requested_frames_in_order(numbered_mp4: Path) -> None:
    reader = VideoReader(numbered_mp4)
    wanted = [40, 3, 72, 3, 0, 41]
    frames = reader.get_frames(wanted)
    assert frames.shape == (6, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert [read_frame_number(f) for f in frames] == wanted
    np.testing.assert_array_equal(frames[1], frames[3])
    assert reader.decode_counter == 5  # the repeated 3 is decoded once


def test_every_frame_decodes_to_its_own_number(numbered_mp4: Path) -> None:
    frames = VideoReader(numbered_mp4).get_frames(np.arange(73))
    assert [read_frame_number(f) for f in frames] == list(range(73))


@pytest.mark.parametrize(
    ("short_side", "size"),
    [(48, (64, 48)), (40, (53, 40)), (36, (48, 36)), (96, (WIDTH, HEIGHT))],
)
def test_short_side_resizes_keeping_aspect(
    numbered_mp4: Path, short_side: int, size: tuple[int, int]
) -> None:
    # 48 px wide is a width decord 0.6.0 resizes wrongly: the reader falls back to torch.
    reader = VideoReader(numbered_mp4, short_side=short_side)
    assert (reader.width, reader.height) == size
    frames = reader.get_frames([5, 60])
    assert frames.shape == (2, size[1], size[0], 3)
    assert [read_frame_number(f) for f in frames] == [5, 60]


def test_resized_frames_stay_close_to_the_native_content(numbered_mp4: Path) -> None:
    native = VideoReader(numbered_mp4).get_frames([30])[0]
    half = VideoReader(numbered_mp4, short_side=HEIGHT // 2).get_frames([30])[0]
    block_means = native.reshape(HEIGHT // 2, 2, WIDTH // 2, 2, 3).mean(axis=(1, 3))
    assert np.abs(half.astype(np.float64) - block_means).mean() < 6.0


def test_bikes_properties_and_resize(bikes_mp4: Path) -> None:
    reader = VideoReader(bikes_mp4)
    assert (reader.width, reader.height, reader.num_frames, reader.fps) == (640, 272, 250, 25.0)
    small = VideoReader(bikes_mp4, short_side=136)
    assert (small.width, small.height) == (320, 136)
    native, resized = reader.get_frames([120])[0], small.get_frames([120])[0]
    downsampled = native.reshape(136, 2, 320, 2, 3).mean(axis=(1, 3))
    assert np.abs(resized.astype(np.float64) - downsampled).mean() < 4.0


def test_out_of_range_and_malformed_indices(numbered_mp4: Path) -> None:
    reader = VideoReader(numbered_mp4)
    with pytest.raises(IndexError, match=r"numbered.mp4: frame indices 0..73 outside .* 73"):
        reader.get_frames([0, 73])
    with pytest.raises(IndexError):
        reader.get_frames([-1])
    with pytest.raises(TypeError, match="1-D integer"):
        reader.get_frames(np.array([1.0, 2.0]))
    assert reader.get_frames([]).shape == (0, HEIGHT, WIDTH, 3)
    assert reader.decode_counter == 0


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoError, match=r"nope\.mp4: no such video file") as info:
        VideoReader(missing)
    assert isinstance(info.value, ValueError) and info.value.path == missing


def test_non_video_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("video_id,timestamp\nabc,902\n")
    with pytest.raises(VideoError, match=r"notes\.mp4: not a readable video"):
        VideoReader(text)


@pytest.mark.parametrize(
    ("name", "codec", "reason"),
    [
        ("cut.mp4", "libx264", "not a readable video"),  # moov atom lost with the tail
        ("cut.mkv", "libx264", r"truncated video: the container declares 7.300 s"),
        ("cut.avi", "mpeg4", r"truncated video: the container declares 73 frames"),
    ],
)
def test_truncated_file(tmp_path: Path, name: str, codec: str, reason: str) -> None:
    # decord opens the cut .mkv and .avi as shorter videos; the reader must not.
    full = write_numbered_video(tmp_path / f"full_{name}", 73, codec=codec)
    data = full.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=f"{name}: {reason}"):
        VideoReader(cut)
    with pytest.raises(VideoError, match=f"{name}: {reason}"):
        VideoReader(cut, short_side=48)


def test_closed_reader_refuses_to_decode(numbered_mp4: Path) -> None:
    with VideoReader(numbered_mp4) as reader:
        assert reader.get_frames([1]).shape[0] == 1
    with pytest.raises(VideoError, match="closed"):
        reader.get_frames([1])


def test_frames_are_numpy_whatever_decord_bridge_is_set(numbered_mp4: Path) -> None:
    import decord

    decord.bridge.set_bridge("torch")  # another library may have done this
    try:
        frames = VideoReader(numbered_mp4, short_side=36).get_frames([7, 2])
    finally:
        decord.bridge.set_bridge("native")
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8
    assert [read_frame_number(f) for f in frames] == [7, 2]
