"""Locating a dataset's video files and probing them with decord (frame count, fps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .names import name_problem

# Looked up in this order for ``<videos_dir>/<video_id>.<ext>``.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class VideoInfo:
    """What decord reports for one video file.

    Attributes:
        path: the file.
        frames: number of frames decord indexes.
        fps: average frames per second.
        width, height: frame size in pixels.
    """

    path: Path
    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        """Length in seconds (frames / fps)."""
        return self.frames / self.fps

    def frame_at(self, seconds: float) -> int:
        """Index of the frame shown at ``seconds`` into the file, clamped to the last frame
        (a keyframe exactly at the end of the video is its last frame)."""
        return min(int(seconds * self.fps), self.frames - 1)


def find_video(videos_dir: Path, video_id: str) -> Path | None:
    """``<videos_dir>/<video_id>.<ext>`` for the first extension in VIDEO_EXTENSIONS that
    exists, or None.

    Raises:
        DataError: ``video_id`` is not a plain file name (``../x`` would leave the
            directory); the CSV readers name the row, this guards every other source.
    """
    problem = name_problem(video_id)
    if problem is not None:
        raise DataError(
            videos_dir, None, f"video id {video_id!r} {problem}; refusing to look it up"
        )
    for ext in VIDEO_EXTENSIONS:
        candidate = videos_dir / f"{video_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _reader(path: Path) -> Any:  # a decord.VideoReader (decord has no types)
    import decord  # imported here: only dataset checks and video stages need it

    try:
        return decord.VideoReader(str(path), num_threads=1)
    except Exception as err:  # decord raises its own DECORDError and RuntimeError
        raise DataError(path, None, f"unreadable video (decord: {_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path`` with decord and read its frame count, fps and size.

    Raises:
        DataError: the file cannot be opened or has no frames.
    """
    path = Path(path)
    reader = _reader(path)
    frames = len(reader)
    fps = float(reader.get_avg_fps())
    if frames <= 0 or not fps > 0:
        raise DataError(path, None, f"video has {frames} frames at {fps} fps (expected > 0)")
    height, width = reader[0].shape[:2]
    return VideoInfo(path=path, frames=frames, fps=fps, width=int(width), height=int(height))


def check_frame_decodes(path: str | Path, index: int) -> None:
    """Decode frame ``index`` (catches files truncated after their header was written).

    Raises:
        DataError: the frame cannot be decoded.
    """
    path = Path(path)
    reader = _reader(path)
    try:
        reader[index].asnumpy()
    except Exception as err:  # decord raises DECORDError/RuntimeError/IndexError
        raise DataError(
            path,
            None,
            f"frame {index} of {len(reader)} does not decode (truncated?): {_first_line(err)}",
        ) from err
