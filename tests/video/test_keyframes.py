"""Decode-once keyframe clips: equal to random access, each frame decoded once, bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from stages.video import (
    ClipSpec,
    VideoError,
    VideoReader,
    iter_keyframe_clips,
    plan_decode,
    prefetch_keyframe_clips,
)
from tests.video.conftest import read_frame_number

# numbered_mp4: 73 frames at 10 fps; with offset 900 the keyframes 900..907 are frames 0..70.
OFFSET = 900.0
TIMES = [903.0, 900.0, 901.0, 902.0, 904.0, 905.0, 906.0, 907.0]


class RecordingReader(VideoReader):
    """A VideoReader that remembers each decoder call (to check decode order and bounds)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[np.ndarray] = []

    def get_frames(self, indices):
        self.calls.append(np.asarray(indices).copy())
        return super().get_frames(indices)


class FailingReader(VideoReader):
    """Fails on its second decoder call, as a damaged file would."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.count = 0

    def get_frames(self, indices):
        self.count += 1
        if self.count == 2:
            raise VideoError(self.path, "decoding frames failed (test)")
        return super().get_frames(indices)


def unique_needed(clips: list) -> int:
    return np.unique(np.concatenate([c.frame_indices for c in clips])).size


@pytest.mark.parametrize("short_side", [None, 48, 36])
def test_clips_equal_random_access_and_decode_each_frame_once(
    numbered_mp4: Path, short_side: int | None
) -> None:
    spec = ClipSpec(num_frames=8, stride=2, short_side=short_side)
    reader = VideoReader(numbered_mp4, short_side=short_side)
    clips = list(iter_keyframe_clips(reader, TIMES, offset=OFFSET, spec=spec))

    assert [c.timestamp for c in clips] == sorted(TIMES)
    assert [c.center_index for c in clips] == [0, 10, 20, 30, 40, 50, 60, 70]
    assert reader.decode_counter == unique_needed(clips) == 37  # the even frames 0..72

    check = VideoReader(numbered_mp4, short_side=short_side)
    for clip in clips:
        assert clip.frames.shape == (8, reader.height, reader.width, 3)
        np.testing.assert_array_equal(clip.frames, check.get_frames(clip.frame_indices))
        assert [read_frame_number(f) for f in clip.frames] == clip.frame_indices.tolist()


def test_clips_clamp_at_both_ends(numbered_mp4: Path) -> None:
    spec = ClipSpec(num_frames=8, stride=2)
    reader = VideoReader(numbered_mp4)
    first, last = iter_keyframe_clips(reader, [900.0, 907.2], offset=OFFSET, spec=spec)
    assert first.frame_indices.tolist() == [0, 0, 0, 0, 0, 2, 4, 6]
    assert last.center_index == 72
    assert last.frame_indices.tolist() == [64, 66, 68, 70, 72, 72, 72, 72]
    assert [read_frame_number(f) for f in first.frames] == first.frame_indices.tolist()
    assert [read_frame_number(f) for f in last.frames] == last.frame_indices.tolist()
    assert reader.decode_counter == 9  # 0, 2, 4, 6 and 64, 66, 68, 70, 72


def test_bikes_32x2_clips_match_random_access(bikes_mp4: Path) -> None:
    spec = ClipSpec(num_frames=32, stride=2, short_side=136)
    reader = VideoReader(bikes_mp4, short_side=136)
    times = np.arange(900, 910, dtype=np.float64)  # bikes: 25 fps, 10 s
    clips = list(iter_keyframe_clips(reader, times, offset=900, spec=spec))
    assert [c.center_index for c in clips] == list(range(0, 250, 25))
    assert reader.decode_counter == unique_needed(clips)

    check = VideoReader(bikes_mp4, short_side=136)
    for clip in clips[::3]:
        assert clip.frames.shape == (32, 136, 320, 3)
        np.testing.assert_array_equal(clip.frames, check.get_frames(clip.frame_indices))


def test_bikes_native_size_clips_match_random_access(bikes_mp4: Path) -> None:
    spec = ClipSpec(num_frames=8, stride=4)
    reader = VideoReader(bikes_mp4)
    clips = list(iter_keyframe_clips(reader, [2.0, 5.0, 9.9], offset=0, spec=spec))
    assert [c.center_index for c in clips] == [50, 125, 248]
    assert clips[-1].frame_indices.tolist() == [232, 236, 240, 244, 248, 249, 249, 249]
    assert reader.decode_counter == unique_needed(clips) == 8 + 8 + 6
    check = VideoReader(bikes_mp4)
    for clip in clips:
        np.testing.assert_array_equal(clip.frames, check.get_frames(clip.frame_indices))


def test_decoding_runs_forward_and_never_ahead_of_the_current_clip(numbered_mp4: Path) -> None:
    spec = ClipSpec(num_frames=8, stride=3)
    reader = RecordingReader(numbered_mp4)
    seen = 0
    for clip in iter_keyframe_clips(reader, TIMES, offset=OFFSET, spec=spec, chunk_size=4):
        assert max(int(c.max()) for c in reader.calls) <= clip.frame_indices.max()
        seen += 1
    decoded = np.concatenate(reader.calls)
    assert seen == len(TIMES) and all(c.size <= 4 for c in reader.calls)
    assert np.all(np.diff(decoded) > 0)  # increasing order, no frame twice


def test_plan_decodes_each_frame_once_and_holds_only_the_current_window() -> None:
    rng = np.random.default_rng(0)
    spec = ClipSpec(num_frames=6, stride=3)
    centers = np.sort(rng.integers(0, 120, size=25))
    clips = [spec.frame_indices(int(c), 120) for c in centers]
    steps = plan_decode(clips)

    held: set[int] = set()
    decoded: list[int] = []
    for step in steps:
        decoded += step.decode.tolist()
        held |= set(step.decode.tolist())
        assert set(step.clip_indices.tolist()) <= held
        lo, hi = step.clip_indices.min(), step.clip_indices.max()
        assert all(lo <= i <= hi for i in held)  # memory bound: current window only
        held -= set(step.evict.tolist())
    needed = np.unique(np.concatenate(clips))
    assert sorted(decoded) == decoded and decoded == needed.tolist()
    assert held == set()
    evicted = np.concatenate([s.evict for s in steps])
    assert sorted(evicted.tolist()) == needed.tolist()


def test_plan_for_unsorted_clips_still_decodes_once() -> None:
    clips = [np.array([10, 11]), np.array([0, 1]), np.array([10, 12])]
    steps = plan_decode(clips)
    assert [s.decode.tolist() for s in steps] == [[0, 1, 10, 11], [], [12]]
    assert [s.evict.tolist() for s in steps] == [[11], [0, 1], [10, 12]]


def test_duplicate_timestamps_give_one_clip_each(numbered_mp4: Path) -> None:
    reader = VideoReader(numbered_mp4)
    spec = ClipSpec(num_frames=4, stride=1)
    clips = list(iter_keyframe_clips(reader, [902.0, 902.0], offset=OFFSET, spec=spec))
    assert len(clips) == 2 and reader.decode_counter == 4
    np.testing.assert_array_equal(clips[0].frames, clips[1].frames)


def test_no_keyframes_no_clips(numbered_mp4: Path) -> None:
    reader = VideoReader(numbered_mp4)
    assert list(iter_keyframe_clips(reader, [], offset=OFFSET, spec=ClipSpec(4, 1))) == []
    assert reader.decode_counter == 0


def test_timestamp_outside_video_is_reported_before_decoding(numbered_mp4: Path) -> None:
    reader = VideoReader(numbered_mp4)
    spec = ClipSpec(num_frames=4, stride=1)
    with pytest.raises(ValueError, match=r"numbered.mp4: timestamp 908.0 s is after"):
        iter_keyframe_clips(reader, [901.0, 908.0], offset=OFFSET, spec=spec)
    with pytest.raises(ValueError, match=r"numbered.mp4: timestamp 899.0 s is before"):
        iter_keyframe_clips(reader, [899.0], offset=OFFSET, spec=spec)
    assert reader.decode_counter == 0


def test_spec_and_reader_sizes_must_agree(numbered_mp4: Path) -> None:
    reader = VideoReader(numbered_mp4, short_side=48)
    with pytest.raises(ValueError, match=r"short_side=None but the reader .* short_side=48"):
        iter_keyframe_clips(reader, [901.0], offset=OFFSET, spec=ClipSpec(4, 1))


def test_prefetch_yields_the_same_clips(numbered_mp4: Path) -> None:
    spec = ClipSpec(num_frames=8, stride=2)
    direct = list(iter_keyframe_clips(VideoReader(numbered_mp4), TIMES, offset=OFFSET, spec=spec))
    reader = VideoReader(numbered_mp4)
    fetched = list(prefetch_keyframe_clips(reader, TIMES, offset=OFFSET, spec=spec, depth=2))
    assert len(fetched) == len(direct)
    for a, b in zip(direct, fetched, strict=True):
        assert a.timestamp == b.timestamp
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        np.testing.assert_array_equal(a.frames, b.frames)
    assert reader.decode_counter == unique_needed(fetched)


def test_prefetch_reraises_decoding_errors_in_the_consumer(numbered_mp4: Path) -> None:
    spec = ClipSpec(num_frames=8, stride=2)
    reader = FailingReader(numbered_mp4)
    clips = prefetch_keyframe_clips(reader, TIMES, offset=OFFSET, spec=spec)
    assert next(clips).center_index == 0
    with pytest.raises(VideoError, match=r"numbered\.mp4: decoding frames failed"):
        next(clips)


def test_prefetch_thread_stops_when_the_consumer_leaves(numbered_mp4: Path) -> None:
    spec = ClipSpec(num_frames=8, stride=2)
    clips = prefetch_keyframe_clips(
        VideoReader(numbered_mp4), TIMES, offset=OFFSET, spec=spec, depth=1
    )
    next(clips)
    clips.close()  # what `break` out of a for loop does
    assert not [t for t in threading.enumerate() if t.name == "decode numbered.mp4"]
    with pytest.raises(ValueError, match="depth"):
        prefetch_keyframe_clips(VideoReader(numbered_mp4), TIMES, offset=OFFSET, spec=spec, depth=0)
