"""Head/tail breakdown and person-detector AP."""

from __future__ import annotations

import pytest

from stages.evaluate.breakdown import detector_ap, head_tail, head_tail_change
from tests.evaluate.cases import table

A = (0.1, 0.1, 0.4, 0.4)
B = (0.5, 0.1, 0.8, 0.4)
FAR = (0.6, 0.6, 0.9, 0.9)


def test_head_tail_top_and_bottom_k():
    per_class = {1: 0.9, 2: 0.8, 3: 0.1, 4: 0.2, 5: 0.5}
    counts = {1: 1000, 2: 500, 3: 2, 4: 1, 5: 50}
    out = head_tail(per_class, counts, k=2)
    assert out["head_classes"] == [1, 2] and out["tail_classes"] == [3, 4]
    assert out["head_mAP"] == pytest.approx(0.85) and out["tail_mAP"] == pytest.approx(0.15)


def test_head_tail_shrinks_k_for_few_classes():
    per_class = {1: 1.0, 2: 0.0, 3: 0.5}
    out = head_tail(per_class, {1: 3, 2: 1, 3: 2}, k=20)
    assert out["k"] == 1 and out["head_classes"] == [1] and out["tail_classes"] == [2]
    with pytest.raises(ValueError, match="at least 2"):
        head_tail({1: 0.5}, {1: 3})


def test_head_tail_change():
    counts = {1: 10, 2: 5, 3: 1, 4: 0}
    before = {1: 0.8, 2: 0.6, 3: 0.1, 4: 0.0}
    after = {1: 0.7, 2: 0.6, 3: 0.3, 4: 0.2}
    out = head_tail_change(before, after, counts, k=2)
    assert out["head_change"] == pytest.approx(-0.05)
    assert out["tail_change"] == pytest.approx(0.2)
    assert out["tail_classes"] == [3, 4]


def test_detector_ap_dedupes_gt_boxes_and_proposals():
    # The GT person A has 3 action rows; person B 1 row: 2 GT boxes.
    gt = table([("v", 902, *A, 1), ("v", 902, *A, 2), ("v", 902, *A, 3), ("v", 902, *B, 1)])
    # A detection file repeats box A per action; only its best score counts.
    props = table([("v", 902, *A, 1, 0.3), ("v", 902, *A, 2, 0.9), ("v", 902, *FAR, 1, 0.5)])
    ap, recall = detector_ap(gt, props)
    assert recall == 0.5
    assert ap == 0.5  # TP at rank 1, then a FP; B never found


def test_detector_ap_keyframes_are_separate():
    gt = table([("v", 902, *A, 1), ("v", 903, *A, 1)])
    props = table([("v", 902, *A, -1, 0.9), ("v", 903, *B, -1, 0.8), ("v", 903, *A, -1, 0.7)])
    ap, recall = detector_ap(gt, props)
    assert recall == 1.0
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert detector_ap(gt, props, iou_threshold=1.0)[1] == 1.0  # identical boxes: IoU 1
