"""The AVA evaluator reproduces the values asserted by peer projects (fixtures/peer_ava)."""

from __future__ import annotations

import pytest

from stages.evaluate.ava import evaluate_ava_files


@pytest.mark.parametrize("protocol", ["2018", "2019", "2020"])
def test_mmaction2_eval_detection(peer_detection, protocol):
    gt, pred, labels = peer_detection
    result = evaluate_ava_files(gt, pred, labels, protocol=protocol)
    assert result.mAP == pytest.approx(0.09385522, abs=1e-6)
    assert result.mAP == pytest.approx(0.09385521885521886, abs=1e-15)
    assert result.per_class[1] == pytest.approx(0.1704545454545, abs=1e-9)
    assert result.per_class[2] == 0.0
    assert result.per_class[3] == pytest.approx(0.1111111111111, abs=1e-9)
    assert result.num_gt == {1: 4, 2: 3, 3: 5}
    assert sum(result.num_detections.values()) == 30


def test_mmeval_ava_map(peer_ava):
    d = peer_ava / "mmeval_ava_map"
    result = evaluate_ava_files(
        d / "ava_detection_gt.csv", d / "pred_transcribed.csv", d / "ava_action_list.txt"
    )
    assert result.mAP == pytest.approx(0.027777778, abs=1e-6)


def test_mmeval_ava_map_custom_classes(peer_ava):
    d = peer_ava / "mmeval_ava_map"
    result = evaluate_ava_files(
        d / "ava_detection_gt.csv",
        d / "pred_custom_1_3_transcribed.csv",
        d / "action_list_custom_1_3.pbtxt",
    )
    assert result.mAP == pytest.approx(0.04166667, abs=1e-6)
    assert set(result.per_class) == {1, 3}  # GT of class 2 is dropped by the label map


def test_activitynet_labelmap_drops_classes_outside_it(peer_ava, peer_detection):
    """With the official 60-class list, only ids 1 and 3 of the peer files remain."""
    gt, pred, _ = peer_detection
    labels = (
        peer_ava / "activitynet_labelmap" / "ava_action_list_v2.1_for_activitynet_2018.pbtxt.txt"
    )
    result = evaluate_ava_files(gt, pred, labels)
    assert set(result.per_class) == {1, 3}
    assert result.per_class[1] == pytest.approx(0.1704545454545, abs=1e-9)
    assert result.mAP == pytest.approx((0.17045454545454547 + 0.1111111111111111) / 2, abs=1e-12)
