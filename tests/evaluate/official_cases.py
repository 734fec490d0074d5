"""AVA evaluation cases built to make equal scores matter, written as AVA files.

Every case comes from Python's ``random.Random(seed)`` (its stream is fixed across
Python versions), so the files never need to be committed: the expected numbers in
``tests/fixtures/official_ava/expected.json`` were produced by running the official
ActivityNet evaluator on exactly these files, and each file's SHA-256 is pinned there
too. What the cases hold:

- ``ties``: 3 videos x 9 keyframes; 10-90 detections per keyframe, rows of different
  keyframes interleaved in the file; scores on a grid of ten values (equal scores
  inside and across keyframes and at the top-50 cut); exact duplicate detection rows;
  degenerate boxes (x1 == x2, y1 > y2, a point); duplicate GT rows; 8-column GT rows
  (the official heap reads the person id as a score); GT and detections of a class
  outside the label map; keyframes with detections and no GT; an excluded keyframe.
- ``all_equal``: the same layout (7-column GT) with every score 0.5: which rows survive the cap
  and every rank come from the official code's heap and ``np.argsort`` alone.
- ``cut``: every keyframe has 70 detections whose scores tie across the 50th place,
  followed by higher scores that make the heap evict among the tied entries; two GT
  boxes at the same IoU from a detection (the first in the heap's order takes it).
- ``large``: 60 keyframes x up to 120 detections on a 100-value score grid (about
  4,000 rows), all of the above at once.
"""

from __future__ import annotations

import random
from pathlib import Path

CLASSES = (1, 2, 3, 4, 6)  # in the label map
OUTSIDE = 9  # in the files, not in the label map
CASES = ("ties", "all_equal", "cut", "large")


def write_case(name: str, out: Path) -> dict[str, Path]:
    """Write case ``name`` into ``out``; return its files (gt, det, labelmap, excluded)."""
    builder = {"ties": _ties, "all_equal": _all_equal, "cut": _cut, "large": _large}[name]
    gt_rows, det_rows, excluded = builder()
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "gt": out / f"{name}_gt.csv",
        "det": out / f"{name}_det.csv",
        "labelmap": out / f"{name}_labelmap.pbtxt",
        "excluded": out / f"{name}_excluded.csv",
    }
    files["gt"].write_text("".join(",".join(map(str, r)) + "\n" for r in gt_rows))
    files["det"].write_text("".join(",".join(map(str, r)) + "\n" for r in det_rows))
    files["excluded"].write_text("".join(f"{v},{t:04d}\n" for v, t in excluded))
    # The label-map layout both the official reader and ours accept.
    files["labelmap"].write_text(
        "".join(f'item {{\n  name: "action{c}"\n  id: {c}\n}}\n' for c in CLASSES)
    )
    return files


def _box(rng: random.Random) -> tuple[float, float, float, float]:
    x1, y1 = round(rng.uniform(0, 0.6), 2), round(rng.uniform(0, 0.6), 2)
    return x1, y1, round(x1 + rng.uniform(0.05, 0.4), 2), round(y1 + rng.uniform(0.05, 0.4), 2)


def _jitter(rng: random.Random, box: tuple, sd: float = 0.03) -> tuple:
    return tuple(round(v + rng.gauss(0, sd), 3) for v in box)


DEGENERATE = ((0.5, 0.5, 0.5, 0.7), (0.2, 0.6, 0.4, 0.3), (0.3, 0.3, 0.3, 0.3))


def _world(seed: int, n_videos: int, n_times: int, det_range: tuple[int, int], score, pids):
    """GT and detections over ``n_videos x n_times`` keyframes; ``score(rng)`` draws a
    detection score; ``pids``: GT rows have 8 columns (person ids), else 7. The last
    two keyframes have detections only."""
    rng = random.Random(seed)
    kfs = [(f"vid{v}", 900 + t) for v in range(n_videos) for t in range(n_times)]
    gt_rows: list[tuple] = []
    gt_by_kf: dict = {}
    for kf in kfs[:-2]:
        for person in range(rng.randint(1, 4)):
            box = _box(rng)
            classes = rng.sample([*CLASSES, OUTSIDE], rng.randint(1, 3))
            for c in classes:
                pid = (person if rng.random() < 0.7 else rng.randint(4, 6),) if pids else ()
                row = (kf[0], f"{kf[1]:04d}", *box, c, *pid)
                gt_rows.append(row)
                gt_by_kf.setdefault(kf, []).append((box, c))
        if rng.random() < 0.3:
            gt_rows.append(gt_rows[-1])  # duplicate GT row
    per_kf: list[list[tuple]] = []
    for kf in kfs:
        rows: list[tuple] = []
        for _ in range(rng.randint(*det_range)):
            r = rng.random()
            if r < 0.08:
                box = DEGENERATE[rng.randrange(3)]
            elif r < 0.6 and gt_by_kf.get(kf):
                box = _jitter(rng, rng.choice(gt_by_kf[kf])[0])
            else:
                box = _box(rng)
            c = rng.choice([*CLASSES, OUTSIDE]) if rng.random() < 0.95 else OUTSIDE
            rows.append((kf[0], kf[1], *box, c, score(rng)))
            if rng.random() < 0.1:
                rows.append(rows[-1])  # exact duplicate detection
        per_kf.append(rows)
    # Interleave keyframes in the file: take the next row of a random keyframe.
    det_rows: list[tuple] = []
    queues = [list(reversed(rows)) for rows in per_kf]
    while any(queues):
        q = rng.choice([q for q in queues if q])
        det_rows.append(q.pop())
    return gt_rows, det_rows, [kfs[1]]


def _ties():
    return _world(17, 3, 9, (10, 90), lambda rng: rng.randint(1, 10) / 10, True)


def _all_equal():
    return _world(23, 3, 9, (10, 90), lambda rng: 0.5, False)


def _large():
    return _world(31, 6, 10, (20, 120), lambda rng: rng.randint(0, 99) / 100, True)


def _cut():
    rng = random.Random(41)
    gt_rows: list[tuple] = []
    det_rows: list[tuple] = []
    a, b = (0.1, 0.1, 0.3, 0.5), (0.5, 0.1, 0.7, 0.5)  # mirror images about x = 0.4
    middle = (0.3, 0.1, 0.5, 0.5)  # equal IoU with a and b
    for t in range(8):
        kf = ("cut", f"{900 + t:04d}")
        for c in CLASSES[:3]:
            gt_rows += [(*kf, *a, c, 0), (*kf, *b, c, 1)]
        rows = []
        for i in range(70):
            c = CLASSES[i % 3]
            box = rng.choice([a, b, middle, _jitter(rng, a), _jitter(rng, b), _box(rng)])
            # 40 rows above the cut, 30 tied at 0.3 across the 50th place
            rows.append((*kf, *box, c, 0.6 if i < 40 else 0.3))
        rng.shuffle(rows)
        # Later, strictly higher scores evict the smallest tuples among the tied ones.
        rows += [(*kf, *rng.choice([a, b, middle]), CLASSES[i % 3], 0.45) for i in range(t + 3)]
        det_rows += rows
    return gt_rows, det_rows, [("cut", 907)]
