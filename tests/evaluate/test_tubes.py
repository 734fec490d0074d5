"""Tube datasets: GT pickle reader, frame-mAP, video-mAP and tube linking."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from stages.data.errors import DataError
from stages.data.tubes import TubeGT, read_tube_gt, tube_gt_from_dict
from stages.evaluate.linking import decay_nms, link_tubes
from stages.evaluate.tubes import frame_map, nms_3d, tube_iou, video_map, video_map_summary


@pytest.fixture(scope="module")
def multisports(peer_ava):
    d = peer_ava / "mmaction2_eval_multisports"
    gt = read_tube_gt(d / "gt.pkl", trust_pickle=True)
    dets = np.load(d / "frame_dets_derived.npy")
    with open(d / "video_tubes_derived.pkl", "rb") as f:
        tubes = pickle.load(f)
    return gt, dets, tubes


def test_reader_requires_trust(peer_ava):
    with pytest.raises(ValueError, match="trust_pickle"):
        read_tube_gt(peer_ava / "mmaction2_eval_multisports" / "gt.pkl")


def test_reader_normalises(multisports):
    gt, _, _ = multisports
    assert isinstance(gt, TubeGT)
    assert len(gt.labels) == 66
    video = gt.test_videos[0][0]
    assert gt.nframes[video] == 725 and gt.resolution[video] == (720, 1280)
    assert sorted(gt.tubes[video]) == [9, 10, 11, 14]
    assert all(t.dtype == np.float64 and t.shape[1] == 5 for t in gt.tubes[video][9])


def test_reader_reads_python2_bytes_and_flat_splits(tmp_path):
    raw = {
        "labels": ["run"],
        "test_videos": ["v1"],
        "nframes": {"v1": 3},
        "resolution": {"v1": (10, 20)},
        "gttubes": {"v1": {0: [np.array([[1, 0, 0, 5, 5], [2, 0, 0, 5, 5]])]}},
    }
    path = tmp_path / "gt.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=2))
    gt = read_tube_gt(path, trust_pickle=True)
    assert gt.test_videos == (("v1",),) and gt.train_videos == ()


@pytest.mark.parametrize(
    ("tube", "message"),
    [
        (np.zeros((2, 4)), "expected \\(n>0, 5\\)"),
        (np.array([[2, 0, 0, 1, 1], [1, 0, 0, 1, 1]]), "increasing"),
    ],
)
def test_reader_rejects_bad_tubes(tube, message):
    raw = {
        "labels": ["a"],
        "test_videos": [["v"]],
        "nframes": {"v": 2},
        "resolution": {"v": (1, 1)},
    }
    with pytest.raises(DataError, match=message):
        tube_gt_from_dict({**raw, "gttubes": {"v": {0: [tube]}}}, source="x.pkl")
    with pytest.raises(DataError, match="missing keys"):
        tube_gt_from_dict(raw, source="x.pkl")


def test_peer_frame_map(multisports):
    gt, dets, _ = multisports
    mean, per_class = frame_map(gt, dets, iou=0.5)
    assert round(100 * mean, 4) == 83.6506
    assert {k: round(v, 4) for k, v in per_class.items()} == {
        9: 0.6715,
        10: 0.9906,
        11: 0.8846,
        14: 0.7994,
    }


def test_peer_video_map(multisports):
    gt, _, tubes = multisports
    summary = video_map_summary(gt, tubes)
    assert round(100 * summary["v_map@0.2"], 4) == 37.5
    assert round(100 * summary["v_map@0.5"], 4) == 37.5
    assert round(100 * summary["v_map_0.10:0.90"], 4) == 29.1667
    # The peer's other sweeps (not asserted by its test): 0.05:0.45 and 0.50:0.95.
    low = np.mean([video_map(gt, tubes, iou=0.05 + 0.05 * i)[0] for i in range(9)])
    high = np.mean([video_map(gt, tubes, iou=0.5 + 0.05 * i)[0] for i in range(10)])
    assert round(100 * low, 4) == 37.5 and round(100 * high, 4) == 21.25


def test_multisports_skips_its_six_classes():
    labels = ["aerobic kick jump", "run"]
    tube = np.array([[1, 0, 0, 10, 10], [2, 0, 0, 10, 10]], dtype=np.float64)
    gt = TubeGT(
        labels=tuple(labels),
        train_videos=(),
        test_videos=(("v",),),
        nframes={"v": 2},
        resolution={"v": (10, 10)},
        tubes={"v": {0: [tube], 1: [tube]}},
    )
    dets = np.array([[0, 1, 1, 0.9, 0, 0, 10, 10], [0, 1, 0, 0.9, 0, 0, 10, 10]])
    assert frame_map(gt, dets)[1] == {1: 0.5}
    assert frame_map(gt, dets, convention="act")[1].keys() == {0, 1}


def _gt(tubes_by_label, nframes=10):
    return TubeGT(
        labels=("a", "b"),
        train_videos=(),
        test_videos=(("v",),),
        nframes={"v": nframes},
        resolution={"v": (100, 100)},
        tubes={"v": tubes_by_label},
    )


def _tube(f0, f1, box):
    frames = np.arange(f0, f1 + 1, dtype=np.float64)
    return np.column_stack([frames, np.tile(np.asarray(box, float), (frames.size, 1))])


def test_tube_iou_conventions():
    a = _tube(1, 10, (0, 0, 10, 10))
    b = _tube(6, 15, (0, 0, 10, 5))
    # temporal (10-6)/(15-1) = 4/14, spatial 0.5 over the shared frames 6..10
    assert tube_iou(a, b) == pytest.approx(4 / 14 * 0.5)
    # +1: temporal 5/15, spatial (11*6)/(11*11)
    assert tube_iou(a, b, plus_one=True) == pytest.approx(5 / 15 * 66 / 121)
    assert tube_iou(a, _tube(11, 12, (0, 0, 10, 10))) == 0.0


def test_frame_map_act_falls_back_multisports_does_not():
    g1, g2 = (0, 0, 10, 10), (0, 0, 10, 8)  # IoU 0.8
    gt = _gt({0: [_tube(1, 1, g1), _tube(1, 1, g2)]})
    dets = np.array([[0, 1, 0, 0.9, *g1], [0, 1, 0, 0.8, *g1]], dtype=np.float64)
    assert frame_map(gt, dets)[1] == {0: 0.5}  # second det: best GT already taken
    # ACT: the second det falls back to g2 (+1 IoU 99/121 >= 0.5); trapezoid AP = 1.
    assert frame_map(gt, dets, convention="act")[1] == {0: pytest.approx(1.0)}


def test_video_map_hand_case():
    gt = _gt({0: [_tube(1, 10, (0, 0, 10, 10))], 1: [_tube(1, 10, (0, 0, 10, 10))]})
    tubes = {
        0: [("v", 0.9, _tube(1, 10, (0, 0, 10, 10))), ("v", 0.95, _tube(1, 3, (0, 0, 10, 10)))],
        1: [],
    }
    # Class 0: FP (short tube, IoU 0.2) first, then TP -> VOC AP 0.5; class 1: 0.
    mean, per_class = video_map(gt, tubes, iou=0.5)
    assert per_class == {0: 0.5, 1: 0.0} and mean == 0.25
    assert video_map(gt, tubes, iou=0.2)[1][0] == 1.0  # 2/9 >= 0.2: the short tube matches


def test_nms_3d_keeps_best_and_distinct():
    t = _tube(1, 10, (0, 0, 10, 10))
    kept = nms_3d(
        [("v", 0.5, t), ("v", 0.9, t.copy()), ("v", 0.4, _tube(20, 30, (0, 0, 9, 9)))], 0.3
    )
    assert [s for _, s, _ in kept] == [0.9, 0.4]


def test_decay_nms_lowers_overlapping_scores():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 8], [50, 50, 60, 60]], dtype=np.float64)
    out = decay_nms(boxes, np.array([0.9, 0.8, 0.7]), 0.6, top_k=10)
    iou = 90 / 100
    np.testing.assert_allclose(out[:, 4], [0.9, 0.7, 0.8 * (1 - iou)])
    assert decay_nms(boxes, np.array([0.9, 0.8, 0.7]), 0.6, top_k=1).shape == (1, 5)


def test_link_tubes_tiny_case():
    # Two people over 6 frames (1-based); person B disappears after frame 3.
    rows = []
    for f in range(1, 7):
        rows.append([0, f, 1, 0.9, 10 + f, 10, 30 + f, 40])
        if f <= 3:
            rows.append([0, f, 1, 0.6, 60, 10, 80, 40])
    rows.append([0, 2, 0, 0.8, 0, 0, 5, 5])  # another class: its own tubes
    out = link_tubes(np.array(rows, float), ["v"], {"v": 6}, num_labels=2, min_length=3)
    assert [len(out[0]), len(out[1])] == [0, 2]
    long, short = sorted(out[1], key=lambda t: -t[2].shape[0])
    assert long[2][:, 0].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(long[2][:, 1], [11, 12, 13, 14, 15, 16])
    assert long[1] == pytest.approx(0.9) and short[2].shape == (3, 6)
    only_long = link_tubes(np.array(rows, float), ["v"], {"v": 6}, num_labels=2, min_length=4)[1]
    assert len(only_long) == 1
    np.testing.assert_array_equal(only_long[0][2], long[2])


def test_link_tubes_reproduces_peer_tubes(multisports):
    """mmaction2's linker scores every box with the last detection's score (it reads a
    stale loop variable); given those scores, ours builds the same tubes box for box."""
    gt, dets, peer = multisports
    as_peer = dets.copy()
    as_peer[:, 3] = dets[-1, 3]
    ours = link_tubes(as_peer, gt.test_videos[0], gt.nframes, num_labels=len(gt.labels))
    assert {k: len(v) for k, v in ours.items()} == {k: len(v) for k, v in peer.items()}
    for label, tubes in peer.items():
        for (v, s, t), (v2, s2, t2) in zip(tubes, ours[label], strict=True):
            assert v == v2 and s2 == pytest.approx(s, abs=1e-6)
            np.testing.assert_array_equal(t, t2)
    assert round(100 * video_map_summary(gt, ours)["v_map_0.10:0.90"], 4) == 29.1667


def test_link_tubes_with_true_scores(multisports):
    """With the real per-box scores the linker finds both people of class 10."""
    gt, dets, _ = multisports
    ours = link_tubes(dets, gt.test_videos[0], gt.nframes, num_labels=len(gt.labels))
    assert {k: len(v) for k, v in ours.items() if v} == {9: 1, 10: 2, 14: 1}
    summary = video_map_summary(gt, ours)
    assert summary["v_map@0.5"] == 0.5


def test_video_map_act_applies_3d_nms():
    x, y = (0, 0, 10, 10), (50, 50, 60, 60)
    gt = _gt({0: [_tube(1, 10, x), _tube(1, 10, y)]})
    dets = {
        0: [("v", 0.9, _tube(1, 10, x)), ("v", 0.5, _tube(1, 10, y)), ("v", 0.8, _tube(1, 10, x))]
    }
    # MultiSports: TP, FP (duplicate), TP -> VOC AP 0.5 * 1 + 0.5 * 2/3.
    assert video_map(gt, dets, iou=0.5)[1][0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # ACT: the duplicate is suppressed by the 3D NMS -> TP, TP -> trapezoid AP 1.
    assert video_map(gt, dets, iou=0.5, convention="act")[1][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="convention"):
        video_map(gt, dets, iou=0.5, convention="ucf")  # type: ignore[arg-type]
