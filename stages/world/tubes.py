"""A synthetic tube dataset (MultiSports layout) drawn with the demo world's figures.

Each video shows 2-3 persons who walk about and now and then perform one action for a
stretch of frames that starts and ends inside the video; each such stretch is one GT
tube of one label (single-label, as in MultiSports). Between actions a person is idle
(standing or walking slowly with arms at rest): present, boxed by the proposals, and
not in any tube, i.e. background. The classes differ by posture and motion:

==========  ====================================================================
wave        standing, the back forearm raised and waving (needs motion)
point       standing, the front arm stretched up and forward
sit         seated on a stool
run         upright, moving 3-4 px per frame (idle walkers move <= 0.6)
lie down    lying on the floor
==========  ====================================================================

Layout written under ``out``::

    videos/<video>.mp4                   H.264, ``fps`` frames per second
    annotations/gt.json                  the tube GT (stages.data.tubes JSON form)
    annotations/person_boxes_{train,val}.csv   noisy person boxes on every frame,
                                         AVA detection columns, timestamp = frame (1-based)
    dataset.yaml                         ``tubes:`` block (stride per split)
    world.json                           written last: the config, marks completion
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.data.tubes import TubeGT, write_tube_json
from stages.world import files
from stages.world.config import TubeWorldConfig
from stages.world.figure import FigureState, Floor, figure_primitives, primitives_box
from stages.world.render import background
from stages.world.tracks import ARM_POINT, POSE_LIE, POSE_SIT, POSE_STAND, random_appearance
from stages.world.video import paste, render_sprite, write_mp4

TUBE_CLASSES = ("wave", "point", "sit", "run", "lie down")
SPLITS = {"train": "train", "val": "test"}


@dataclass
class _Person:
    appearance: object
    x: np.ndarray  # float [n] feet x
    y: np.ndarray  # float [n] feet y
    label: np.ndarray  # int [n], -1 idle
    facing: np.ndarray  # int [n]


def _script(rng: np.random.Generator, cfg: TubeWorldConfig, floor: Floor) -> list[_Person]:
    """Positions and labels per frame of each person of one video."""
    n = cfg.n_frames
    persons = []
    k = int(rng.integers(cfg.persons_min, cfg.persons_max + 1))
    lanes = rng.permutation(np.linspace(floor.y_far, floor.y_near, k + 1)[:k] + 2.0)
    for p in range(k):
        label = np.full(n, -1, dtype=np.int64)
        f = int(rng.integers(0, 6))
        while True:  # idle gap, then an action of 12-28 frames, inside the video
            f += int(rng.integers(4, 14))
            length = int(rng.integers(cfg.action_frames[0], cfg.action_frames[1] + 1))
            if f + length > n - 1:
                break
            label[f : f + length] = int(rng.integers(len(TUBE_CLASSES)))
            f += length
        x = np.empty(n)
        facing = np.empty(n, dtype=np.int64)
        x0 = float((p + rng.uniform(0.3, 0.7)) / k * 0.8 * cfg.width + 0.1 * cfg.width)
        direction = 1 if rng.random() < 0.5 else -1
        for i in range(n):
            speed = rng.uniform(3.0, 4.0) if label[i] == 3 else rng.uniform(0.0, 0.6)
            if label[i] in (0, 1, 2, 4):
                speed = 0.0
            nx = x0 + direction * speed
            if not 0.12 * cfg.width < nx < 0.88 * cfg.width:
                direction = -direction
                nx = x0 + direction * speed
            x0 = nx
            x[i], facing[i] = x0, direction
        y = np.full(n, float(lanes[p]))
        persons.append(_Person(random_appearance(rng), x, y, label, facing))
    return persons


def _state(person: _Person, f: int, floor: Floor, colour: tuple[int, int, int]) -> FigureState:
    label = int(person.label[f])
    pose = POSE_SIT if label == 2 else POSE_LIE if label == 4 else POSE_STAND
    return FigureState(
        x=float(person.x[f]),
        y=float(person.y[f]),
        h=floor.body_height(float(person.y[f]), person.appearance.height_scale),  # type: ignore[attr-defined]
        facing=int(person.facing[f]),
        pose=pose,
        arm=ARM_POINT if label == 1 else 0,
        holding=False,
        talk=label == 0,
        phase=0.9 * f,
        appearance=person.appearance,  # type: ignore[arg-type]
        object_colour=colour,
        stool_colour=colour,
    )


def _render_video(
    path: Path, rng: np.random.Generator, cfg: TubeWorldConfig
) -> tuple[dict[int, list[np.ndarray]], list[tuple[int, tuple[float, float, float, float]]]]:
    """Render one video; returns its tubes {label: [(T, 5)]} and person boxes per frame."""
    floor = Floor(cfg.width, cfg.height)
    persons = _script(rng, cfg, floor)
    room = background(rng, cfg.width, cfg.height, horizon=floor.y_far - 0.25 * cfg.height)
    stool = tuple(int(v) for v in rng.integers(40, 200, 3))
    boxes: list[list[tuple[float, float, float, float]]] = [[] for _ in persons]
    frames = []
    for f in range(cfg.n_frames):
        img = room.copy()
        for p, person in sorted(enumerate(persons), key=lambda t: t[1].y[f]):
            state = _state(person, f, floor, stool)  # type: ignore[arg-type]
            paste(img, render_sprite(state), state.x, state.y)
            x1, y1, x2, y2 = primitives_box(figure_primitives(state))
            boxes[p].append((max(x1, 0.0), max(y1, 0.0), min(x2, cfg.width), min(y2, cfg.height)))
        frames.append(img)
    write_mp4(path, iter(frames), cfg.fps, cfg.crf)
    tubes: dict[int, list[np.ndarray]] = {}
    for p, person in enumerate(persons):
        lab = person.label
        starts = np.flatnonzero((lab >= 0) & (np.r_[-1, lab[:-1]] != lab))
        for s in starts:
            e = s
            while e + 1 < cfg.n_frames and lab[e + 1] == lab[s]:
                e += 1
            rows = [(f + 1, *boxes[p][f]) for f in range(s, e + 1)]
            tubes.setdefault(int(lab[s]), []).append(np.round(np.array(rows), 2))
    per_frame = [(f + 1, boxes[p][f]) for p in range(len(persons)) for f in range(cfg.n_frames)]
    return tubes, per_frame


def _proposal_rows(
    rng: np.random.Generator, video: str, per_frame, cfg: TubeWorldConfig
) -> list[tuple[str, int, tuple[float, float, float, float], float]]:
    out = []
    scale = np.array([cfg.width, cfg.height, cfg.width, cfg.height], dtype=np.float64)
    for frame, box in per_frame:
        b = np.asarray(box, dtype=np.float64)
        side = np.array([b[2] - b[0], b[3] - b[1]] * 2)
        b = b + rng.normal(0.0, cfg.proposal_jitter, 4) * side
        b = np.clip(b / scale, 0.0, 1.0)
        if b[2] - b[0] < 0.01 or b[3] - b[1] < 0.01:
            continue
        x1, y1, x2, y2 = (float(v) for v in b)
        out.append((video, frame, (x1, y1, x2, y2), float(rng.uniform(0.7, 1.0))))
    out.sort(key=lambda r: (r[0], r[1]))
    return out


def build_tube_world(out: str | Path, config: TubeWorldConfig | None = None) -> Path:
    """Write a tube world for ``config`` to ``out`` (see the module docstring); returns
    ``out``. Idempotent: a finished world of the same config (world.json) is kept."""
    cfg = config or TubeWorldConfig()
    root = Path(out)
    marker = root / "world.json"
    if marker.is_file() and json.loads(marker.read_text()).get("config") == cfg.model_dump(
        mode="json"
    ):
        return root
    rng = np.random.default_rng(cfg.seed)
    names = {
        "train": [f"train_{i:03d}" for i in range(cfg.n_train_videos)],
        "val": [f"val_{i:03d}" for i in range(cfg.n_val_videos)],
    }
    gttubes: dict[str, dict[int, list[np.ndarray]]] = {}
    for split, videos in names.items():
        rows = []
        for video in videos:
            tubes, per_frame = _render_video(root / "videos" / f"{video}.mp4", rng, cfg)
            gttubes[video] = tubes
            rows += _proposal_rows(rng, video, per_frame, cfg)
        files.write_text(
            root / "annotations" / f"person_boxes_{split}.csv", files.proposals_csv(rows)
        )
    all_videos = [v for vs in names.values() for v in vs]
    gt = TubeGT(
        labels=TUBE_CLASSES,
        train_videos=(tuple(names["train"]),),
        test_videos=(tuple(names["val"]),),
        nframes={v: cfg.n_frames for v in all_videos},
        resolution={v: (cfg.height, cfg.width) for v in all_videos},
        tubes=gttubes,
    )
    write_tube_json(root / "annotations" / "gt.json", gt)
    dataset = {
        "videos_dir": "videos",
        "annotations_dir": "annotations",
        "splits": {s: {"proposals": f"person_boxes_{s}.csv"} for s in names},
        "tubes": {
            "annotation": "gt.json",
            "split_of": SPLITS,
            "keyframe_stride": {"train": cfg.train_keyframe_stride, "val": 1},
        },
    }
    files.write_text(root / "dataset.yaml", json.dumps(dataset, indent=2) + "\n")
    counts = {
        TUBE_CLASSES[lb]: sum(len(t.get(lb, [])) for t in gttubes.values())
        for lb in range(len(TUBE_CLASSES))
    }
    files.write_text(
        marker, json.dumps({"config": cfg.model_dump(mode="json"), "tubes": counts}, indent=2)
    )
    return root
