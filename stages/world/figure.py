"""Geometry of the articulated stick figures: scene depth, body parts and person boxes.

A figure is a list of primitives in pixel coordinates; the renderer paints them and the
label code takes the person box from the same list, so boxes always match the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.world.tracks import (
    ARM_CARRY,
    ARM_PHONE,
    ARM_POINT,
    ARM_REACH,
    POSE_LIE,
    POSE_SIT,
    Appearance,
)

Colour = tuple[int, int, int]
PHONE_COLOUR: Colour = (20, 20, 24)
EYE_COLOUR: Colour = (15, 15, 15)
MOUTH_COLOUR: Colour = (120, 10, 20)
SHOE_COLOUR: Colour = (35, 30, 28)


@dataclass(frozen=True)
class Floor:
    """The walkable floor band of a W x H frame: feet y in [y_far, y_near] pixels.

    Bodies farther away (smaller y) are drawn smaller, which varies box sizes.
    """

    width: int
    height: int
    zoom: float = 1.0  # per-video camera zoom: multiplies every body height

    @property
    def y_far(self) -> float:
        return 0.74 * self.height

    @property
    def y_near(self) -> float:
        return 0.97 * self.height

    def body_height(self, y: float, scale: float = 1.0) -> float:
        """Body height in pixels of a person whose feet are at row ``y``."""
        depth = (y - self.y_far) / (self.y_near - self.y_far)
        depth = float(np.clip(depth, 0.0, 1.0))
        return 0.42 * self.height * (0.8 + 0.4 * depth) * self.zoom * scale


@dataclass(frozen=True)
class Disk:
    cx: float
    cy: float
    r: float
    colour: Colour
    body: bool = True  # counts towards the person box


@dataclass(frozen=True)
class Capsule:
    x0: float
    y0: float
    x1: float
    y1: float
    r: float
    colour: Colour
    body: bool = True


@dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float
    colour: Colour
    body: bool = True


Primitive = Disk | Capsule | Rect


@dataclass(frozen=True)
class FigureState:
    """What the renderer needs about one person in one frame."""

    x: float
    y: float
    h: float  # body height in pixels
    facing: int
    pose: int
    arm: int
    holding: bool
    talk: bool
    phase: float  # animation phase in radians (talk gesture, mouth)
    appearance: Appearance
    object_colour: Colour
    stool_colour: Colour


# Skeletons in body heights, x towards the facing direction, y up (negative is higher).
_UPRIGHT = {
    "hip": (0.0, -0.47),
    "knee_f": (0.03, -0.25),
    "foot_f": (0.06, 0.0),
    "knee_b": (-0.01, -0.25),
    "foot_b": (-0.04, 0.0),
    "neck": (0.0, -0.78),
    "shoulder": (0.0, -0.75),
    "head": (0.01, -0.875),
}
_SEATED = {
    "hip": (0.0, -0.30),
    "knee_f": (0.21, -0.31),
    "foot_f": (0.23, 0.0),
    "knee_b": (0.18, -0.30),
    "foot_b": (0.19, 0.0),
    "neck": (0.03, -0.61),
    "shoulder": (0.03, -0.58),
    "head": (0.05, -0.705),
}
_LYING = {
    "hip": (-0.05, -0.07),
    "knee_f": (-0.27, -0.07),
    "foot_f": (-0.5, -0.05),
    "knee_b": (-0.26, -0.06),
    "foot_b": (-0.48, -0.04),
    "neck": (0.26, -0.08),
    "shoulder": (0.23, -0.09),
    "head": (0.36, -0.09),
}
# Front arm (elbow, hand) relative to the shoulder, per arm state.
_ARMS = {
    0: ((0.02, 0.15), (0.04, 0.30)),  # rest
    ARM_REACH: ((0.13, 0.08), (0.28, 0.13)),
    ARM_PHONE: ((0.10, 0.11), (0.07, -0.12)),
    ARM_CARRY: ((0.06, 0.14), (0.17, 0.21)),
    ARM_POINT: ((0.14, -0.02), (0.29, -0.09)),
}
_BACK_ARM_REST = ((-0.03, 0.15), (-0.05, 0.29))


def _shade(c: Colour, k: float) -> Colour:
    return (int(c[0] * k), int(c[1] * k), int(c[2] * k))


def figure_primitives(s: FigureState) -> list[Primitive]:
    """Primitives of one person, in paint order (pixel coordinates)."""
    h, f = s.h, s.facing
    skel = _LYING if s.pose == POSE_LIE else _SEATED if s.pose == POSE_SIT else _UPRIGHT

    def p(name: str) -> tuple[float, float]:
        dx, dy = skel[name]
        return s.x + f * dx * h, s.y + dy * h

    def rel(base: tuple[float, float], d: tuple[float, float]) -> tuple[float, float]:
        return base[0] + f * d[0] * h, base[1] + d[1] * h

    a = s.appearance
    limb, leg, torso_r, head_r = max(0.04 * h, 0.8), max(0.05 * h, 0.9), 0.085 * h, 0.085 * h
    hip, neck, sh, head = p("hip"), p("neck"), p("shoulder"), p("head")
    out: list[Primitive] = []
    if s.pose == POSE_SIT:
        out.append(
            Rect(s.x - 0.1 * h, hip[1] + 0.03 * h, s.x + 0.1 * h, s.y, s.stool_colour, False)
        )
    if s.pose == POSE_LIE:
        back = ((-0.13, 0.01), (-0.27, 0.02))
        front = back
    else:
        front = _ARMS.get(s.arm, _ARMS[0])
        back = _BACK_ARM_REST
        if s.talk:  # gesturing forearm, raised and waving
            back = ((0.06, 0.14), (0.15, 0.0 + 0.06 * float(np.sin(s.phase))))

    def arm(spec: tuple[tuple[float, float], tuple[float, float]], colour: Colour) -> None:
        elbow, hand = rel(sh, spec[0]), rel(sh, spec[1])
        out.append(Capsule(*sh, *elbow, limb, colour))
        out.append(Capsule(*elbow, *hand, limb, colour))
        out.append(Disk(*hand, limb * 1.2, a.skin))

    if not s.talk:
        arm(back, _shade(a.shirt, 0.7))
    for knee, foot, k in (("knee_b", "foot_b", 0.7), ("knee_f", "foot_f", 1.0)):
        out.append(Capsule(*hip, *p(knee), leg, _shade(a.pants, k)))
        out.append(Capsule(*p(knee), *p(foot), leg, _shade(a.pants, k)))
        if s.pose != POSE_LIE:  # shoes point where the person faces
            toe = rel(p(foot), (0.07, 0.0))
            out.append(Capsule(*p(foot), *toe, leg * 0.8, SHOE_COLOUR))
    out.append(Capsule(*hip, *neck, torso_r, a.shirt))
    # Hair disk with the face shifted forward: which side the face is on shows facing.
    out.append(Disk(*head, head_r, a.hair))
    face = rel(head, (0.022, 0.012))
    out.append(Disk(*face, head_r * 0.8, a.skin))
    eye = rel(head, (0.05, -0.012))
    out.append(Disk(*eye, max(0.014 * h, 0.6), EYE_COLOUR))
    if s.talk:
        if np.cos(2.0 * s.phase) > -0.3:  # mouth open most of the time, blinking shut
            m = rel(head, (0.05, 0.04))
            r = max(0.02 * h, 0.7)
            out.append(Rect(m[0] - r, m[1] - r, m[0] + r, m[1] + r, MOUTH_COLOUR))
        arm(back, _shade(a.shirt, 0.7))
    arm(front, a.shirt)
    if s.holding and s.pose != POSE_LIE:
        hand = rel(sh, front[1])
        if s.arm == ARM_PHONE:
            w, ht = 0.03 * h, 0.06 * h
            out.append(
                Rect(hand[0] - w, hand[1] - ht, hand[0] + w, hand[1] + ht, PHONE_COLOUR, False)
            )
        else:
            r = 0.045 * h
            out.append(
                Rect(hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r, s.object_colour, False)
            )
    return out


def hand_position(s: FigureState) -> tuple[float, float]:
    """Pixel position of the front hand (where a reaching hand touches the table)."""
    skel = _LYING if s.pose == POSE_LIE else _SEATED if s.pose == POSE_SIT else _UPRIGHT
    sx, sy = skel["shoulder"]
    if s.pose == POSE_LIE:
        hx, hy = -0.27, 0.02
    else:
        hx, hy = _ARMS.get(s.arm, _ARMS[0])[1]
    return s.x + s.facing * (sx + hx) * s.h, s.y + (sy + hy) * s.h


def primitives_box(prims: list[Primitive]) -> tuple[float, float, float, float]:
    """Pixel box ``(x1, y1, x2, y2)`` around the body primitives (held objects excluded)."""
    x1 = y1 = np.inf
    x2 = y2 = -np.inf
    for q in prims:
        if not q.body:
            continue
        if isinstance(q, Disk):
            ext = (q.cx - q.r, q.cy - q.r, q.cx + q.r, q.cy + q.r)
        elif isinstance(q, Capsule):
            ext = (
                min(q.x0, q.x1) - q.r,
                min(q.y0, q.y1) - q.r,
                max(q.x0, q.x1) + q.r,
                max(q.y0, q.y1) + q.r,
            )
        else:
            ext = (q.x0, q.y0, q.x1, q.y1)
        x1, y1 = min(x1, ext[0]), min(y1, ext[1])
        x2, y2 = max(x2, ext[2]), max(y2, ext[3])
    return float(x1), float(y1), float(x2), float(y2)
