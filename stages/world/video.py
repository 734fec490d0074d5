"""Render a scripted scene frame by frame and encode it as an H.264 mp4 with PyAV."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stages.world.figure import FigureState, Rect, figure_primitives
from stages.world.labels import figure_state
from stages.world.render import paint
from stages.world.stories import Scene

Sprite = tuple[int, int, np.ndarray, np.ndarray]  # left, top, rgb [h, w, 3], mask [h, w]


def render_sprite(state: FigureState) -> Sprite:
    """Paint one figure on its own small canvas.

    The figure is drawn at the fractional part of its position, so a sprite serves every
    frame whose state differs only in whole-pixel position. Returns the canvas offset
    relative to the integer foot position, the colours and the coverage mask.
    """
    ix, iy = math.floor(state.x), math.floor(state.y)
    pad_x, pad_y = math.ceil(0.8 * state.h) + 2, math.ceil(1.1 * state.h) + 2
    local = dataclasses.replace(state, x=state.x - ix + pad_x, y=state.y - iy + pad_y)
    canvas = np.zeros((pad_y + math.ceil(0.2 * state.h) + 2, 2 * pad_x, 4), dtype=np.uint8)
    for q in figure_primitives(local):
        paint(canvas, q, (*q.colour, 255))
    return -pad_x, -pad_y, canvas[..., :3].copy(), canvas[..., 3] > 0


def paste(img: np.ndarray, sprite: Sprite, x: float, y: float) -> None:
    """Paste ``sprite`` into ``img`` for a figure whose feet are at (x, y)."""
    left, top, rgb, mask = sprite
    x0, y0 = math.floor(x) + left, math.floor(y) + top
    h, w = img.shape[:2]
    c0, r0 = max(x0, 0), max(y0, 0)
    c1, r1 = min(x0 + rgb.shape[1], w), min(y0 + rgb.shape[0], h)
    if c0 >= c1 or r0 >= r1:
        return
    m = mask[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
    img[r0:r1, c0:c1][m] = rgb[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0][m]


def scene_frames(scene: Scene, fps: int) -> Iterator[np.ndarray]:
    """Yield the scene's frames, uint8 RGB [H, W, 3], one per video frame."""
    room = scene.background.copy()
    for q in scene.table.primitives():  # the table never moves: paint it once
        paint(room, q)
    ox, oy = scene.object_spot
    r = 0.045 * scene.table.h
    on_table = Rect(ox - r, oy - r, ox + r, oy + r, scene.object_colours[2])
    n = scene.tracks[0].n
    sprites: dict[FigureState, Sprite] = {}
    for f in range(n):
        img = room.copy()
        if scene.object_on_table[f]:
            paint(img, on_table)
        # Far persons first so that nearer ones occlude them.
        present = [tr for tr in scene.tracks if tr.present[f]]
        for tr in sorted(present, key=lambda t: (float(t.y[f]), t.person_id)):
            state = figure_state(scene, tr, f, fps)
            key = dataclasses.replace(state, x=state.x % 1.0, y=state.y % 1.0)
            if key not in sprites:
                sprites[key] = render_sprite(state)
            paste(img, sprites[key], state.x, state.y)
        yield img


def write_mp4(path: Path, frames: Iterator[np.ndarray], fps: int, crf: int) -> int:
    """Encode RGB frames to ``path`` (H.264, yuv420p, constant rate factor ``crf``).

    Returns the number of frames written. The encoder runs single-threaded so that the
    same frames always give the same bitstream.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        stream.codec_context.thread_count = 1
        for img in frames:
            if count == 0:
                stream.height, stream.width = img.shape[:2]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = count
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count
