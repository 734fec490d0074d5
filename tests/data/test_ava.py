"""AVA CSV readers: peer files, every validation error, structure-only reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.data import (
    NO_ACTION,
    NO_PERSON,
    DataError,
    read_detections_csv,
    read_excluded_csv,
    read_gt_csv,
    read_labelmap,
)
from stages.data.ava import check_detections_csv, check_gt_csv


def _csv(tmp_path: Path, text: str, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_peer_gt_and_predictions(peer_ava: Path) -> None:
    folder = peer_ava / "mmaction2_eval_detection"
    labelmap = read_labelmap(folder / "action_list.txt")
    gt = read_gt_csv(folder / "gt.csv", labelmap=labelmap)
    assert len(gt) == 12
    assert gt.video[0] == "3reY9zJKhqN" and gt.timestamp[0] == 1774
    np.testing.assert_allclose(gt.boxes[0], [0.278, 0.203, 0.964, 0.677])
    assert gt.action[0] == 3 and gt.person[:4].tolist() == [0, 1, 2, 3]
    assert gt.line.tolist() == list(range(1, 13))
    assert (gt.score == 1.0).all()
    assert gt.source == str(folder / "gt.csv")
    # 3 keyframes (README of the fixtures)
    assert len({(v, t) for v, t in zip(gt.video, gt.timestamp, strict=True)}) == 3

    pred = read_detections_csv(folder / "pred.csv", labelmap=labelmap)
    assert len(pred) == 30
    assert pred.score[:2].tolist() == [0.655, 0.949]
    assert (pred.person == NO_PERSON).all()
    assert set(pred.action.tolist()) == {1, 2, 3}


def test_reads_second_peer_files(peer_ava: Path) -> None:
    folder = peer_ava / "mmeval_ava_map"
    full = read_labelmap(folder / "ava_action_list.txt")
    custom = read_labelmap(folder / "action_list_custom_1_3.pbtxt")
    gt = read_gt_csv(folder / "ava_detection_gt.csv", labelmap=full)
    same = read_gt_csv(peer_ava / "mmaction2_eval_detection" / "gt.csv")
    np.testing.assert_array_equal(gt.boxes, same.boxes)
    assert len(read_detections_csv(folder / "pred_transcribed.csv", labelmap=full)) == 18
    pred = read_detections_csv(folder / "pred_custom_1_3_transcribed.csv", labelmap=custom)
    assert set(pred.action.tolist()) == {1, 3}
    with pytest.raises(
        DataError, match=r"pred_transcribed.csv:3: action id 2 is not in the label map"
    ):
        read_detections_csv(folder / "pred_transcribed.csv", labelmap=custom)


def test_timestamps_are_ints_and_video_ids_stay_strings(tmp_path: Path) -> None:
    path = _csv(tmp_path, "0123,0902,0.1,0.1,0.5,0.5,1,4\n00123,902,0.1,0.1,0.5,0.5,1,5\n")
    gt = read_gt_csv(path)
    assert gt.video.tolist() == ["0123", "00123"]  # a numeric read would make both 123
    assert gt.timestamp.tolist() == [902, 902]
    assert gt.person.tolist() == [4, 5]
    seven = read_gt_csv(_csv(tmp_path, "nan,0902,0.1,0.1,0.5,0.5,1\n", "seven.csv"))
    assert seven.video.tolist() == ["nan"]  # not a missing value
    assert seven.person.tolist() == [NO_PERSON]  # 7 columns: no person id


def test_detections_with_empty_action_score_notations_and_blank_lines(tmp_path: Path) -> None:
    text = (
        "v,1,0.1,0.1,0.5,0.5,,1e-3\n\nv,1,0.1,0.1,0.5,0.5,7,.25\r\nv,2,0.1,0.1,0.5,0.5,3,2.5E+00\n"
    )
    det = read_detections_csv(_csv(tmp_path, text))
    assert det.action.tolist() == [NO_ACTION, 7, 3]
    assert det.score.tolist() == [1e-3, 0.25, 2.5]
    assert det.line.tolist() == [1, 3, 4]  # the blank line 2 still counts
    seven = read_detections_csv(_csv(tmp_path, "v,1,0.1,0.1,0.5,0.5,\n", "seven.csv"))
    assert seven.score.tolist() == [1.0] and seven.action.tolist() == [NO_ACTION]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "v,1,0.1,0.1,0.5,0.5,1,0\nv,1,0.1,0.1,0.5\n",
            2,
            r"expected 8 \(like the first row\) columns .* got 5",
        ),
        (
            "v,1,0.1,0.1,0.5\n",
            1,
            r"expected 7 or 8 columns \(video_id, timestamp, .*person_id\), got 5",
        ),
        (
            "v,1,0.1,0.1,0.5,0.5,1,0\nv,9o2,0.1,0.1,0.5,0.5,1,0\n",
            2,
            r"timestamp '9o2' is not an integer",
        ),
        ("v,1,0.1,0.1,0.5,abc,1,0\n", 1, r"y2 'abc' is not a number"),
        ("v,1,0.1,0.1,0.5,0.5,1.5,0\n", 1, r"action_id '1.5' is not an integer"),
        (
            "v,1,0.1,0.1,0.5,0.5,1,0\nv,1,0.1,0.1,1.2,0.5,1,0\n",
            2,
            r"box \(0.1, 0.1, 1.2, 0.5\) is outside \[0, 1\]",
        ),
        ("v,1,0.1,0.1,0.5,0.5,1,0\nv,1,-0.01,0.1,0.5,0.5,1,0\n", 2, r"is outside \[0, 1\]"),
        ("v,1,0.5,0.1,0.5,0.5,1,0\n", 1, r"has x2 <= x1"),
        ("v,1,0.1,0.6,0.5,0.5,1,0\n", 1, r"has y2 <= y1"),
        ("v,1,0.1,nan,0.5,0.5,1,0\n", 1, r"NaN or infinite"),
        ("v,1,0.1,0.1,0.5,0.5,,0\n", 1, r"action id is empty"),
        (",1,0.1,0.1,0.5,0.5,1,0\n", 1, r"video id is empty"),
        ("v,-3,0.1,0.1,0.5,0.5,1,0\n", 1, r"timestamp -3 is negative"),
    ],
)
def test_strict_gt_errors_name_file_line_and_expectation(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        read_gt_csv(path)
    assert info.value.path == str(path)
    assert info.value.line == line


def test_box_tolerance_accepts_float32_rounding_only(tmp_path: Path) -> None:
    ok = read_gt_csv(_csv(tmp_path, "v,1,0.1,0.1,1.0000001,0.5,1,0\n"))
    assert ok.boxes[0, 2] == pytest.approx(1.0000001)
    with pytest.raises(DataError, match="outside"):
        read_gt_csv(_csv(tmp_path, "v,1,0.1,0.1,1.00001,0.5,1,0\n", "b.csv"))


def test_detection_score_must_be_finite(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r":2: score inf is not a finite number"):
        read_detections_csv(
            _csv(tmp_path, "v,1,0.1,0.1,0.5,0.5,1,0.3\nv,1,0.1,0.1,0.5,0.5,1,inf\n")
        )


def test_action_ids_missing_from_label_map(tmp_path: Path, peer_ava: Path) -> None:
    labelmap = read_labelmap(peer_ava / "mmaction2_eval_detection" / "action_list.txt")
    path = _csv(tmp_path, "v,1,0.1,0.1,0.5,0.5,3,0\nv,1,0.1,0.1,0.5,0.5,9,0\n")
    with pytest.raises(
        DataError, match=r"f.csv:2: action id 9 is not in the label map .*action_list.txt"
    ):
        read_gt_csv(path, labelmap=labelmap)
    # proposals without an action are fine with a label map
    det = read_detections_csv(
        _csv(tmp_path, "v,1,0.1,0.1,0.5,0.5,,0.5\n", "p.csv"), labelmap=labelmap
    )
    assert det.action.tolist() == [NO_ACTION]


def test_empty_files(tmp_path: Path) -> None:
    empty = _csv(tmp_path, "\n\n")
    with pytest.raises(DataError, match=r"f.csv: empty file \(expected AVA ground-truth rows"):
        read_gt_csv(empty)
    with pytest.raises(DataError, match="empty file"):
        read_detections_csv(empty)
    assert len(read_gt_csv(empty, strict=False)) == 0
    assert len(read_detections_csv(empty, strict=False)) == 0


def test_non_strict_reads_invalid_boxes_but_not_broken_structure(tmp_path: Path) -> None:
    text = "v,1,0.9,0.1,0.2,1.5,1,0.5\nv,1,nan,0.1,0.5,0.5,99,0.1\n"
    det = read_detections_csv(_csv(tmp_path, text), strict=False)
    assert len(det) == 2 and np.isnan(det.boxes[1, 0]) and det.action[1] == 99
    with pytest.raises(DataError, match=r"f2.csv:3: x1 'oops' is not a number"):
        read_detections_csv(
            _csv(tmp_path, text + "v,1,oops,0.1,0.5,0.5,99,0.1\n", "f2.csv"), strict=False
        )


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.csv: cannot read file"):
        read_gt_csv(tmp_path / "nope.csv")


def test_check_helpers_collect_every_problem(tmp_path: Path) -> None:
    text = "v,1,0.1,0.1,0.5,0.5,1,0\nv,x,0.1\nv,1,0.1,0.1,0.5\nv,1,0.1,0.1,0.5,0.5,y,0\n"
    table, problems = check_gt_csv(_csv(tmp_path, text))
    assert table is None
    assert [p.line for p in problems] == [2, 3, 4]
    text = "v,1,0.1,0.1,0.5,0.5,1,0.2\nv,1,0.1,0.1,1.5,0.5,1,0.2\nv,1,0.6,0.1,0.5,0.5,1,nan\n"
    table, problems = check_detections_csv(_csv(tmp_path, text, "d.csv"))
    assert table is not None and len(table) == 3
    assert [(p.line, p.message.split(" ")[-1]) for p in problems] == [
        (2, "x1,y1,x2,y2)"),
        (3, "x2)"),
        (3, "number"),
    ]


def test_excluded_csv(tmp_path: Path) -> None:
    ex = read_excluded_csv(_csv(tmp_path, "-abc,0902\n0042,1798\n"))
    assert ex.as_set() == {("-abc", 902), ("0042", 1798)}
    assert len(read_excluded_csv(_csv(tmp_path, "", "e.csv")).timestamp) == 0
    with pytest.raises(DataError, match=r"x.csv:2: expected 2 .*columns"):
        read_excluded_csv(_csv(tmp_path, "a,1\na,1,2\n", "x.csv"))
