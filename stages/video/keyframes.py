"""Clips around every keyframe of one video, decoding each needed frame exactly once.

Feature extraction wants a T-frame clip around each 1 fps keyframe; with 32×2 clips at
30 fps neighbouring clips share about half their frames. Reading each clip by random access
decodes shared frames twice and makes the decoder seek back to a key frame for every clip.
Here the union of needed frames is decoded once, in increasing order, and clips are
assembled from a small cache that only holds frames a later clip still needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from stages.framework.background import in_background
from stages.video.clips import ClipSpec, center_frame
from stages.video.reader import VideoReader

__all__ = [
    "DecodeStep",
    "KeyframeClip",
    "iter_keyframe_clips",
    "plan_decode",
    "prefetch_keyframe_clips",
]


@dataclass(frozen=True)
class KeyframeClip:
    """The clip around one keyframe.

    Attributes:
        timestamp: keyframe time in seconds of the source movie, as given by the caller.
        center_index: index of the keyframe's frame in the video.
        frame_indices: int64[T] video frame indices of the clip (see `ClipSpec.frame_indices`).
        frames: uint8[T, H, W, 3] RGB frames, H and W those of the reader (after resizing).
    """

    timestamp: float
    center_index: int
    frame_indices: np.ndarray
    frames: np.ndarray


@dataclass(frozen=True)
class DecodeStep:
    """What to do for one clip: decode `decode` first, assemble the clip, then drop `evict`.

    Attributes:
        clip_indices: int64[T] frame indices of the clip.
        decode: int64[D] sorted frame indices not decoded by earlier steps; every index of
            `clip_indices` is decoded by this step or an earlier one.
        evict: int64[E] frame indices no later clip needs.
    """

    clip_indices: np.ndarray
    decode: np.ndarray
    evict: np.ndarray


def plan_decode(clips: Sequence[np.ndarray]) -> list[DecodeStep]:
    """Plan decode-once assembly of `clips`, given in the order they will be emitted.

    Every frame needed by any clip appears in exactly one step's `decode` and, after the
    last clip that uses it, in exactly one step's `evict`. A step decodes only frames up to
    its own clip's last index, so when clip windows move forward (sorted keyframes) the
    frames held between steps all lie inside the current clip's index range. Clips in any
    other order are still decoded once each, but more frames may be held at a time.

    Args:
        clips: int[T_i] frame indices per clip, each non-decreasing.

    Returns:
        One `DecodeStep` per clip, same order.
    """
    last_use: dict[int, int] = {}
    for step, indices in enumerate(clips):
        for index in np.unique(indices).tolist():
            last_use[index] = step
    needed = np.array(sorted(last_use), dtype=np.int64)

    evict_at: list[list[int]] = [[] for _ in clips]
    for index, step in last_use.items():
        evict_at[step].append(index)

    steps: list[DecodeStep] = []
    decoded_upto = 0  # the decoded frames are always the prefix needed[:decoded_upto]
    for step, indices in enumerate(clips):
        clip_indices = np.asarray(indices, dtype=np.int64)
        # Every index of this clip is <= its max, so it lies in needed[:stop].
        stop = max(decoded_upto, int(np.searchsorted(needed, clip_indices.max(), side="right")))
        steps.append(
            DecodeStep(
                clip_indices=clip_indices,
                decode=needed[decoded_upto:stop],
                evict=np.array(sorted(evict_at[step]), dtype=np.int64),
            )
        )
        decoded_upto = stop
    return steps


def iter_keyframe_clips(
    reader: VideoReader,
    timestamps: Sequence[float] | np.ndarray,
    *,
    offset: float,
    spec: ClipSpec,
    chunk_size: int | None = None,
    fps: float | None = None,
) -> Iterator[KeyframeClip]:
    """Clips around the keyframes of ONE video, each needed frame decoded exactly once.

    Keyframes are emitted in increasing timestamp order (ties keep their input order). All
    frames any clip needs are decoded once, in increasing index order, just before the first
    clip that needs them; a frame is dropped after the last clip that uses it. So
    `reader.decode_counter` grows by the number of distinct frame indices the clips need,
    and between clips only frames inside the current clip's index range are held.

    Args:
        reader: the video, opened with ``short_side=spec.short_side``. Used only by the
            returned iterator; do not read from it while iterating from another thread.
        timestamps: keyframe times in seconds of the source movie.
        offset: time in seconds of the video's first frame (AVA trimmed clips: 900).
        spec: clip sampling.
        chunk_size: decode at most this many frames per decoder call (None: all frames new
            to a clip in one call). Bounds the size of a single decoded batch.
        fps: video frames per timestamp unit; None: the reader's fps (timestamps in
            seconds). Tube datasets count timestamps in frames: ``fps=1, offset=1`` maps
            frame number t to frame index t - 1.

    Returns:
        An iterator of `KeyframeClip` with frames uint8[T, H, W, 3].

    Raises:
        ValueError (immediately): a timestamp maps outside the video (message names video
            and timestamp), or the reader's size does not follow `spec.short_side`.
        VideoError (while iterating): decoding failed.
    """
    if spec.short_side != reader.short_side:
        raise ValueError(
            f"{reader.path}: clip spec wants short_side={spec.short_side} but the reader was "
            f"opened with short_side={reader.short_side}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be None or >= 1, got {chunk_size}")
    times = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    order = np.argsort(times, kind="stable")
    centers = [
        center_frame(
            float(times[k]),
            offset,
            reader.fps if fps is None else fps,
            num_frames=reader.num_frames,
            video=reader.path,
        )
        for k in order
    ]
    clips = [spec.frame_indices(c, reader.num_frames, reader.fps) for c in centers]
    steps = plan_decode(clips)
    keyframes = [(float(times[k]), c) for k, c in zip(order, centers, strict=True)]
    return _assemble(reader, steps, keyframes, chunk_size)


def _assemble(
    reader: VideoReader,
    steps: list[DecodeStep],
    keyframes: list[tuple[float, int]],
    chunk_size: int | None,
) -> Iterator[KeyframeClip]:
    cache: dict[int, np.ndarray] = {}  # frame index -> uint8[H, W, 3]
    for step, (timestamp, center) in zip(steps, keyframes, strict=True):
        size = chunk_size or max(1, step.decode.size)
        for start in range(0, step.decode.size, size):
            chunk = step.decode[start : start + size]
            frames = reader.get_frames(chunk)
            cache.update(zip(chunk.tolist(), frames, strict=True))
        clip = np.stack([cache[i] for i in step.clip_indices.tolist()])  # (T, H, W, 3)
        for index in step.evict.tolist():
            del cache[index]
        yield KeyframeClip(
            timestamp=timestamp,
            center_index=center,
            frame_indices=step.clip_indices,
            frames=clip,
        )


def prefetch_keyframe_clips(
    reader: VideoReader,
    timestamps: Sequence[float] | np.ndarray,
    *,
    offset: float,
    spec: ClipSpec,
    depth: int = 2,
    chunk_size: int | None = None,
    fps: float | None = None,
) -> Iterator[KeyframeClip]:
    """`iter_keyframe_clips` decoded in a background thread, up to `depth` clips ahead.

    Lets decoding overlap with the consumer's work (decord releases the GIL while it
    decodes). Errors raised while decoding are re-raised in the consumer, with their
    original traceback. Closing the iterator early (``break``) stops the thread after its
    current decoder call. The thread starts at the first ``next()``.

    Args: as `iter_keyframe_clips`, plus ``depth``: clips held ready, >= 1. Peak memory is
    about ``depth + 2`` clips.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    clips = iter_keyframe_clips(
        reader, timestamps, offset=offset, spec=spec, chunk_size=chunk_size, fps=fps
    )
    return in_background(clips, depth=depth, name=f"decode {reader.path.name}")
