"""Hand-made cases, one per rule of the AVA protocol (see stages/evaluate/ava.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stages.data.types import BoxTable
from stages.evaluate.ava import evaluate_ava, evaluate_ava_files
from tests.evaluate.cases import excluded, labelmap, table

A = (0.1, 0.1, 0.4, 0.4)
B = (0.5, 0.1, 0.8, 0.4)
FAR = (0.6, 0.6, 0.9, 0.9)
# IoU(A, A_SHIFT) = 0.3*0.24 / (0.09 + 0.072 - 0.072) = 0.8 (0.3 wide, 0.24 of height shared)
A_SHIFT = (0.1, 0.16, 0.4, 0.4)


def ap1(gt_rows, det_rows, **kw):
    return evaluate_ava(table(gt_rows), table(det_rows), labelmap([1, 2]), **kw).per_class[1]


def test_perfect_detection_scores_one():
    assert ap1([("v", 902, *A, 1)], [("v", 902, *A, 1, 0.9)]) == 1.0


def test_cap_keeps_the_earlier_row_on_equal_scores():
    gt = [("v", 902, *A, 1)]
    fps = [("v", 902, *FAR, 1, 0.5)] * 50
    tp = [("v", 902, *A, 1, 0.5)]
    kw = {"ties": "stable"}
    assert ap1(gt, tp + fps, **kw) == 1.0  # kept, and ranked first among the ties
    assert ap1(gt, fps + tp, **kw) == 0.0  # the 51st row with an equal score is cut
    # 2018 has no cap: the TP survives but ranks last among 51 equal scores.
    assert ap1(gt, fps + tp, protocol="2018", **kw) == pytest.approx(1 / 51)
    assert ap1(gt, fps + tp, max_per_keyframe=51, **kw) == pytest.approx(1 / 51)


def test_official_cap_on_equal_scores_follows_the_heap():
    """The official heap never replaces on an equal score: the first 50 rows of a
    keyframe survive whatever follows with the same score. Among them, the order is
    the heap's, then ``np.argsort(scores)[::-1]``; here the TP at the front is the
    smallest tuple (box A lies above FAR), so it stays at the heap's root."""
    gt = [("v", 902, *A, 1)]
    fps = [("v", 902, *FAR, 1, 0.5)] * 50
    tp = [("v", 902, *A, 1, 0.5)]
    assert ap1(gt, fps + tp) == 0.0  # cut: the heap was full of equal scores
    # Kept; where it ranks among 51 equal scores is numpy's argsort, reversed.
    order = np.argsort(np.full(50, 0.5))[::-1]
    assert ap1(gt, tp + fps) == pytest.approx(1 / (int(np.flatnonzero(order == 0)[0]) + 1))
    # A later higher score evicts the heap's smallest tuple: the TP (y1 0.1 < 0.6).
    higher = [("v", 902, *FAR, 2, 0.9)]
    assert ap1(gt, tp + fps + higher) == 0.0


def test_cap_counts_all_classes_of_the_keyframe():
    gt = [("v", 902, *A, 1)]
    other = [("v", 902, *FAR, 2, 0.9)] * 50
    assert ap1(gt, [*other, ("v", 902, *A, 1, 0.1)]) == 0.0
    # Another keyframe's detections do not count against this one.
    other_kf = [("v", 903, *FAR, 2, 0.9)] * 50
    assert ap1(gt, [*other_kf, ("v", 902, *A, 1, 0.1)]) == 1.0


def test_cap_happens_before_invalid_boxes_are_dropped():
    gt = [("v", 902, *A, 1)]
    invalid = [("v", 902, 0.5, 0.5, 0.5, 0.9, 2, 0.9)] * 50  # x1 == x2
    assert ap1(gt, [*invalid, ("v", 902, *A, 1, 0.1)]) == 0.0


def test_invalid_detection_boxes_are_dropped_not_false_positives():
    gt = [("v", 902, *A, 1)]
    dets = [("v", 902, 0.4, 0.1, 0.1, 0.4, 1, 0.99), ("v", 902, 0.1, 0.4, 0.4, 0.4, 1, 0.98)]
    result = evaluate_ava(table(gt), table([*dets, ("v", 902, *A, 1, 0.5)]), labelmap([1]))
    assert result.per_class[1] == 1.0
    assert result.num_detections[1] == 1
    assert result.counts["invalid_detection_rows"] == 2


def test_gt_boxes_are_not_validated():
    # A degenerate GT box still counts as GT (recall can only reach 1/2).
    gt = [("v", 902, *A, 1), ("v", 902, 0.5, 0.5, 0.5, 0.5, 1)]
    assert ap1(gt, [("v", 902, *A, 1, 0.9)]) == 0.5


def test_excluded_keyframes_drop_gt_and_detections():
    gt = [("v", 902, *A, 1), ("v", 903, *A, 1)]
    dets = [("v", 902, *A, 1, 0.9), ("v", 903, *FAR, 1, 0.95)]
    assert ap1(gt, dets) == pytest.approx(0.25)  # FP first, then TP: P=1/2 at R=1/2
    ex = excluded([("v", 903)])
    result = evaluate_ava(table(gt), table(dets), labelmap([1]), ex)
    assert result.per_class[1] == 1.0
    assert result.num_gt[1] == 1
    # The 2020 protocol uses no exclusions file.
    assert evaluate_ava(table(gt), table(dets), labelmap([1]), ex, protocol="2020").per_class[
        1
    ] == pytest.approx(0.25)


def test_detection_on_keyframe_without_gt_is_false_positive():
    gt = [("v", 902, *A, 1)]
    dets = [("v", 902, *A, 1, 0.5), ("w", 902, *A, 1, 0.9)]
    assert ap1(gt, dets) == 0.5
    assert ap1(gt, dets, protocol="2018") == 0.5
    # 2020 ignores detections on keyframes absent from the GT.
    assert ap1(gt, dets, protocol="2020") == 1.0


def test_detection_on_gt_keyframe_of_another_class_is_false_positive_in_2020():
    gt = [("v", 902, *A, 1), ("v", 903, *A, 2)]
    dets = [("v", 902, *A, 1, 0.5), ("v", 903, *A, 1, 0.9)]
    assert ap1(gt, dets, protocol="2020") == 0.5


def test_gt_keyframe_of_a_class_outside_the_label_map_still_counts_in_2020():
    # The official 2020 code collects GT keyframes before dropping other classes' rows.
    gt = [("v", 902, *A, 1), ("v", 903, *A, 7)]  # 7 is not in the label map [1, 2]
    dets = [("v", 902, *A, 1, 0.5), ("v", 903, *A, 1, 0.9)]
    for ties in ("official", "stable"):
        assert ap1(gt, dets, protocol="2020", ties=ties) == 0.5


def test_no_fall_back_to_the_next_best_gt():
    # Both detections overlap A best; the second also overlaps B enough but may not take it.
    b_near = (0.1, 0.1, 0.45, 0.4)  # IoU with A = 0.857
    gt = [("v", 902, *A, 1), ("v", 902, *b_near, 1)]
    dets = [("v", 902, *A, 1, 0.9), ("v", 902, *A_SHIFT, 1, 0.8)]
    # second det: IoU(A_SHIFT, A) = 0.8 > IoU(A_SHIFT, b_near) = 0.686 >= 0.5 -> FP
    assert ap1(gt, dets) == 0.5


def test_best_gt_tie_goes_to_the_first_gt_row():
    gt = [("v", 902, *A, 1), ("v", 902, *A, 1)]  # duplicate GT rows each count
    one = [("v", 902, *A, 1, 0.9)]
    assert ap1(gt, one) == 0.5
    # The second identical detection picks the first GT again (argmax), already matched.
    assert ap1(gt, [*one, ("v", 902, *A, 1, 0.8)]) == 0.5


def test_matching_is_in_score_order_not_file_order():
    gt = [("v", 902, *A, 1)]
    dets = [("v", 902, *A_SHIFT, 1, 0.3), ("v", 902, *A, 1, 0.9)]
    # The better-scored row matches first; the other is a FP ranked after it.
    assert ap1(gt, dets) == 1.0


def test_class_without_detections_scores_zero_and_counts():
    gt = [("v", 902, *A, 1), ("v", 902, *A, 2)]
    result = evaluate_ava(table(gt), table([("v", 902, *A, 1, 0.9)]), labelmap([1, 2, 3]))
    assert result.per_class == {1: 1.0, 2: 0.0}  # class 3 has no GT: left out
    assert result.mAP == 0.5


def test_rows_outside_the_labelmap_are_dropped():
    gt = [("v", 902, *A, 1), ("v", 902, *B, 7)]
    dets = [("v", 902, *B, 7, 0.99), ("v", 902, *A, 1, 0.5)]
    result = evaluate_ava(table(gt), table(dets), labelmap([1]))
    assert result.per_class == {1: 1.0}


def test_iou_threshold_option():
    gt = [("v", 902, *A, 1)]
    det = [("v", 902, *A_SHIFT, 1, 0.9)]  # IoU 0.8
    assert ap1(gt, det) == 1.0
    assert ap1(gt, det, iou_threshold=0.8) == 1.0  # >= threshold
    assert ap1(gt, det, iou_threshold=0.81) == 0.0
    with pytest.raises(ValueError, match="iou_threshold"):
        ap1(gt, det, iou_threshold=0.0)


def test_bad_protocol_is_rejected():
    with pytest.raises(ValueError, match="protocol"):
        ap1([("v", 902, *A, 1)], [], protocol="2017")


def test_groups_follow_label_types():
    lm = labelmap([1, 2, 3], ["PERSON_MOVEMENT", "OBJECT_MANIPULATION", "PERSON_MOVEMENT"])
    gt = [("v", 902, *A, 1), ("v", 902, *A, 2), ("v", 902, *A, 3)]
    dets = [("v", 902, *A, 1, 0.9), ("v", 902, *A, 2, 0.9)]
    result = evaluate_ava(table(gt), table(dets), lm)
    assert result.groups == {"pose": 0.5, "object_manipulation": 1.0}


def test_files_7_columns_and_zero_padded_timestamps(tmp_path):
    (tmp_path / "gt.csv").write_text("v1,0902,0.1,0.1,0.4,0.4,1,0\nv1,0903,0.1,0.1,0.4,0.4,1,0\n")
    # 7-column rows score 1.0; "902" and "0902" are the same keyframe.
    (tmp_path / "det.csv").write_text("v1,902,0.1,0.1,0.4,0.4,1\nv1,903,0.6,0.6,0.9,0.9,1\n")
    (tmp_path / "ex.csv").write_text("")
    (tmp_path / "labels.pbtxt").write_text(
        'label {\n  name: "stand"\n  label_id: 1\n  label_type: PERSON_MOVEMENT\n}\n'
    )
    files = (tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "labels.pbtxt")
    result = evaluate_ava_files(*files, tmp_path / "ex.csv", ties="stable")
    # Both rows score 1.0: the TP (first row) ranks first, then the FP; recall 1/2.
    assert result.per_class == {1: 0.5}
    assert result.groups == {"pose": 0.5}
    assert result.num_detections == {1: 2}
    # The official np.argsort([1.0, 1.0])[::-1] puts the second row (the FP) first.
    official = evaluate_ava_files(*files, tmp_path / "ex.csv")
    assert official.per_class == {1: 0.25}
    assert official.num_detections == {1: 2}


def test_non_finite_score_names_file_and_line(tmp_path):
    from stages.data.errors import DataError

    (tmp_path / "gt.csv").write_text("v1,0902,0.1,0.1,0.4,0.4,1,0\n")
    (tmp_path / "det.csv").write_text(
        "v1,902,0.1,0.1,0.4,0.4,1,0.5\nv1,902,0.1,0.1,0.4,0.4,1,nan\n"
    )
    (tmp_path / "l.pbtxt").write_text('item {\n  name: "a"\n  id: 1\n}\n')
    with pytest.raises(DataError, match=r"det\.csv:2"):
        evaluate_ava_files(tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "l.pbtxt")


def test_empty_detections_give_zero():
    result = evaluate_ava(table([("v", 902, *A, 1)]), table([]), labelmap([1]))
    assert result.per_class == {1: 0.0}
    assert np.isnan(evaluate_ava(table([]), table([]), labelmap([1])).mAP)


def test_heap_replay_in_blocks_keeps_the_official_order(monkeypatch: pytest.MonkeyPatch):
    """The heap replay runs a block of keyframes at a time (bounded memory at AVA scale);
    any block size gives the same kept rows in the same order."""
    from stages.evaluate import official_order

    rng = np.random.default_rng(3)
    n = 4000
    kf = rng.integers(0, 60, n)  # 60 keyframes, ~67 rows each: the cap of 50 cuts ties
    score = rng.integers(0, 4, n).astype(np.float64) / 4  # many equal scores
    action = rng.integers(1, 5, n)
    boxes = np.sort(rng.random((n, 4)), axis=1)[:, [0, 1, 2, 3]]
    whole = official_order.heap_keyframe_order(kf, score, action, boxes, 50)
    for block in (1, 7, 500):
        monkeypatch.setattr(official_order, "REPLAY_BLOCK", block)
        assert np.array_equal(
            official_order.heap_keyframe_order(kf, score, action, boxes, 50), whole
        )


@pytest.mark.parametrize("name", ["ties", "cut", "large"])
def test_evaluation_in_keyframe_blocks_equals_the_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
):
    """Detections are evaluated a block of whole keyframes at a time, video names are
    coded a block of rows at a time and the file is read a part at a time (bounded memory
    at AVA scale, issue 22): any block size gives the APs, counts and detection numbers of
    the whole tables, under both tie orders and every protocol, on files whose keyframes
    are interleaved (``ties``, ``large``: read whole after all) or grouped (``cut``), with
    excluded keyframes."""
    from stages.data import ava as data_ava
    from stages.data import read_detections_csv, read_excluded_csv, read_gt_csv, read_labelmap
    from stages.evaluate import ava
    from tests.evaluate.official_cases import write_case

    files = write_case(name, tmp_path)
    args = (files["gt"], files["det"], files["labelmap"], files["excluded"])
    settings = [(p, t) for p in ("2018", "2019", "2020") for t in ("official", "stable")]
    tables = (
        read_gt_csv(files["gt"], strict=False),
        read_detections_csv(files["det"], strict=False),
        read_labelmap(files["labelmap"]),
        read_excluded_csv(files["excluded"]),
    )

    def results(files: bool) -> list[tuple]:
        out = []
        for protocol, ties in settings:
            if files:
                r = evaluate_ava_files(*args, protocol=protocol, ties=ties)
            else:
                r = evaluate_ava(*tables, protocol=protocol, ties=ties)
            out.append((r.per_class, r.num_detections, r.num_gt, r.counts))
        return out

    whole = results(files=False)
    assert any(r[3].get("excluded_detection_rows") for r in whole)
    assert results(files=True) == whole
    for rows, part_bytes in ((1, 300), (7, 997), (500, 4096)):
        monkeypatch.setattr(ava, "EVAL_BLOCK_ROWS", rows)
        monkeypatch.setattr(ava, "KEYFRAME_ID_BLOCK", rows)
        monkeypatch.setattr(data_ava, "STREAM_BLOCK_BYTES", part_bytes)
        assert results(files=True) == whole, rows


def _prediction_rows(duplicate: bool) -> tuple:
    """Predictions per box on 30 keyframes (scores on a coarse grid: ties everywhere, and
    the cap of 50 cuts keyframes of 13+ boxes × 4 classes), GT boxes near some of them."""
    from stages.data.types import PredictionRows

    rng = np.random.default_rng(11)
    n_kf = 30
    video = np.array([f"v{k // 10}" for k in range(n_kf)], dtype=object)
    timestamp = np.array([900 + k % 10 for k in range(n_kf)], dtype=np.int64)
    if duplicate:  # keyframe 25 is keyframe 3 again, far from it in the index
        video[25], timestamp[25] = video[3], timestamp[3]
    counts = rng.integers(0, 16, n_kf)
    offset = np.r_[0, np.cumsum(counts)]
    xy = rng.uniform(0, 0.6, (offset[-1], 2))
    boxes = np.column_stack([xy, xy + rng.uniform(0.1, 0.4, (offset[-1], 2))])
    classes = np.array([1, 2, 3, 5])
    scores = rng.integers(0, 5, (offset[-1], classes.size)) / 4
    rows = PredictionRows(video, timestamp, offset, boxes, scores, classes)
    pick = rng.random(offset[-1]) < 0.5
    kf_of_box = np.repeat(np.arange(n_kf), counts)
    gt_rows = [
        (video[k], int(timestamp[k]), *(boxes[b] + 0.02), int(rng.choice(classes)))
        for b, k in enumerate(kf_of_box)
        if pick[b]
    ]
    return rows, table(gt_rows)


@pytest.mark.parametrize("duplicate", [False, True])
def test_prediction_rows_evaluate_as_their_table(
    monkeypatch: pytest.MonkeyPatch, duplicate: bool
) -> None:
    """Predictions per box (made and evaluated a block of keyframes at a time) score
    exactly as the table of all their rows, under both tie orders, every protocol, a
    class subset, exclusions, any block size; a keyframe listed twice falls back to the
    table (its rows are not together)."""
    from stages.evaluate import ava

    rows, gt = _prediction_rows(duplicate)
    whole = rows.table()
    settings = [
        (p, t, lm, ex)
        for p in ("2018", "2019", "2020")
        for t in ("official", "stable")
        for lm, ex in ((labelmap([1, 2, 3, 5]), None), (labelmap([2, 5]), excluded([("v1", 904)])))
    ]

    def results(detections) -> list[tuple]:
        out = []
        for protocol, ties, lm, ex in settings:
            r = evaluate_ava(gt, detections, lm, ex, protocol=protocol, ties=ties)
            out.append((r.per_class, r.num_detections, r.counts))
        return out

    want = results(whole)
    assert any(r[2]["detection_rows"] > r[1].get(1, 0) for r in want)
    for size in (1, 7, 500):
        monkeypatch.setattr(ava, "EVAL_BLOCK_ROWS", size)
        assert results(rows) == want, size


@pytest.mark.parametrize("duplicate", [False, True])
def test_prediction_files_read_a_part_at_a_time_evaluate_as_their_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, duplicate: bool
) -> None:
    """A predictions file (Parquet row groups, CSV parts of a few hundred bytes) is
    evaluated as it is read and scores exactly as its whole table, under both tie orders
    and every protocol; a keyframe listed twice (its rows apart) is read whole."""
    from stages.data import ava as data_ava
    from stages.data import (
        predictions,
        read_detections_csv,
        read_predictions_parquet,
        stream_detections_csv,
        stream_predictions_parquet,
        write_predictions_csv,
        write_predictions_parquet,
    )
    from stages.data.types import RowBlocks
    from stages.evaluate import ava

    rows, gt = _prediction_rows(duplicate)
    monkeypatch.setattr(predictions, "CSV_BLOCK_ROWS", 37)  # row groups and CSV writes
    write_predictions_parquet(tmp_path / "p.parquet", rows)
    write_predictions_csv(tmp_path / "p.csv", rows)
    lm, ex = labelmap([1, 2, 5]), excluded([("v1", 904)])
    settings = [(p, t) for p in ("2018", "2019", "2020") for t in ("official", "stable")]

    def results(detections) -> list[tuple]:
        out = []
        for protocol, ties in settings:
            r = evaluate_ava(gt, detections, lm, ex, protocol=protocol, ties=ties)
            out.append((r.per_class, r.num_detections, r.counts))
        return out

    parquet_want = results(read_predictions_parquet(tmp_path / "p.parquet"))
    csv_want = results(read_detections_csv(tmp_path / "p.csv", strict=False))
    parquet = stream_predictions_parquet(tmp_path / "p.parquet")
    assert len(list(parquet)) > 5  # read a row group at a time
    passes = []

    def counted() -> Iterator[BoxTable]:
        passes.append(1)
        yield from parquet

    counting = RowBlocks(counted, parquet.source)
    for size in (1, 7, 500):
        monkeypatch.setattr(ava, "EVAL_BLOCK_ROWS", size)
        monkeypatch.setattr(data_ava, "STREAM_BLOCK_BYTES", 200 * size)
        passes.clear()
        assert results(counting) == parquet_want, size
        # One pass per evaluation; a second (the whole table) only when a keyframe repeats.
        assert len(passes) == len(settings) * (2 if duplicate else 1)
        assert results(stream_detections_csv(tmp_path / "p.csv")) == csv_want, size
