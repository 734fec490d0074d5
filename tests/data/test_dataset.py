"""DatasetConfig (YAML, dataset.yaml merge) and lazy Dataset access."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.data import DataError, Dataset, DatasetConfig
from stages.data.dataset import infer_timestamp_offset
from stages.data.types import BoxTable
from tests.data.conftest import REAL_NAMES, AvaDir, write_video


def test_real_ava_names_offset_900_and_containers(ava_dir: AvaDir) -> None:
    ds = Dataset.open(ava_dir.config)
    assert ds.splits == ["train", "val"]
    assert ds.timestamp_offset == 900.0  # inferred: 901..903 only fit 900 in 4 s videos
    assert ds.video_ids("train") == ["-5KQ66BBWC4", "0123"]
    videos, stamps = ds.keyframes("train")
    assert list(zip(videos.tolist(), stamps.tolist(), strict=True)) == [
        ("-5KQ66BBWC4", 901), ("-5KQ66BBWC4", 902), ("-5KQ66BBWC4", 903), ("0123", 901), ("0123", 902),
    ]  # fmt: skip
    assert ds.video_path("-5KQ66BBWC4").suffix == ".mkv"
    assert ds.video_path("0123").suffix == ".mp4"
    assert ds.video_path("clipC").suffix == ".webm"
    info = ds.video_info("clipC")
    assert (info.frames, info.fps, info.width, info.height) == (20, 5.0, 48, 32)
    assert info.duration == pytest.approx(4.0)


def test_lazy_tables(ava_dir: AvaDir) -> None:
    ds = Dataset.open(ava_dir.config)
    assert len(ds.gt("train")) == 8 and ds.gt("train") is ds.gt("train")
    assert ds.excluded("train").as_set() == {("0123", 903)}
    assert len(ds.excluded("val").timestamp) == 0  # file absent: optional
    assert ds.proposals("train") is None
    proposals = ds.proposals("val")
    assert proposals is not None and proposals.score.tolist() == [0.97, 0.031, 0.88]
    assert ds.labelmap.source.endswith(REAL_NAMES["labelmap"])
    with pytest.raises(KeyError, match="unknown split 'test'"):
        ds.gt("test")


def test_class_sets(ava_dir: AvaDir) -> None:
    ds = Dataset.open(ava_dir.config)
    assert ds.exclusive_ids.tolist() == [12, 11]  # the PERSON_MOVEMENT labels
    assert ds.evaluated_ids.tolist() == [12, 11, 17, 80]
    narrowed = ava_dir.config.model_copy(
        update={"evaluated_classes": [17, 80], "exclusive_classes": []}
    )
    ds = Dataset.open(narrowed)
    assert ds.evaluated_ids.tolist() == [17, 80] and ds.exclusive_ids.tolist() == []
    ds = Dataset.open(ava_dir.config.model_copy(update={"evaluated_classes": [17, 5]}))
    with pytest.raises(DataError, match=r"evaluated_classes \[5\] are not ids of this label map"):
        _ = ds.evaluated_ids


def test_untyped_label_map_has_no_exclusive_group(ava_dir: AvaDir) -> None:
    path = ava_dir.annotation(REAL_NAMES["labelmap"])
    path.write_text(
        'item { name: "stand" id: 12 }\nitem { name: "sit" id: 11 }\n'
        'item { name: "carry" id: 17 }\nitem { name: "watch" id: 80 }\n'
    )
    assert Dataset.open(ava_dir.config).exclusive_ids.tolist() == []


def test_video_path_missing(ava_dir: AvaDir) -> None:
    ds = Dataset.open(ava_dir.config)
    with pytest.raises(
        DataError, match=r"videos: no video file nope.<mp4\|mkv\|webm\|avi\|mov> for 'nope'"
    ):
        ds.video_path("nope")


def test_dataset_yaml_is_merged_under_explicit_values(ava_dir: AvaDir) -> None:
    (ava_dir.root / "dataset.yaml").write_text(
        yaml.safe_dump(
            {"timestamp_offset": 899, "labelmap": "other.pbtxt", "evaluated_classes": [12]}
        )
    )
    explicit = ava_dir.config  # sets labelmap and splits, not the offset
    resolved = explicit.resolved()
    assert resolved.timestamp_offset == 899  # from dataset.yaml
    assert resolved.labelmap == REAL_NAMES["labelmap"]  # explicit wins
    assert resolved.evaluated_classes == [12]
    assert Dataset.open(explicit).timestamp_offset == 899.0


def test_defaults_and_open_from_directory(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "action_list.pbtxt").write_text('item { name: "a" id: 1 }\n')
    (root / "annotations" / "train.csv").write_text("v,3,0.1,0.1,0.5,0.5,1,0\n")
    write_video(root / "videos" / "v.avi", seconds=5)
    (root / "dataset.yaml").write_text("splits:\n  train:\n    gt: train.csv\n")
    ds = Dataset.open(root)
    assert ds.splits == ["train"]
    assert ds.timestamp_offset == 0.0  # 3 s lies inside the 5 s video
    assert ds.video_path("v").suffix == ".avi"
    with pytest.raises(DataError, match="dataset directory does not exist"):
        Dataset.open(tmp_path / "missing")


def test_from_yaml(tmp_path: Path, ava_dir: AvaDir) -> None:
    path = tmp_path / "cfg" / "real_ava.yaml"
    path.parent.mkdir()
    path.write_text(
        yaml.safe_dump(
            {
                "root": "../ava",
                "labelmap": REAL_NAMES["labelmap"],
                "timestamp_offset": 900,
                "splits": {"val": {"gt": REAL_NAMES["val_gt"]}},
            }
        )
    )
    config = DatasetConfig.from_yaml(path)
    assert config.root.resolve() == ava_dir.root.resolve()
    assert list(config.splits) == ["val"] and config.splits["val"].excluded is None
    assert len(Dataset.open(config).gt("val")) == 2
    assert DatasetConfig.from_yaml(path, root=tmp_path).root == tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("labelmap: [1, 2\n", r"cfg.yaml:2: invalid YAML"),
        ("- 1\n- 2\n", r"cfg.yaml: expected a mapping of config keys, got list"),
        ("root: .\nlabel_map: x\n", r"cfg.yaml: invalid dataset config: label_map: Extra inputs"),
        (
            "root: .\ntimestamp_offset: soon\n",
            r"invalid dataset config: timestamp_offset: Input should be a valid number",
        ),
        ("labelmap: x\n", r"cfg.yaml: no 'root'"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        DatasetConfig.from_yaml(path)


def test_dataset_yaml_may_not_set_root(ava_dir: AvaDir) -> None:
    (ava_dir.root / "dataset.yaml").write_text("root: /elsewhere\n")
    with pytest.raises(DataError, match=r"dataset.yaml: must not set 'root'"):
        Dataset.open(ava_dir.config)


def _table(video: list[str], stamps: list[int]) -> BoxTable:
    n = len(video)
    return BoxTable(
        video=np.array(video, dtype=object), timestamp=np.array(stamps), boxes=np.zeros((n, 4)),
        action=np.zeros(n, np.int64), person=np.zeros(n, np.int64), score=np.ones(n),
        line=np.arange(1, n + 1), source="gt.csv",
    )  # fmt: skip


def test_offset_inference_rules() -> None:
    durations = {"a": 10.0, "b": 1000.0}
    assert infer_timestamp_offset([_table(["a", "b"], [0, 950])], durations) == 0.0
    assert infer_timestamp_offset([_table(["a", "b"], [905, 1700])], durations) == 900.0
    assert infer_timestamp_offset([_table(["zz"], [5000])], durations) == 0.0  # unknown video
    with pytest.raises(DataError, match=r"gt.csv:2: timestamp 950 of video 'a' \(10.00 s long\)"):
        infer_timestamp_offset([_table(["a", "a"], [5, 950])], durations)
    # every row fits one offset, but not the same one: names the first row that misses
    # the offset most rows fit (0 on a tie)
    with pytest.raises(
        DataError,
        match=r"gt.csv:2: timestamp 905 of video 'a' \(10.00 s long\) fits offset 900 but",
    ):
        infer_timestamp_offset([_table(["a", "a"], [5, 905])], durations)
    with pytest.raises(
        DataError,
        match=r"gt.csv:1: timestamp 5 of video 'a' .* fits offset 0 but the other rows fit offset 900",
    ):
        infer_timestamp_offset([_table(["a", "a", "a"], [5, 905, 906])], durations)
