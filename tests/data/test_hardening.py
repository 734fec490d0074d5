"""Issue 20 on the data layer: ids cannot escape, named files must exist, ``data check``
takes DIR as the root, repeated GT rows warn, a duplicate label-map id gives one error
per missing id instead of one per CSV row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.cli import main
from stages.data import DatasetConfig, check_dataset, read_gt_csv
from stages.data.errors import DataError
from stages.data.names import name_problem
from stages.data.videos import find_video


@pytest.fixture
def world(tiny_world: Path, tmp_path: Path) -> Path:
    out = tmp_path / "world"
    shutil.copytree(tiny_world, out)
    return out


def _replace_first_video_id(csv: Path, new_id: str) -> str:
    lines = csv.read_text().splitlines(keepends=True)
    old = lines[0].split(",")[0]
    lines[0] = lines[0].replace(old, new_id, 1)
    csv.write_text("".join(lines))
    return old


@pytest.mark.parametrize(
    "name, problem",
    [("../x", "contains '..'"), ("a/b", "separator"), ("a\\b", "separator"),
     (".hidden", "starts with a dot"), ("", "is empty"), ("a\x00b", "non-printable"),
     ("bad\nid", "non-printable")],
)  # fmt: skip
def test_unsafe_names(name: str, problem: str) -> None:
    assert problem in (name_problem(name) or "")


@pytest.mark.parametrize("name", ["-5KQ66BBWC4", "_145Aa_xkuE", "w0_train_00", "a.b", "x y"])
def test_real_ids_pass(name: str) -> None:
    assert name_problem(name) is None


def test_each_unsafe_video_id_is_named_at_its_first_row() -> None:
    """One problem per unsafe id, at the first of its rows, whatever its place."""
    from stages.data.ava import _unsafe_video_rows

    video = np.array(["ok", "a/b", "ok", "../x", "a/b", "fine", "../x"], dtype=object)
    assert np.flatnonzero(_unsafe_video_rows(video)).tolist() == [1, 3]
    assert not _unsafe_video_rows(np.empty(0, dtype=object)).any()


def test_escaping_video_id_is_refused_at_its_row(world: Path) -> None:
    gt = world / "annotations" / "train.csv"
    old = _replace_first_video_id(gt, "../x")
    # The escape target exists: before the fix the reader found DATASET/x.mp4.
    shutil.copy(world / "videos" / f"{old}.mp4", world / "x.mp4")
    with pytest.raises(DataError, match=r"train\.csv:1: video id '\.\./x' contains '\.\.'"):
        read_gt_csv(gt)
    with pytest.raises(DataError, match=r"video id '\.\./x' contains '\.\.'; refusing"):
        find_video(world / "videos", "../x")
    report = check_dataset(world)
    assert [str(p) for p in report.problems] == [
        f"{gt}:1: video id '../x' contains '..' (expected a file name in the videos directory: "
        "no '/', no '..', no leading dot, printable)"
    ]


def _name_splits_explicitly(world: Path, **files: str) -> None:
    meta = yaml.safe_load((world / "dataset.yaml").read_text())
    meta["splits"]["train"].update(files)
    (world / "dataset.yaml").write_text(yaml.safe_dump(meta))


@pytest.mark.parametrize("kind", ["excluded", "proposals"])
def test_named_but_missing_file_is_a_problem(world: Path, kind: str) -> None:
    _name_splits_explicitly(world, **{kind: "nope.csv"})
    report = check_dataset(world)
    assert [str(p) for p in report.problems] == [
        f"{world}/annotations/nope.csv: file named by splits.train.{kind} does not exist"
    ]


def test_default_names_may_be_missing(world: Path) -> None:
    (world / "dataset.yaml").unlink()  # defaults: excluded/proposals names nobody chose
    for p in (world / "annotations").glob("excluded_*"):
        p.unlink()
    config = DatasetConfig(root=world, timestamp_offset=900)
    assert config.splits["train"].named_files() == {"gt": "train.csv"}
    assert check_dataset(config).ok


def test_data_check_with_dataset_config_without_root(world: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "ava.yaml"
    cfg.write_text("timestamp_offset: 900\n")  # no root: DIR is the dataset
    assert main(["data", "check", str(world), "--dataset-config", str(cfg)]) == 0
    assert "status: ok" in capsys.readouterr().out


def test_duplicate_gt_rows_warn(world: Path, capsys) -> None:
    gt = world / "annotations" / "train.csv"
    first = gt.read_text().splitlines()[0]
    n = len(gt.read_text().splitlines())
    with gt.open("a") as f:
        f.write(first + "\n")
    report = check_dataset(world)
    assert report.ok
    assert [str(w) for w in report.warnings] == [
        f"{gt}:{n + 1}: 1 GT row(s) repeat an earlier row exactly (this one repeats line 1); "
        "each copy counts as another box to detect"
    ]
    assert main(["data", "check", str(world)]) == 0
    assert f"warning: {gt}:{n + 1}: 1 GT row(s)" in capsys.readouterr().err


def test_duplicate_labelmap_id_does_not_cascade(world: Path) -> None:
    labelmap = world / "annotations" / "action_list.pbtxt"
    text = labelmap.read_text()
    labelmap.write_text(text.replace("label_id: 4\n", "label_id: 3\n", 1))  # a typo
    problems = [str(p) for p in check_dataset(world).problems]
    # One line: the duplicate, the id it lost (between its neighbours' 3 and 5) and the
    # rows that use it; no "not in the label map" per CSV file or exclusive_classes list.
    gt = world / "annotations" / "train.csv"
    first = next(
        n for n, row in enumerate(gt.read_text().splitlines(), 1) if row.split(",")[6] == "4"
    )
    rows = sum(
        row.split(",")[6] == "4"
        for split in ("train", "val")
        for row in (world / "annotations" / f"{split}.csv").read_text().splitlines()
    )
    assert problems == [
        f"{labelmap}:18: duplicate label_id 3 (first given on line 13); id 4, between the ids "
        f"around this line, is missing ({rows} CSV row(s) use it, the first {gt}:{first}): a typo?"
    ]
