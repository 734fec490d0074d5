"""Properties of the demo-size world: long-term events, long tail, proposal noise."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from models.boxes import iou_aligned as box_iou
from stages.world import LONG_TERM_IDS
from stages.world import classes as C
from tests.world.conftest import read_gt, read_rows, read_world


def test_long_term_events_are_far_from_their_keyframes(default_world: Path) -> None:
    world = read_world(default_world)
    events = world["long_term_events"]
    gaps = np.array([abs(e["event_time"] - e["timestamp"]) for e in events])
    print(
        f"\nlong-term labels: {len(events)}, event distance min {gaps.min():.2f} s, "
        f"median {np.median(gaps):.2f} s, max {gaps.max():.2f} s"
    )
    assert gaps.min() > 3.0
    for split in ("train", "val"):
        gt = read_gt(default_world / "annotations" / f"{split}.csv")
        for action in LONG_TERM_IDS:
            labelled = {
                (v, int(t), int(p))
                for v, t, p, a in zip(gt.video, gt.ts, gt.person, gt.action, strict=True)
                if a == action
            }
            recorded = {
                (e["video_id"], e["timestamp"], e["person_id"])
                for e in events
                if e["action_id"] == action and e["video_id"] in set(gt.video.tolist())
            }
            assert labelled, (split, action)
            assert labelled == recorded, (split, action)


def test_long_tail(default_world: Path) -> None:
    classes = read_world(default_world)["classes"]
    train = {c["id"]: c["train_count"] for c in classes}
    ratio = max(train.values()) / min(train.values())
    print(f"\ntrain counts {train}; most/least common = {ratio:.1f}")
    assert min(train.values()) > 0 and all(c["val_count"] > 0 for c in classes)
    assert ratio >= 20


def test_persons_per_keyframe(default_world: Path) -> None:
    gt = read_gt(default_world / "annotations" / "train.csv")
    persons = defaultdict(set)
    for v, t, p in zip(gt.video, gt.ts, gt.person, strict=True):
        persons[(v, int(t))].add(int(p))
    sizes = np.array([len(s) for s in persons.values()])
    print(
        f"\npersons per annotated keyframe: mean {sizes.mean():.2f}, "
        f"histogram {np.bincount(sizes).tolist()}"
    )
    assert 2.0 <= sizes.mean() <= 5.0 and sizes.max() >= 4


def test_proposal_noise(default_world: Path) -> None:
    ious, misses, n_gt, fp_scores, scores = [], 0, 0, [], []
    for split in ("train", "val"):
        gt = read_gt(default_world / "annotations" / f"{split}.csv")
        rows = read_rows(default_world / "annotations" / f"person_boxes_{split}.csv")
        props = defaultdict(list)
        for r in rows:
            props[(r[0], int(r[1]))].append([float(v) for v in r[2:6]] + [float(r[7])])
        gt_boxes = defaultdict(dict)
        for v, t, p, b in zip(gt.video, gt.ts, gt.person, gt.boxes, strict=True):
            gt_boxes[(v, int(t))][int(p)] = b
        for key, people in gt_boxes.items():
            g = np.array(list(people.values()))
            pr = np.array(props.get(key, np.zeros((0, 5)))).reshape(-1, 5)
            n_gt += len(g)
            if len(pr) == 0:
                misses += len(g)
                continue
            # IoU matrix [proposals, gt].
            iou = np.array([box_iou(np.repeat(p[None, :4], len(g), 0), g) for p in pr])
            best_per_gt = iou.max(axis=0)
            misses += int((best_per_gt < 0.5).sum())
            best_per_prop = iou.max(axis=1)
            ious += best_per_prop[best_per_prop >= 0.5].tolist()
            scores += pr[best_per_prop >= 0.5, 4].tolist()
            fp_scores += pr[best_per_prop < 0.3, 4].tolist()
    ious, scores = np.array(ious), np.array(scores)
    in_band = float(((ious >= 0.6) & (ious <= 0.95)).mean())
    rank_corr = np.corrcoef(np.argsort(np.argsort(ious)), np.argsort(np.argsort(scores)))[0, 1]
    print(
        f"\nproposals: miss rate {misses / n_gt:.3f}, IoU median {np.median(ious):.3f}, "
        f"share in [0.6, 0.95] {in_band:.3f}, false positives {len(fp_scores)} "
        f"(max score {max(fp_scores):.3f}), Spearman(score, IoU) {rank_corr:.3f}"
    )
    assert 0.02 <= misses / n_gt <= 0.10
    assert in_band >= 0.75
    assert fp_scores and max(fp_scores) < 0.36
    assert rank_corr > 0.6


def test_long_term_classes_have_look_alikes(default_world: Path) -> None:
    """What a clip shows is not enough: the same visible situation occurs unlabelled."""
    gt = read_gt(default_world / "annotations" / "train.csv")
    actions: dict[tuple, set[int]] = defaultdict(set)
    for v, t, p, a in zip(gt.video, gt.ts, gt.person, gt.action, strict=True):
        actions[(v, int(t), int(p))].add(int(a))
    # Touching the table with the object in hand: put back, or a brought-in object.
    at_table = [a for a in actions.values() if {C.TOUCH_TABLE, C.CARRY} <= a]
    put_back = [a for a in at_table if C.RETURN_OBJECT in a]
    print(f"\ntouch+carry keyframes {len(at_table)}, of which put back {len(put_back)}")
    assert put_back and len(put_back) < len(at_table)
    # Persons still (stand or sit) without anyone they wait for far outnumber waiters.
    still = [a for a in actions.values() if a & {C.STAND, C.SIT}]
    waiting = [a for a in still if C.WAIT in a]
    assert waiting and len(waiting) < 0.2 * len(still)
