"""check_dataset: every problem collected at once, and the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.data import DataErrors, DatasetConfig, DatasetReport, SplitFiles, check_dataset
from tests.data.conftest import REAL_NAMES, AvaDir, write_video


def _problems(report: DatasetReport) -> list[tuple[str, int | None, str]]:
    return [(Path(p.path).name, p.line, p.message) for p in report.problems]


def test_clean_dataset_summary(ava_dir: AvaDir) -> None:
    report = check_dataset(ava_dir.config)
    assert report.ok, report.format_problems()
    assert report.timestamp_offset == 900.0
    train, val = report.splits["train"], report.splits["val"]
    assert (train.videos, train.keyframes, train.persons, train.boxes) == (2, 5, 6, 8)
    assert (train.excluded, train.proposals) == (1, None)
    assert (val.videos, val.keyframes, val.persons, val.boxes, val.proposals) == (1, 2, 2, 2, 3)
    counts = {c.id: (c.name, c.count) for c in train.class_counts}
    assert counts == {
        12: ("stand", 3),
        11: ("sit", 3),
        17: ("carry/hold (an object)", 1),
        80: ("watch (a person)", 1),
    }
    text = report.format_summary()
    assert "label map: 4 classes; timestamp offset: 900 s" in text
    assert "train       2          5        6      8         1          -" in text
    assert "17  carry/hold (an object)      1    1" in text
    assert text.endswith("status: ok")
    report.raise_for_problems()  # nothing to raise


def test_persons_without_ids_are_counted_by_box(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "action_list.pbtxt").write_text(
        'item { name: "a" id: 1 }\nitem { name: "b" id: 2 }\n'
    )
    (root / "annotations" / "train.csv").write_text(
        "v,1,0.1,0.1,0.5,0.5,1\nv,1,0.1,0.1,0.5,0.5,2\nv,1,0.2,0.1,0.5,0.5,2\nv,2,0.1,0.1,0.5,0.5,1\n"
    )
    write_video(root / "videos" / "v.mp4", seconds=3)
    config = DatasetConfig(root=root, splits={"train": SplitFiles(gt="train.csv")})
    report = check_dataset(config)
    assert report.ok, report.format_problems()
    assert report.splits["train"].persons == 3 and report.timestamp_offset == 0.0


def test_every_problem_is_reported(ava_dir: AvaDir) -> None:
    ann = ava_dir.annotation
    with ann(REAL_NAMES["train_gt"]).open("a") as f:
        f.write("0123,902,0.5,0.2,0.4,0.8,11,1\n")  # line 9: x2 <= x1
        f.write("0123,902,0.2,0.2,0.6,0.8,99,0\n")  # line 10: unknown action
        f.write("ghost,902,0.2,0.2,0.6,0.8,11,0\n")  # line 11: no video file
        f.write("0123,990,0.2,0.2,0.6,0.8,11,0\n")  # line 12: after the video's end
    ann(REAL_NAMES["val_gt"]).write_text("clipC,0902,0.0,0.0,1.0,1.0,12,3\nclipC,0903,0.3\n")
    with ann(REAL_NAMES["val_proposals"]).open("a") as f:
        f.write("clipC,0903,0.3,0.3,0.5,0.7,,nan\n")  # line 4
    with ann(REAL_NAMES["labelmap"]).open("a") as f:
        f.write('label { name: "again" label_id: 11 label_type: PERSON_MOVEMENT }\n')
    webm = ava_dir.root / "videos" / "clipC.webm"
    webm.write_bytes(webm.read_bytes()[:200])  # truncated
    config = ava_dir.config.model_copy(update={"timestamp_offset": 900})

    report = check_dataset(config)
    labelmap_name, train_name = REAL_NAMES["labelmap"], REAL_NAMES["train_gt"]
    found = _problems(report)
    assert [(name, line) for name, line, _ in found] == [
        (labelmap_name, 18),
        (train_name, 9),
        (train_name, 10),
        (REAL_NAMES["val_gt"], 2),
        (REAL_NAMES["val_proposals"], 4),
        (train_name, 11),
        ("clipC.webm", None),
        (train_name, 12),
    ]
    messages = [m for _, _, m in found]
    assert messages[0] == "duplicate label_id 11 (first given on line 7)"
    assert "x2 <= x1" in messages[1]
    assert messages[2].startswith("action id 99 is not in the label map")
    assert "got 3" in messages[3]
    assert messages[4] == "score nan is not a finite number"
    assert (
        messages[5].startswith("video 'ghost' has no file")
        and "ghost.<mp4|mkv|webm|avi|mov>" in messages[5]
    )
    assert messages[6].startswith("unreadable video (decord:")
    assert messages[7] == (
        "timestamp 990 is outside video '0123' (4.00 s long, offset 900): expected 900 <= t <= 904.00"
    )
    assert not report.ok
    assert report.format_summary().endswith("status: 8 problem(s)")
    assert report.format_problems().splitlines()[1].endswith(f"{train_name}:9: {messages[1]}")
    with pytest.raises(DataErrors) as info:
        report.raise_for_problems()
    assert len(info.value.errors) == 8


def test_offset_that_fits_nothing_is_a_problem(ava_dir: AvaDir) -> None:
    with ava_dir.annotation(REAL_NAMES["train_gt"]).open("a") as f:
        f.write("0123,2,0.2,0.2,0.6,0.8,11,0\n")  # fits offset 0; the others only fit 900
    report = check_dataset(ava_dir.config)
    assert report.timestamp_offset is None
    [(name, line, message)] = _problems(report)
    assert (name, line) == (REAL_NAMES["train_gt"], 9)
    assert "fits offset 0 but the other rows fit offset 900 (900 <= t <= 904.00)" in message
    assert "timestamp offset: unknown" in report.format_summary()


def test_missing_and_empty_files(ava_dir: AvaDir) -> None:
    ava_dir.annotation(REAL_NAMES["labelmap"]).unlink()
    ava_dir.annotation(REAL_NAMES["val_gt"]).unlink()
    ava_dir.annotation(REAL_NAMES["train_gt"]).write_text("")
    report = check_dataset(ava_dir.config)
    assert _problems(report) == [
        (REAL_NAMES["labelmap"], None, "label map not found (set labelmap)"),
        (REAL_NAMES["train_gt"], None, "empty file (expected AVA rows, no header)"),
        (REAL_NAMES["val_gt"], None, "GT file of split 'val' not found"),
    ]
    assert report.splits["train"].boxes == 0


def test_config_problems(ava_dir: AvaDir, tmp_path: Path) -> None:
    config = ava_dir.config.model_copy(
        update={"evaluated_classes": [12, 4], "exclusive_classes": [7]}
    )
    found = _problems(check_dataset(config))
    assert found == [
        (
            "ava",
            None,
            f"evaluated_classes [4] are not ids of {ava_dir.annotation(REAL_NAMES['labelmap'])}",
        ),
        (
            "ava",
            None,
            f"exclusive_classes [7] are not ids of {ava_dir.annotation(REAL_NAMES['labelmap'])}",
        ),
    ]
    (ava_dir.root / "dataset.yaml").write_text("videos: elsewhere\n")
    [(name, line, message)] = _problems(check_dataset(ava_dir.config))
    assert (name, line) == ("dataset.yaml", None) and "videos: Extra inputs" in message
    missing = check_dataset(tmp_path / "nothing")
    assert _problems(missing) == [("nothing", None, "dataset directory does not exist")]
