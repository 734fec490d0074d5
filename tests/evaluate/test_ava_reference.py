"""The vectorised evaluator (``ties="stable"``) against a plain per-keyframe loop of the
same protocol, on random cases with many score ties, degenerate boxes, exclusions and
stray keyframes. The official tie order is checked in test_ava_official_ties.py."""

from __future__ import annotations

import numpy as np
import pytest

from stages.evaluate.ava import evaluate_ava
from tests.evaluate.cases import excluded, labelmap, table


def _iou(a, b):
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter = ih * iw
    union = (a[3] - a[1]) * (a[2] - a[0]) + (b[3] - b[1]) * (b[2] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def reference(gt_rows, det_rows, ids, ex_keys, *, cap, thr, ignore_off_gt):
    """One keyframe and one detection at a time, as the protocol reads."""
    gt = [r for r in gt_rows if r[6] in ids and (r[0], r[1]) not in ex_keys]
    dets = [(i, r) for i, r in enumerate(det_rows) if r[6] in ids]
    by_kf: dict = {}
    for i, r in dets:
        by_kf.setdefault((r[0], r[1]), []).append((i, r))
    kept = []
    for kf, rows in by_kf.items():
        if kf in ex_keys:
            continue
        rows = sorted(rows, key=lambda ir: (-ir[1][7], ir[0]))
        rows = rows[:cap] if cap else rows
        kept += [(i, r) for i, r in rows if r[2] < r[4] and r[3] < r[5]]
    gt_kfs = {(r[0], r[1]) for r in gt}
    if ignore_off_gt:
        kept = [(i, r) for i, r in kept if (r[0], r[1]) in gt_kfs]
    tp: dict[int, bool] = {}
    taken: set[int] = set()
    for i, r in sorted(kept, key=lambda ir: (-ir[1][7], ir[0])):
        cands = [k for k, g in enumerate(gt) if (g[0], g[1], g[6]) == (r[0], r[1], r[6])]
        if not cands:
            tp[i] = False
            continue
        ious = [_iou(r[2:6], gt[k][2:6]) for k in cands]
        best = cands[int(np.argmax(ious))]
        tp[i] = max(ious) >= thr and best not in taken
        if tp[i]:
            taken.add(best)
    aps = {}
    for c in ids:
        n_gt = sum(1 for g in gt if g[6] == c)
        if n_gt == 0:
            continue
        ranked = sorted([(i, r) for i, r in kept if r[6] == c], key=lambda ir: (-ir[1][7], ir[0]))
        flags = np.array([tp[i] for i, _ in ranked], dtype=bool)
        ctp, cfp = np.cumsum(flags), np.cumsum(~flags)
        prec = np.concatenate([[0], ctp / np.maximum(ctp + cfp, 1), [0]])
        rec = np.concatenate([[0], ctp / n_gt, [1]])
        for k in range(len(prec) - 2, -1, -1):
            prec[k] = max(prec[k], prec[k + 1])
        aps[c] = sum(
            (rec[k] - rec[k - 1]) * prec[k] for k in range(1, len(rec)) if rec[k] != rec[k - 1]
        )
    return aps


def random_case(rng: np.random.Generator):
    def box():
        x1, y1 = rng.uniform(0, 0.6, 2)
        w, h = rng.uniform(0.05, 0.4, 2)
        return (round(x1, 2), round(y1, 2), round(x1 + w, 2), round(y1 + h, 2))

    kfs = [(f"vid{v}", 900 + t) for v in range(3) for t in range(4)]
    gt_rows, det_rows = [], []
    for kf in kfs[:-2]:  # the last two keyframes have detections only
        persons = [box() for _ in range(rng.integers(1, 4))]
        for p in persons:
            for c in rng.choice([1, 2, 3, 5], size=rng.integers(1, 3), replace=False):
                gt_rows.append((*kf, *p, int(c)))
        if rng.random() < 0.3:
            gt_rows.append(gt_rows[-1])  # duplicate GT row
    for kf in kfs:
        for _ in range(rng.integers(0, 14)):
            b = box() if rng.random() > 0.1 else (0.5, 0.5, 0.5, 0.7)
            if rng.random() < 0.5 and gt_rows:  # jitter a GT box of any keyframe
                g = gt_rows[rng.integers(len(gt_rows))]
                b = tuple(round(float(x + rng.normal(0, 0.03)), 3) for x in g[2:6])
            det_rows.append((*kf, *b, int(rng.choice([1, 2, 3, 5])), round(float(rng.random()), 1)))
    return gt_rows, det_rows, {kfs[0]}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    ("protocol", "cap", "thr"), [("2019", 6, 0.5), ("2018", None, 0.3), ("2020", 4, 0.7)]
)
def test_matches_loop_reference(seed, protocol, cap, thr):
    rng = np.random.default_rng(seed)
    gt_rows, det_rows, ex = random_case(rng)
    ids = [1, 2, 3]  # class 5 is outside the label map
    ex_keys = set() if protocol == "2020" else ex
    expected = reference(
        gt_rows, det_rows, ids, ex_keys, cap=cap, thr=thr, ignore_off_gt=protocol == "2020"
    )
    result = evaluate_ava(
        table(gt_rows),
        table(det_rows),
        labelmap(ids),
        excluded(sorted(ex)),
        protocol=protocol,  # type: ignore[arg-type]
        iou_threshold=thr,
        max_per_keyframe=cap or 0,
        ties="stable",  # the loop keeps file order on equal scores
    )
    assert result.per_class.keys() == expected.keys()
    for c, ap in expected.items():
        assert result.per_class[c] == pytest.approx(ap, abs=1e-12), c
