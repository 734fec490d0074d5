"""Per-frame state of one person, written segment by segment with a time cursor.

A :class:`Track` holds one array per state variable, one entry per video frame. Story
code (:mod:`stages.world.stories`) moves each track's cursor forward with ``stay`` /
``go`` / ``leave`` calls; renderers and label rules only read the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Body poses (figure shape).
POSE_STAND, POSE_SIT, POSE_LIE = 0, 1, 2
# Front-arm states.
ARM_REST, ARM_REACH, ARM_PHONE, ARM_CARRY, ARM_POINT = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB uint8 triples) and size of one identity; independent of its labels."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    pants: tuple[int, int, int]
    height_scale: float  # multiplies the depth-dependent body height


def random_appearance(rng: np.random.Generator) -> Appearance:
    def colour() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(30, 236, size=3))  # type: ignore[return-value]

    tone = float(rng.uniform(0.35, 1.0))
    skin = (int(90 + 150 * tone), int(60 + 130 * tone), int(40 + 110 * tone))
    hair = tuple(int(v) for v in rng.integers(10, 120, size=3))
    return Appearance(skin, hair, colour(), colour(), float(rng.uniform(0.9, 1.1)))  # type: ignore[arg-type]


class Track:
    """State arrays of one person over ``n`` frames.

    Attributes (all length ``n``):
        present: bool, the person is in the scene (possibly partly off-screen).
        x, y: float32, foot centre in pixels (y is also the depth: larger is nearer).
        facing: int8, +1 looks right, -1 looks left.
        pose: int8, ``POSE_*``.
        arm: int8, front-arm state ``ARM_*``.
        holding: bool, a small object is in the front hand (drawn at the head for
            ``ARM_PHONE``).
        talk: bool, the talk cue (mouth + gesturing back forearm) is shown.
    """

    def __init__(self, person_id: int, n: int, appearance: Appearance, width: int) -> None:
        self.person_id = person_id
        self.n = n
        self.appearance = appearance
        self.width = width
        self.present = np.zeros(n, dtype=bool)
        self.x = np.zeros(n, dtype=np.float32)
        self.y = np.zeros(n, dtype=np.float32)
        self.facing = np.ones(n, dtype=np.int8)
        self.pose = np.zeros(n, dtype=np.int8)
        self.arm = np.zeros(n, dtype=np.int8)
        self.holding = np.zeros(n, dtype=bool)
        self.talk = np.zeros(n, dtype=bool)
        self.t = 0  # cursor: the next frame to write
        self.cx = 0.0
        self.cy = 0.0
        self.face = 1
        self.in_scene = False

    # -- cursor writers -------------------------------------------------------------
    def _slice(self, frames: int) -> slice:
        s = slice(min(self.t, self.n), min(self.t + frames, self.n))
        self.t += frames
        return s

    def place(self, x: float, y: float, face: int = 1) -> Track:
        """Put the person at (x, y) from the cursor on (no frames consumed)."""
        self.cx, self.cy, self.face, self.in_scene = float(x), float(y), int(face), True
        return self

    def stay(
        self,
        frames: int,
        *,
        pose: int = POSE_STAND,
        arm: int = ARM_REST,
        holding: bool = False,
        talk: bool = False,
        face: int | None = None,
    ) -> slice:
        """Stay still for ``frames`` frames; returns the frame slice written."""
        if face is not None:
            self.face = int(face)
        s = self._slice(max(frames, 0))
        self.present[s] = self.in_scene
        self.x[s], self.y[s], self.facing[s] = self.cx, self.cy, self.face
        self.pose[s], self.arm[s], self.holding[s], self.talk[s] = pose, arm, holding, talk
        return s

    def stay_until(self, frame: int, **kwargs: object) -> slice:
        return self.stay(frame - self.t, **kwargs)  # type: ignore[arg-type]

    def go(
        self, x: float, y: float, speed: float, *, holding: bool = False, arm: int | None = None
    ) -> slice:
        """Walk upright in a straight line to (x, y) at ``speed`` pixels per frame, the
        front arm in ``arm`` (default: forward if holding an object, else hanging)."""
        dist = float(np.hypot(x - self.cx, y - self.cy))
        frames = max(int(np.ceil(dist / speed)), 1)
        if abs(x - self.cx) > 1e-3:
            self.face = 1 if x > self.cx else -1
        s = self._slice(frames)
        k = s.stop - s.start
        frac = np.arange(1, k + 1, dtype=np.float32) / frames
        self.present[s] = True
        self.x[s] = self.cx + frac * (x - self.cx)
        self.y[s] = self.cy + frac * (y - self.cy)
        self.facing[s] = self.face
        self.pose[s] = POSE_STAND
        self.arm[s] = (ARM_CARRY if holding else ARM_REST) if arm is None else arm
        self.holding[s] = holding
        self.talk[s] = False
        self.cx, self.cy, self.in_scene = float(x), float(y), True
        return s

    def offscreen_x(self, side: int, body: float) -> float:
        """An x just outside the frame on ``side`` (-1 left, +1 right)."""
        return -body if side < 0 else self.width + body

    def enter(self, side: int, x: float, y: float, speed: float, body: float, **kw: bool) -> slice:
        """Walk in from outside the frame on ``side`` to (x, y)."""
        self.place(self.offscreen_x(side, body), y, face=-side)
        return self.go(x, y, speed, **kw)

    def leave(self, side: int, speed: float, body: float, **kw: bool) -> slice:
        """Walk out of the frame on ``side``; afterwards the person is absent."""
        s = self.go(self.offscreen_x(side, body), self.cy, speed, **kw)
        self.in_scene = False
        return s

    def finish(self) -> None:
        """Hold the last pose, arm and object (or the absence) until the end of the video."""
        if self.t >= self.n:
            return
        last = self.t - 1
        if last >= 0 and self.in_scene:
            self.stay(
                self.n - self.t,
                pose=int(self.pose[last]),
                arm=int(self.arm[last]),
                holding=bool(self.holding[last]),
            )
        else:
            self.stay(self.n - self.t)
