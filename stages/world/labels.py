"""Label rules: which persons are annotated on a keyframe and which actions they have.

Every short-term label is a rule over the scripted state at the keyframe (and the
motion across neighbouring frames); long-term labels come from the scene's recorded
windows. The class table in :mod:`stages.world.classes` states each rule in words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.world import classes as C
from stages.world.figure import FigureState, figure_primitives, hand_position, primitives_box
from stages.world.stories import Scene
from stages.world.tracks import ARM_PHONE, ARM_REACH, POSE_LIE, POSE_SIT, Track

MIN_VISIBLE = 0.4  # share of the body box inside the frame for a person to be annotated
MAX_OCCLUDED = 0.7  # share of the box hidden behind nearer persons beyond which it is not
NEAR_DX = 1.1  # body heights: conversation distance
WATCH_DX = 3.5  # body heights: how far an onlooker may stand
WALK_SPEED, RUN_SPEED = 0.15, 1.0  # body heights per second


@dataclass(frozen=True)
class Annotated:
    """One annotated person on one keyframe."""

    person_id: int
    box: tuple[float, float, float, float]  # pixels, clipped to the frame
    actions: tuple[int, ...]  # sorted label ids
    # For a long-term action: the frame of the deciding past event.
    events: tuple[tuple[int, int, str], ...]  # (action_id, event_frame, description)


def figure_state(scene: Scene, tr: Track, f: int, fps: int) -> FigureState:
    """The renderable state of track ``tr`` at frame ``f``."""
    # Positions snap to 1/4 pixel and the animation phase to 1/8 cycle: invisible at this
    # resolution, and it lets the renderer reuse one sprite for many frames.
    x, y = round(float(tr.x[f]) * 4) / 4, round(float(tr.y[f]) * 4) / 4
    talk = bool(tr.talk[f])
    # About 1.5 gestures per second whatever the frame rate.
    phase = np.pi / 4 * round(8 * (1.5 * f / fps + tr.person_id / 6)) if talk else 0.0
    return FigureState(
        x=x,
        y=y,
        h=scene.floor.body_height(y, tr.appearance.height_scale),
        facing=int(tr.facing[f]),
        pose=int(tr.pose[f]),
        arm=int(tr.arm[f]),
        holding=bool(tr.holding[f]),
        talk=talk,
        phase=float(phase),
        appearance=tr.appearance,
        object_colour=scene.object_colours[tr.person_id],
        stool_colour=scene.stool_colour,
    )


def _occluded_share(box: np.ndarray, nearer: list[np.ndarray]) -> float:
    """Share of ``box`` covered by the union of ``nearer`` boxes (pixel grid)."""
    x1, y1, x2, y2 = np.floor(box[:2]).astype(int).tolist() + np.ceil(box[2:]).astype(int).tolist()
    if x2 <= x1 or y2 <= y1 or not nearer:
        return 0.0
    cover = np.zeros((y2 - y1, x2 - x1), dtype=bool)
    for b in nearer:
        c0, r0 = max(int(b[0]) - x1, 0), max(int(b[1]) - y1, 0)
        c1, r1 = min(int(np.ceil(b[2])) - x1, x2 - x1), min(int(np.ceil(b[3])) - y1, y2 - y1)
        if c1 > c0 and r1 > r0:
            cover[r0:r1, c0:c1] = True
    return float(cover.mean())


def annotate_keyframe(scene: Scene, f: int, fps: int, width: int, height: int) -> list[Annotated]:
    """Annotated persons on frame ``f`` (sorted by person id)."""
    states, boxes, visible = {}, {}, {}
    for tr in scene.tracks:
        if not tr.present[f]:
            continue
        st = figure_state(scene, tr, f, fps)
        raw = np.array(primitives_box(figure_primitives(st)))
        clipped = np.clip(raw, 0, [width, height, width, height])
        area = (raw[2] - raw[0]) * (raw[3] - raw[1])
        inside = max(clipped[2] - clipped[0], 0) * max(clipped[3] - clipped[1], 0)
        states[tr.person_id], boxes[tr.person_id] = st, clipped
        visible[tr.person_id] = (
            inside / area >= MIN_VISIBLE
            and clipped[2] - clipped[0] >= 2
            and clipped[3] - clipped[1] >= 2
        )
    seen = [p for p in states if visible[p]]

    def faces(p: int, q: int) -> bool:
        return states[p].facing * (states[q].x - states[p].x) > 0

    def near(p: int, q: int) -> bool:
        sp, sq = states[p], states[q]
        return abs(sq.x - sp.x) < NEAR_DX * sp.h and abs(sq.y - sp.y) < 0.25 * sp.h

    table = scene.table

    def touching(p: int) -> bool:
        # A reaching hand counts only on the table top: the same arm pose in the air
        # is a distractor.
        st = states[p]
        if st.arm != ARM_REACH or st.pose == POSE_LIE:
            return False
        hx, hy = hand_position(st)
        on_top = abs(hx - table.x) <= table.half_width and abs(hy - table.top_y) < 0.08 * table.h
        return on_top and abs(st.y - table.y) < 0.1 * table.h

    out = []
    for p in seen:
        nearer = [boxes[q] for q in seen if q != p and (states[q].y, q) > (states[p].y, p)]
        if _occluded_share(boxes[p], nearer) > MAX_OCCLUDED:
            continue
        st, tr = states[p], scene.tracks[p]
        acts: set[int] = set()
        a, b = max(f - 1, 0), min(f + 1, tr.n - 1)
        speed = float(np.hypot(tr.x[b] - tr.x[a], tr.y[b] - tr.y[a])) / max(b - a, 1)
        speed *= fps / st.h  # body heights per second
        if st.pose == POSE_LIE:
            acts.add(C.LIE)
        elif st.pose == POSE_SIT:
            acts.add(C.SIT)
        else:
            acts.add(C.RUN if speed > RUN_SPEED else C.WALK if speed >= WALK_SPEED else C.STAND)
        if st.holding and st.pose != POSE_LIE:
            acts.add(C.PHONE if st.arm == ARM_PHONE else C.CARRY)
        if touching(p):
            acts.add(C.TOUCH_TABLE)
        others = [q for q in seen if q != p]
        partners = [q for q in others if near(p, q) and faces(p, q) and faces(q, p)]
        if st.talk and partners:
            acts.add(C.TALK)
        if not st.talk and any(states[q].talk for q in partners):
            acts.add(C.LISTEN)
        if (
            not touching(p)
            and st.pose != POSE_LIE
            and any(
                touching(q) and faces(p, q) and abs(states[q].x - st.x) < WATCH_DX * st.h
                for q in others
            )
        ):
            acts.add(C.WATCH)
        events = []
        for w in scene.windows:
            if w.person_id == p and w.start <= f < w.stop:
                acts.add(w.action_id)
                events.append((w.action_id, w.event_frame, w.event))
        x1, y1, x2, y2 = (float(v) for v in boxes[p])
        out.append(Annotated(p, (x1, y1, x2, y2), tuple(sorted(acts)), tuple(events)))
    return sorted(out, key=lambda r: r.person_id)
