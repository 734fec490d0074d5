"""Scene scripts: who is where doing what in every frame of one video.

A scene has a table (the large object) with a small object on it, a conversation pair
(one partner may leave while the other waits: the long-term "wait for" class), a table
user (who may pick the object up and later put it back: the long-term "put back" class,
or bring one in from outside: the same visible put-down, not labelled), an optional
onlooker near the table (actor-context-actor "watch") and a few wanderers. Labels are
not decided here but by rules over the resulting state (:mod:`stages.world.labels`),
except the long-term windows, which record the deciding past event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.world.classes import RETURN_OBJECT, WAIT
from stages.world.config import WorldConfig
from stages.world.figure import Colour, Floor
from stages.world.render import TableGeometry, background
from stages.world.tracks import (
    ARM_CARRY,
    ARM_PHONE,
    ARM_POINT,
    ARM_REACH,
    ARM_REST,
    POSE_LIE,
    POSE_SIT,
    POSE_STAND,
    Track,
    random_appearance,
)

SCENARIOS = ("return", "bring", "plain")


@dataclass(frozen=True)
class LongTermWindow:
    """Frames [start, stop) where ``person_id`` has ``action_id`` because of a past event."""

    person_id: int
    action_id: int
    start: int
    stop: int
    event_frame: int
    event: str


@dataclass
class Scene:
    """Everything needed to render and label one video."""

    tracks: list[Track]
    table: TableGeometry
    object_spot: tuple[float, float]  # where the small object lies on the table (pixels)
    object_on_table: np.ndarray  # bool [n_frames]
    object_colours: list[Colour]  # per track: colour of what it carries
    stool_colour: Colour
    background: np.ndarray  # uint8 [H, W, 3]
    floor: Floor
    windows: list[LongTermWindow] = field(default_factory=list)
    scenario: str = "plain"


def _colour(rng: np.random.Generator) -> Colour:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


class _Director:
    """Shared helpers for writing the tracks of one scene."""

    def __init__(self, cfg: WorldConfig, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.fps, self.n, self.W = cfg.fps, cfg.n_frames, cfg.width
        self.floor = Floor(cfg.width, cfg.height, zoom=float(rng.uniform(0.85, 1.15)))
        # People gather around the table's depth (set once the table stands), so that
        # depth alone does not point at the person touching the table.
        self.centre_y = 0.5 * (self.floor.y_far + self.floor.y_near)

    def sec(self, lo: float, hi: float) -> int:
        """A random duration in frames between ``lo`` and ``hi`` seconds."""
        return round(self.rng.uniform(lo, hi) * self.fps)

    def h(self, tr: Track, y: float | None = None) -> float:
        return self.floor.body_height(tr.cy if y is None else y, tr.appearance.height_scale)

    def walk_speed(self, tr: Track) -> float:
        """Pixels per frame for 0.3-0.6 body heights per second."""
        return self.rng.uniform(0.3, 0.6) * self.h(tr) / self.fps

    def run_speed(self, tr: Track) -> float:
        return self.rng.uniform(1.4, 2.0) * self.h(tr) / self.fps

    def rand_x(self) -> float:
        return float(self.rng.uniform(0.08, 0.92) * self.W)

    def rand_y(self) -> float:
        spread = 0.3 * (self.floor.y_near - self.floor.y_far)
        y = self.centre_y + self.rng.normal(0.0, spread)
        return float(np.clip(y, self.floor.y_far, self.floor.y_near))

    def walk_arm(self) -> int:
        """A front-arm pose for an empty-handed walker: the same mix of arm poses as
        people standing about, so that one frame cannot tell walking from standing."""
        return int(
            self.rng.choice([ARM_REST, ARM_CARRY, ARM_REACH, ARM_POINT], p=[0.6, 0.12, 0.2, 0.08])
        )

    def stroll(self, tr: Track, x: float, y: float) -> None:
        """Walk empty-handed to (x, y) with a random arm pose."""
        tr.go(x, y, self.walk_speed(tr), arm=self.walk_arm())

    def enter(self, tr: Track, x: float, y: float, side: int | None = None, **kw: bool) -> None:
        side = int(self.rng.choice([-1, 1])) if side is None else side
        tr.place(tr.offscreen_x(side, 0.5 * self.h(tr, y)), y, face=-side)
        if kw.get("holding"):
            tr.go(x, y, self.walk_speed(tr), **kw)
        else:
            self.stroll(tr, x, y)

    def leave(self, tr: Track, **kw: bool) -> None:
        side = -1 if tr.cx < self.W / 2 else 1
        tr.leave(side, self.walk_speed(tr), 0.5 * self.h(tr), **kw)

    def idle(self, tr: Track, frames: int) -> None:
        """Stay put in a random pose with a random arm/object/talk-cue variant."""
        rng = self.rng
        pose = int(rng.choice([POSE_STAND, POSE_SIT, POSE_LIE], p=[0.58, 0.33, 0.09]))
        arm, holding, talk = ARM_REST, False, False
        if pose != POSE_LIE:
            # Arm poses that extend the box like the labelled ones but carry no label
            # (reaching into the air, an empty hand held forward) keep box shape from
            # giving "touch" or "carry" away.
            r = rng.random()
            if r < 0.07:
                arm, holding = ARM_PHONE, True
            elif r < 0.15:
                arm = ARM_POINT
            elif r < 0.24:
                arm, holding = ARM_CARRY, True
            elif r < 0.36:
                arm = ARM_CARRY
            elif r < 0.62:
                arm = ARM_REACH
            elif r < 0.70:
                talk = True  # talking to nobody: the cue alone must not decide "talk to"
        tr.stay(
            frames, pose=pose, arm=arm, holding=holding, talk=talk, face=int(rng.choice([-1, 1]))
        )

    def wander(self, tr: Track) -> None:
        """Random idles, walks, runs, exits and re-entries until the end of the video."""
        rng = self.rng
        while tr.t < self.n:
            if not tr.in_scene:
                tr.stay(self.sec(3, 10))
                self.enter(tr, self.rand_x(), self.rand_y())
                continue
            r = rng.random()
            if r < 0.45:
                self.idle(tr, self.sec(2, 6))
            elif r < 0.9:
                if rng.random() < 0.25:
                    # Runs stay at one depth and cross most of the frame: the body height
                    # is constant, so the speed in heights per second is unambiguous.
                    far = 0.1 * self.W if tr.cx > self.W / 2 else 0.9 * self.W
                    tr.go(far, tr.cy, self.run_speed(tr), arm=self.walk_arm())
                else:
                    if rng.random() < 0.15:
                        tr.go(self.rand_x(), self.rand_y(), self.walk_speed(tr), holding=True)
                    else:
                        self.stroll(tr, self.rand_x(), self.rand_y())
            else:
                self.leave(tr)


def _table(d: _Director) -> tuple[TableGeometry, int]:
    y = float(d.rng.uniform(d.floor.y_far + 2, d.floor.y_near - 4))
    h = d.floor.body_height(y)
    x = float(d.rng.uniform(0.3, 0.7) * d.W)
    side = int(d.rng.choice([-1, 1]))  # the side the table user works from
    return TableGeometry(x, y, h, _colour(d.rng)), side


def _conversation(d: _Director, a: Track, b: Track, frames: int, pose: int) -> None:
    m = max(a.t, b.t)
    a.stay_until(m, pose=pose, face=1)
    b.stay_until(m, pose=pose, face=-1)
    talker = int(d.rng.integers(2))
    end = m + frames
    while a.t < end:
        k = min(d.sec(1.5, 4), end - a.t)
        silent = d.rng.random() < 0.15
        # Idle front-arm poses (the reach into the air included) as distractors.
        arms = d.rng.choice([ARM_REST, ARM_CARRY, ARM_REACH], size=2, p=[0.6, 0.15, 0.25])
        a.stay(k, pose=pose, face=1, arm=int(arms[0]), talk=not silent and talker == 0)
        b.stay(k, pose=pose, face=-1, arm=int(arms[1]), talk=not silent and talker == 1)
        talker = 1 - talker


def _pair_story(d: _Director, a: Track, b: Track, waiting: bool, windows: list) -> None:
    rng, W = d.rng, d.W
    y = d.rand_y()
    h = d.h(a, y)
    xm = float(rng.uniform(0.3, 0.7) * W)
    gap = float(rng.uniform(0.55, 0.8) * h)
    xa, xb = xm - gap / 2, xm + gap / 2
    pose = POSE_SIT if rng.random() < 0.3 else POSE_STAND
    if rng.random() < 0.5:
        a.place(xa, y, 1)
        b.place(xb, y, -1)
    else:
        a.stay(d.sec(0, 2))
        d.enter(a, xa, y, side=-1)
        b.stay(d.sec(0, 2))
        d.enter(b, xb, y, side=1)
    _conversation(d, a, b, d.sec(3, 6) if waiting else d.sec(5, 12), pose)
    if waiting:
        b.leave(1, d.walk_speed(b), 0.5 * d.h(b))
        exit_frame = b.t  # first frame with b fully outside the picture
        comes_back = rng.random() < 0.5
        if comes_back:
            b.stay(d.sec(7, 12))
            back = b.t  # b starts walking in: a's wait is over
            d.enter(b, xb, y, side=1)
            a.stay_until(b.t, pose=pose, face=1)
            stop = back
            _conversation(d, a, b, d.sec(2, 5), pose)
        else:
            a.stay_until(exit_frame + d.sec(8, 13), pose=pose, face=1)
            stop = a.t
        start = exit_frame + 5 * d.fps
        if stop > start:
            windows.append(
                LongTermWindow(
                    a.person_id,
                    WAIT,
                    start,
                    stop,
                    exit_frame,
                    "conversation partner left the scene",
                )
            )
    d.wander(a)
    d.wander(b)


def _touch(d: _Director, c: Track, frames: int, face: int, before: bool, after: bool) -> int:
    """Hand on the table for ``frames``; holding switches from ``before`` to ``after``
    halfway. Returns the switch frame."""
    half = frames // 2
    c.stay(half, arm=ARM_REACH, holding=before, face=face)
    switch = c.t
    c.stay(frames - half, arm=ARM_REACH, holding=after, face=face)
    return switch


def _table_story(
    d: _Director, c: Track, table: TableGeometry, side: int, scenario: str, windows: list
) -> tuple[int | None, int | None]:
    """Returns (pickup frame, put-down frame) of the small object (None if not done)."""
    rng = d.rng
    spot = table.x + side * (table.half_width + 0.24 * table.h)
    face = -side
    pickup = putdown = None
    if scenario == "bring":
        c.stay(d.sec(0, 4))
        d.enter(c, spot, table.y, side=side, holding=True)
        putdown = _touch(d, c, d.sec(2, 3.5), face, True, False)
    else:
        if rng.random() < 0.5:
            c.place(d.rand_x(), d.rand_y(), int(rng.choice([-1, 1])))
            d.idle(c, d.sec(0, 3))
        else:
            c.stay(d.sec(0, 3))
            d.enter(c, d.rand_x(), d.rand_y())
        c.go(spot, table.y, d.walk_speed(c))
        if scenario == "return":
            pickup = _touch(d, c, d.sec(2, 3), face, False, True)
            away = table.x + side * float(rng.uniform(1.2, 2.0)) * table.h
            if not 0.05 * d.W < away < 0.95 * d.W:
                away = table.x - side * float(rng.uniform(1.2, 2.0)) * table.h
            speed = 0.55 * table.h / d.fps
            c.go(away, d.rand_y(), speed, holding=True)
            back_frames = int(np.ceil(abs(away - spot) / speed)) + 2
            # Put down 7-13 s after the pickup: too far for a clip (the event is > 3 s
            # from every labelled keyframe) but inside a 21 s bank window.
            c.stay_until(
                pickup + d.sec(7, 13) - back_frames,
                arm=ARM_CARRY,
                holding=True,
                face=int(rng.choice([-1, 1])),
            )
            c.go(spot, table.y, speed, holding=True)
            start = c.t
            putdown = _touch(d, c, d.sec(3, 4.5), face, True, False)
            windows.append(
                LongTermWindow(
                    c.person_id,
                    RETURN_OBJECT,
                    start,
                    c.t,
                    pickup,
                    "picked the object up from the table",
                )
            )
        else:
            _touch(d, c, d.sec(2, 5), face, False, False)
    # Afterwards: wander, with the odd plain visit to the table.
    while c.t < d.n:
        if not c.in_scene:
            c.stay(d.sec(3, 8))
            d.enter(c, d.rand_x(), d.rand_y())
            continue
        r = rng.random()
        if r < 0.25:
            c.go(spot, table.y, d.walk_speed(c))
            _touch(d, c, d.sec(1.5, 4), face, False, False)
        elif r < 0.33:
            d.leave(c)
        else:
            d.stroll(c, d.rand_x(), d.rand_y())
            d.idle(c, d.sec(1, 4))
    return pickup, putdown


def _onlooker_story(d: _Director, w: Track, table: TableGeometry) -> None:
    rng = d.rng

    def spot() -> tuple[float, float]:
        for _ in range(8):
            x = table.x + float(rng.choice([-1, 1]) * rng.uniform(1.1, 2.2)) * table.h
            if 0.05 * d.W < x < 0.95 * d.W:
                break
        y = float(
            np.clip(
                table.y + rng.uniform(-0.06, 0.06) * d.cfg.height, d.floor.y_far, d.floor.y_near
            )
        )
        return float(np.clip(x, 0.05 * d.W, 0.95 * d.W)), y

    x, y = spot()
    if rng.random() < 0.6:
        w.place(x, y)
    else:
        w.stay(d.sec(0, 5))
        d.enter(w, x, y)
    while w.t < d.n:
        if rng.random() < 0.15:
            d.stroll(w, *spot())
            continue
        toward = 1 if table.x > w.cx else -1
        face = toward if rng.random() < 0.6 else -toward
        pose = POSE_SIT if rng.random() < 0.3 else POSE_STAND
        arm = int(rng.choice([ARM_REST, ARM_PHONE, ARM_REACH, ARM_CARRY], p=[0.6, 0.08, 0.2, 0.12]))
        w.stay(d.sec(2, 4), pose=pose, face=face, arm=arm, holding=arm == ARM_PHONE)


def compose_scene(
    cfg: WorldConfig, rng: np.random.Generator, scenario: str, waiting: bool
) -> Scene:
    """Script one video. ``scenario`` is one of ``SCENARIOS`` (what happens to the small
    object on the table); ``waiting`` makes one conversation partner leave."""
    if scenario not in SCENARIOS:
        raise ValueError(f"compose_scene: scenario {scenario!r} is not one of {SCENARIOS}")
    d = _Director(cfg, rng)
    bg = background(rng, cfg.width, cfg.height, horizon=d.floor.y_far - 0.25 * cfg.height)
    table, side = _table(d)
    d.centre_y = table.y
    n_loners = int(rng.integers(cfg.loners_min, cfg.loners_max + 1))
    has_onlooker = rng.random() < cfg.onlooker_prob
    n_people = 3 + int(has_onlooker) + n_loners
    tracks = [Track(i, d.n, random_appearance(rng), cfg.width) for i in range(n_people)]
    object_colour = _colour(rng)
    colours = [object_colour if i == 2 else _colour(rng) for i in range(n_people)]
    windows: list[LongTermWindow] = []
    _pair_story(d, tracks[0], tracks[1], waiting, windows)
    pickup, putdown = _table_story(d, tracks[2], table, side, scenario, windows)
    if has_onlooker:
        _onlooker_story(d, tracks[3], table)
    for tr in tracks[3 + int(has_onlooker) :]:
        if rng.random() < 0.5:
            tr.place(d.rand_x(), d.rand_y(), int(rng.choice([-1, 1])))
        d.wander(tr)
    for tr in tracks:
        tr.finish()
    on_table = np.ones(d.n, dtype=bool)
    if scenario == "bring":
        on_table[:putdown] = False
    elif scenario == "return":
        on_table[pickup:putdown] = False
    spot = (table.x + side * (table.half_width - 0.04 * table.h), table.top_y - 0.065 * table.h)
    return Scene(
        tracks, table, spot, on_table, colours, _colour(rng), bg, d.floor, windows, scenario
    )
