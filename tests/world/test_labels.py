"""The label rules on hand-made scenes: each relation needs the other actor's part."""

from __future__ import annotations

import numpy as np

from stages.world import classes as C
from stages.world.figure import Floor
from stages.world.labels import annotate_keyframe
from stages.world.render import TableGeometry
from stages.world.stories import LongTermWindow, Scene
from stages.world.tracks import ARM_REACH, Appearance, Track

W, H, FPS, N = 160, 120, 8, 16
LOOK = Appearance((200, 160, 120), (40, 30, 20), (50, 90, 200), (60, 60, 60), 1.0)
FLOOR = Floor(W, H)
Y = 0.85 * H
HB = FLOOR.body_height(Y)  # body height at that depth
TABLE_X = 60.0


def _scene(tracks: list[Track], windows: list[LongTermWindow] | None = None) -> Scene:
    table = TableGeometry(x=TABLE_X, y=Y, h=HB, colour=(120, 80, 40))
    for tr in tracks:
        tr.finish()
    return Scene(
        tracks=tracks,
        table=table,
        object_spot=(TABLE_X, table.top_y),
        object_on_table=np.ones(N, dtype=bool),
        object_colours=[(255, 0, 0)] * len(tracks),
        stool_colour=(90, 90, 90),
        background=np.zeros((H, W, 3), dtype=np.uint8),
        floor=FLOOR,
        windows=windows or [],
    )


def _still(pid: int, x: float, face: int, **kw: object) -> Track:
    tr = Track(pid, N, LOOK, W).place(x, Y, face)
    tr.stay(N, face=face, **kw)  # type: ignore[arg-type]
    return tr


def _labels(scene: Scene, f: int = N // 2) -> dict[int, tuple[int, ...]]:
    return {a.person_id: a.actions for a in annotate_keyframe(scene, f, FPS, W, H)}


def test_talk_and_listen_need_mutual_facing() -> None:
    gap = 0.6 * HB
    facing = _labels(_scene([_still(0, 40, 1, talk=True), _still(1, 40 + gap, -1)]))
    assert C.TALK in facing[0] and C.LISTEN in facing[1]
    away = _labels(_scene([_still(0, 40, 1, talk=True), _still(1, 40 + gap, 1)]))
    assert C.TALK not in away[0] and C.LISTEN not in away[1]
    far = _labels(_scene([_still(0, 20, 1, talk=True), _still(1, 20 + 2 * HB, -1)]))
    assert C.TALK not in far[0] and C.LISTEN not in far[1]


def test_touch_needs_the_table_and_watch_needs_a_toucher() -> None:
    table = TableGeometry(x=TABLE_X, y=Y, h=HB, colour=(0, 0, 0))
    spot = table.x + table.half_width + 0.24 * HB  # the hand lands on the table top
    toucher = _still(0, spot, -1, arm=ARM_REACH)
    watcher = _still(1, spot + 0.8 * HB, -1)
    got = _labels(_scene([toucher, watcher]))
    assert C.TOUCH_TABLE in got[0] and C.WATCH in got[1]
    in_the_air = _still(0, W - 10, -1, arm=ARM_REACH)  # same arm, far from the table
    got = _labels(_scene([in_the_air, _still(1, W - 10 - 1.5 * HB, 1)]))
    assert C.TOUCH_TABLE not in got[0] and C.WATCH not in got[1]
    got = _labels(_scene([_still(0, spot, -1, arm=ARM_REACH), _still(1, spot + 0.8 * HB, 1)]))
    assert C.WATCH not in got[1]  # looking away


def test_motion_classes_from_speed_and_exactly_one_pose() -> None:
    walker = Track(0, N, LOOK, W).place(20, Y, 1)
    walker.go(20 + 0.5 * HB * N / FPS, Y, 0.5 * HB / FPS)
    runner = Track(1, N, LOOK, W).place(20, Y - 8, 1)
    runner.go(20 + 1.6 * HB * N / FPS, Y - 8, 1.6 * HB / FPS)
    got = _labels(_scene([walker, runner]), f=4)
    assert got[0] == (C.WALK,) and got[1] == (C.RUN,)
    got = _labels(_scene([_still(0, 50, 1)]))
    assert got[0] == (C.STAND,)


def test_offscreen_persons_are_not_annotated_and_windows_add_long_term_labels() -> None:
    outside = _still(0, W + HB, 1)
    inside = _still(1, 60, 1)
    window = LongTermWindow(1, C.WAIT, 4, 12, 0, "partner left")
    scene = _scene([outside, inside], [window])
    assert set(_labels(scene)) == {1}
    assert C.WAIT in _labels(scene, f=8)[1] and C.WAIT not in _labels(scene, f=13)[1]
