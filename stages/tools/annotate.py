"""Annotated video: person boxes, track ids and top actions drawn on every frame, as MP4.

Each frame shows the labels of its nearest keyframe (keyframes are one second apart, so a
box is held for half a second either side of the frame it was detected on), the way AVA
visualisations are usually made. Frames are decoded with the project's reader (the same
frame indexing as extraction) and encoded with PyAV (H.264, yuv420p). yuv420p needs even
sides: an odd-sized video gets one black row / column added at the bottom / right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stages.video import VideoReader, round_half_up

DECODE_CHUNK = 16  # frames decoded per reader call (bounds memory on long videos)
# Distinct, readable colours; track t gets PALETTE[t % len].
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


@dataclass(frozen=True)
class KeyframeLabels:
    """What to draw for one keyframe.

    Attributes:
        second: the keyframe's time in seconds from the video's first frame.
        boxes: float [n, 4] normalized x1, y1, x2, y2.
        track: int [n] track id of each box (-1: none).
        lines: per box, the text lines under its id (e.g. ``"walk 0.91"``).
    """

    second: float
    boxes: np.ndarray
    track: np.ndarray
    lines: Sequence[Sequence[str]]


def even_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the encoded video: each side rounded up to even (yuv420p)."""
    return height + height % 2, width + width % 2


def draw_labels(frame: np.ndarray, labels: KeyframeLabels | None) -> np.ndarray:
    """The frame uint8 [H, W, 3] with the boxes, ids and action lines drawn on a copy."""
    if labels is None or not len(labels.boxes):
        return frame
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    height, width = frame.shape[:2]
    scale = np.array([width, height, width, height], dtype=np.float64)
    for box, track, lines in zip(labels.boxes, labels.track, labels.lines, strict=True):
        x1, y1, x2, y2 = (np.asarray(box, dtype=np.float64) * scale).tolist()
        colour = PALETTE[int(track) % len(PALETTE)] if track >= 0 else (255, 255, 255)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        text = "\n".join([f"#{int(track)}" if track >= 0 else "#?", *lines])
        left, top, right, bottom = draw.multiline_textbbox((x1 + 3, y1 + 2), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.multiline_text((x1 + 3, y1 + 2), text, fill=colour, font=font)
    return np.asarray(image)


def write_annotated_video(
    source: Path, target: Path, labels: Sequence[KeyframeLabels], *, num_frames: int
) -> int:
    """Draw ``labels`` on the first ``num_frames`` frames of ``source`` into ``target`` (MP4).

    Frame ``f`` (at ``f / fps`` s) shows the labels of the keyframe whose second is
    nearest (``round_half_up(f / fps)``), or nothing when that keyframe has none. The
    output keeps the source's frame rate and size (rounded up to even sides).

    Returns:
        The number of frames written (``num_frames``).
    """
    by_second = {round_half_up(float(k.second)): k for k in labels}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.mp4")
    with VideoReader(source) as reader:
        if not 1 <= num_frames <= reader.num_frames:
            raise ValueError(
                f"{source}: asked to annotate {num_frames} frames, the video has "
                f"{reader.num_frames}"
            )
        fps = reader.fps
        height, width = even_size(reader.height, reader.width)
        rate = Fraction(fps).limit_denominator(1001)
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            stream.height, stream.width = height, width
            stream.options = {"crf": "23", "preset": "veryfast"}
            for start in range(0, num_frames, DECODE_CHUNK):
                index = np.arange(start, min(start + DECODE_CHUNK, num_frames))
                for f, frame in zip(index.tolist(), reader.get_frames(index), strict=True):
                    drawn = draw_labels(frame, by_second.get(round_half_up(f / fps)))
                    if drawn.shape[:2] != (height, width):
                        padded = np.zeros((height, width, 3), np.uint8)
                        padded[: drawn.shape[0], : drawn.shape[1]] = drawn
                        drawn = padded
                    out = av.VideoFrame.from_ndarray(np.ascontiguousarray(drawn), format="rgb24")
                    out.pts = f
                    out.time_base = 1 / rate
                    for packet in stream.encode(out):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    tmp.replace(target)
    return num_frames
