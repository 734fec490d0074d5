"""Clip sampling around keyframes: which video frames a backbone sees for one keyframe.

Conventions used throughout `stages.video`:

- Frame indices are 0-based positions in the decoded video stream.
- Frame ``k`` is shown at ``k / fps`` seconds after the first frame (constant frame rate is
  assumed; AVA's trimmed movies are CFR).
- A keyframe timestamp ``t`` (seconds in the source movie) maps to the frame at
  ``(t - offset) * fps``, rounded half up (`center_frame`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ClipSpec", "center_frame", "round_half_up"]


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves going up (0.5 -> 1, 1.5 -> 2, -0.5 -> 0).

    Python's `round` rounds halves to even (0.5 -> 0, 1.5 -> 2), which would make the frame
    chosen for a half-frame timestamp depend on the parity of the frame number.
    """
    return math.floor(x + 0.5)


def center_frame(
    timestamp: float,
    offset: float,
    fps: float,
    *,
    num_frames: int | None = None,
    video: str | Path = "<video>",
) -> int:
    """Index of the frame shown at `timestamp`.

    Args:
        timestamp: keyframe time in seconds of the source movie (AVA: 902 ... 1798).
        offset: time in seconds of the video's first frame (AVA trimmed clips: 900).
        fps: the video's frame rate in frames per second (may be non-integer, e.g. 29.97).
        num_frames: number of frames in the video; if given, indices past the end raise.
        video: name of the video, used only in error messages.

    Returns:
        ``round_half_up((timestamp - offset) * fps)``, computed in float64.

    Raises:
        ValueError: the frame lies before the first frame or (with `num_frames`) after the
            last one. The message names the video and the timestamp.
    """
    if not fps > 0:
        raise ValueError(f"{video}: fps must be positive, got {fps}")
    frames = (float(timestamp) - float(offset)) * float(fps)
    if not math.isfinite(frames):
        raise ValueError(f"{video}: timestamp {timestamp} s (offset {offset} s) is not finite")
    index = round_half_up(frames)
    if index < 0:
        raise ValueError(
            f"{video}: timestamp {timestamp} s is before the video's first frame "
            f"(offset {offset} s, frame index {index})"
        )
    if num_frames is not None and index >= num_frames:
        last = float(offset) + (num_frames - 1) / float(fps)
        raise ValueError(
            f"{video}: timestamp {timestamp} s is after the video's last frame "
            f"(frame index {index} >= {num_frames} frames; last frame at {last:.3f} s "
            f"with offset {offset} s and {fps} fps)"
        )
    return index


@dataclass(frozen=True)
class ClipSpec:
    """How to sample a clip of `num_frames` frames around a keyframe.

    Attributes:
        num_frames: T, frames per clip.
        stride: τ, distance between consecutive clip frames, in frames of the video at its
            native fps, or, when `target_fps` is set, in frames of the video resampled to
            `target_fps` (SlowFast samples AVA at 30 fps whatever the movie's rate). For
            SlowFast 8×8 ask for the fast path's 32×2 clip; the model subsamples every α-th
            frame for the slow path.
        short_side: resize so the shorter side has this many pixels, keeping the aspect
            ratio; None keeps the native size. Used by whoever opens the `VideoReader`.
        target_fps: if set, the rate `stride` is measured at (see above).
    """

    num_frames: int
    stride: int
    short_side: int | None = None
    target_fps: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.num_frames, int) and self.num_frames >= 1):
            raise ValueError(f"ClipSpec.num_frames must be an int >= 1, got {self.num_frames!r}")
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ValueError(f"ClipSpec.stride must be an int >= 1, got {self.stride!r}")
        if self.short_side is not None and not (
            isinstance(self.short_side, int) and self.short_side >= 1
        ):
            raise ValueError(
                f"ClipSpec.short_side must be None or an int >= 1, got {self.short_side!r}"
            )
        if self.target_fps is not None and not self.target_fps > 0:
            raise ValueError(f"ClipSpec.target_fps must be None or > 0, got {self.target_fps!r}")

    @property
    def relative_positions(self) -> np.ndarray:
        """int64[T]: clip positions relative to the center, in units of `stride` frames.

        For odd T the center is the middle frame: ``-(T//2) ... +(T//2)``. For even T there is
        no middle frame; the center is the first frame of the second half:
        ``-(T//2) ... +(T//2 - 1)`` (SlowFast's convention), e.g. T=4 -> [-2, -1, 0, 1].
        """
        half = self.num_frames // 2
        return np.arange(-half, self.num_frames - half, dtype=np.int64)

    def frame_indices(
        self, center: int, num_video_frames: int, video_fps: float | None = None
    ) -> np.ndarray:
        """Frame indices of the clip around `center`.

        Args:
            center: index of the keyframe's frame (see `center_frame`).
            num_video_frames: n, frames in the video.
            video_fps: the video's native fps; required only when `target_fps` is set.

        Returns:
            int64[T], non-decreasing: ``center + p * stride`` for p in `relative_positions`
            (with `target_fps`: ``center + round_half_up(p * stride * video_fps / target_fps)``),
            clamped into [0, n-1], so clips near the ends repeat the border frame.
        """
        if num_video_frames < 1:
            raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
        if not 0 <= center < num_video_frames:
            raise ValueError(
                f"center frame {center} is outside the video's frames [0, {num_video_frames - 1}]"
            )
        steps = self.relative_positions * self.stride
        if self.target_fps is not None:
            if video_fps is None or not video_fps > 0:
                raise ValueError(
                    f"ClipSpec has target_fps={self.target_fps}: frame_indices needs the "
                    f"video's positive fps, got {video_fps!r}"
                )
            scale = float(video_fps) / float(self.target_fps)
            steps = np.floor(steps * scale + 0.5).astype(np.int64)
        return np.clip(center + steps, 0, num_video_frames - 1)
