"""Video decoding for feature extraction: clip sampling, a decord reader, decode-once clips."""

from stages.video.clips import ClipSpec, center_frame, round_half_up
from stages.video.keyframes import (
    DecodeStep,
    KeyframeClip,
    iter_keyframe_clips,
    plan_decode,
    prefetch_keyframe_clips,
)
from stages.video.reader import VideoError, VideoReader

__all__ = [
    "ClipSpec",
    "DecodeStep",
    "KeyframeClip",
    "VideoError",
    "VideoReader",
    "center_frame",
    "iter_keyframe_clips",
    "plan_decode",
    "prefetch_keyframe_clips",
    "round_half_up",
]
