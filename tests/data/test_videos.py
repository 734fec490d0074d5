"""Probing video files with decord: real videos, PyAV-written ones, broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.data import DataError
from stages.data.videos import check_frame_decodes, find_video, probe_video
from tests.data.conftest import write_video


def test_probe_real_video(bikes_mp4: Path) -> None:
    info = probe_video(bikes_mp4)
    assert (info.frames, info.width, info.height) == (250, 640, 272)
    assert info.duration == pytest.approx(250 / info.fps)
    check_frame_decodes(bikes_mp4, info.frames - 1)


def test_frame_at_clamps_the_end_of_the_video(tmp_path: Path) -> None:
    info = probe_video(write_video(tmp_path / "v.mp4", seconds=3, fps=4))
    assert (info.frames, info.fps) == (12, 4.0)
    assert [info.frame_at(s) for s in (0.0, 1.0, 2.9, 3.0)] == [0, 4, 11, 11]


def test_broken_videos(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(DataError, match=r"garbage.mp4: unreadable video \(decord: "):
        probe_video(garbage)
    good = write_video(tmp_path / "good.mkv", seconds=2)
    with pytest.raises(DataError, match=r"good.mkv: frame 99 of 8 does not decode"):
        check_frame_decodes(good, 99)


def test_find_video_extension_order(tmp_path: Path) -> None:
    assert find_video(tmp_path, "a") is None
    write_video(tmp_path / "a.webm", seconds=1)
    assert find_video(tmp_path, "a") == tmp_path / "a.webm"
    write_video(tmp_path / "a.mp4", seconds=1)
    assert find_video(tmp_path, "a") == tmp_path / "a.mp4"  # mp4 is looked up first
