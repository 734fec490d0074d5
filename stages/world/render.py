"""Paint scenes into RGB frames with vectorised numpy (one slice per primitive)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.world.figure import Capsule, Colour, Disk, Primitive, Rect


def _window(img: np.ndarray, x0: float, y0: float, x1: float, y1: float):
    h, w = img.shape[:2]
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)) + 1, w), min(int(np.ceil(y1)) + 1, h)
    if c0 >= c1 or r0 >= r1:
        return None
    # Pixel centres of the window, as a row and a column vector (broadcast, no loops).
    yy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
    return img[r0:r1, c0:c1], xx, yy


def paint(img: np.ndarray, q: Primitive, colour: tuple[int, ...] | None = None) -> None:
    """Paint one primitive into ``img`` (uint8 [H, W, C]) in place, in ``q.colour`` or in
    ``colour`` (C values) when given."""
    colour = q.colour if colour is None else colour
    if isinstance(q, Disk):
        win = _window(img, q.cx - q.r, q.cy - q.r, q.cx + q.r, q.cy + q.r)
        if win is None:
            return
        view, xx, yy = win
        view[(xx - q.cx) ** 2 + (yy - q.cy) ** 2 <= q.r * q.r] = colour
    elif isinstance(q, Capsule):
        win = _window(
            img,
            min(q.x0, q.x1) - q.r,
            min(q.y0, q.y1) - q.r,
            max(q.x0, q.x1) + q.r,
            max(q.y0, q.y1) + q.r,
        )
        if win is None:
            return
        view, xx, yy = win
        dx, dy = q.x1 - q.x0, q.y1 - q.y0
        den = dx * dx + dy * dy
        # Distance from each pixel centre to the segment (projection clamped to [0, 1]).
        t = np.clip(((xx - q.x0) * dx + (yy - q.y0) * dy) / den, 0.0, 1.0) if den > 0 else 0.0
        d2 = (xx - q.x0 - t * dx) ** 2 + (yy - q.y0 - t * dy) ** 2
        view[d2 <= q.r * q.r] = colour
    else:
        win = _window(img, q.x0, q.y0, q.x1 - 1e-3, q.y1 - 1e-3)
        if win is None:
            return
        view, xx, yy = win
        view[(xx >= q.x0) & (xx <= q.x1) & (yy >= q.y0) & (yy <= q.y1)] = colour


@dataclass(frozen=True)
class TableGeometry:
    """A table standing on the floor: the large object persons touch.

    ``x`` is the centre, ``y`` the floor row of its feet, ``h`` the body height of a
    person at that depth (the table top is at hand height of a standing person).
    """

    x: float
    y: float
    h: float
    colour: Colour

    @property
    def half_width(self) -> float:
        return 0.5 * self.h

    @property
    def top_y(self) -> float:
        return self.y - 0.63 * self.h

    def primitives(self) -> list[Primitive]:
        t, hw, h = self.top_y, self.half_width, self.h
        leg = 0.05 * h
        dark = (self.colour[0] // 2, self.colour[1] // 2, self.colour[2] // 2)
        return [
            Rect(self.x - hw + leg, t, self.x - hw + 3 * leg, self.y, dark),
            Rect(self.x + hw - 3 * leg, t, self.x + hw - leg, self.y, dark),
            Rect(self.x - hw, t - 0.02 * h, self.x + hw, t + 0.06 * h, self.colour),
        ]


def background(rng: np.random.Generator, width: int, height: int, horizon: float) -> np.ndarray:
    """A static room: wall and floor colours plus a few random wall panels (clutter)."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    wall = rng.integers(60, 200, size=3)
    floor = rng.integers(40, 160, size=3)
    hz = int(horizon)
    img[:hz] = wall
    img[hz:] = floor
    # A gentle vertical gradient on the floor so position is not a flat colour.
    ramp = np.linspace(0.85, 1.1, height - hz, dtype=np.float32)[:, None, None]
    img[hz:] = np.clip(img[hz:].astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        w, h = rng.uniform(0.08, 0.25) * width, rng.uniform(0.1, 0.3) * height
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0.05 * height, max(hz - h, 0.06 * height))
        r, g, b = (int(v) for v in rng.integers(0, 256, 3))
        paint(img, Rect(x0, y0, x0 + w, y0 + h, (r, g, b)))
    return img
