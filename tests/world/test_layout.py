"""The world's files exist and follow the AVA formats."""

from __future__ import annotations

import re
from pathlib import Path

import decord
import numpy as np
import pytest
import yaml

from stages.data.dataset import DatasetConfig
from stages.world import POSE_IDS, WorldConfig
from tests.world.conftest import read_gt, read_rows, read_world

SPLITS = ("train", "val")
LABEL_RE = re.compile(
    r'label\s*\{\s*name:\s*"([^"]+)"\s*label_id:\s*(\d+)\s*label_type:\s*(\w+)\s*\}'
)


def _label_map(root: Path) -> dict[int, tuple[str, str]]:
    text = (root / "annotations" / "action_list.pbtxt").read_text()
    found = {int(i): (name, kind) for name, i, kind in LABEL_RE.findall(text)}
    assert text.count("label {") == len(found)
    return found


def test_layout(tiny_world: Path) -> None:
    ann = tiny_world / "annotations"
    for name in ["action_list.pbtxt"] + [
        f
        for s in SPLITS
        for f in (f"{s}.csv", f"excluded_timestamps_{s}.csv", f"person_boxes_{s}.csv")
    ]:
        assert (ann / name).is_file(), name
    assert (tiny_world / "dataset.yaml").is_file()
    world = read_world(tiny_world)
    videos = sorted(p.stem for p in (tiny_world / "videos").glob("*.mp4"))
    assert videos == sorted(v["video_id"] for v in world["videos"])
    cfg = WorldConfig.tiny(seed=0)
    assert len(videos) == cfg.n_train_videos + cfg.n_val_videos


def test_label_map(tiny_world: Path) -> None:
    labels = _label_map(tiny_world)
    kinds = {k for _, k in labels.values()}
    assert kinds == {"PERSON_MOVEMENT", "OBJECT_MANIPULATION", "PERSON_INTERACTION"}
    assert {i for i, (_, k) in labels.items() if k == "PERSON_MOVEMENT"} == set(POSE_IDS)
    table = {c["id"]: c for c in read_world(tiny_world)["classes"]}
    assert set(table) == set(labels)
    evidence = {c["evidence"] for c in table.values()}
    assert evidence == {
        "pose",
        "motion",
        "object-small",
        "object-large",
        "person-person",
        "actor-context-actor",
        "long-term",
    }


@pytest.mark.parametrize("split", SPLITS)
def test_gt_csv(tiny_world: Path, split: str) -> None:
    cfg = WorldConfig.tiny(seed=0)
    path = tiny_world / "annotations" / f"{split}.csv"
    rows = read_rows(path)
    assert rows and all(len(r) == 8 for r in rows)
    assert all(re.fullmatch(r"\d{4}", r[1]) for r in rows)
    assert all(re.fullmatch(r"\d\.\d{3}", v) for r in rows for v in r[2:6])
    gt = read_gt(path)
    assert ((gt.boxes >= 0) & (gt.boxes <= 1)).all()
    assert (gt.boxes[:, 2] > gt.boxes[:, 0]).all() and (gt.boxes[:, 3] > gt.boxes[:, 1]).all()
    assert set(gt.action.tolist()) <= set(_label_map(tiny_world))
    first = cfg.timestamp_offset + cfg.keyframe_margin_s
    last = cfg.timestamp_offset + cfg.duration_s - cfg.keyframe_margin_s
    assert gt.ts.min() >= first and gt.ts.max() <= last
    # Exactly one pose class per (keyframe, person), one box per (keyframe, person).
    keys = list(zip(gt.video, gt.ts, gt.person, strict=True))
    pose = np.isin(gt.action, POSE_IDS)
    per_person = {k: 0 for k in keys}
    boxes: dict[tuple, tuple] = {}
    for k, is_pose, box in zip(keys, pose, map(tuple, gt.boxes), strict=True):
        per_person[k] += int(is_pose)
        assert boxes.setdefault(k, box) == box
    assert set(per_person.values()) == {1}
    # Excluded keyframes carry no GT.
    excluded = {
        (r[0], int(r[1]))
        for r in read_rows(tiny_world / "annotations" / f"excluded_timestamps_{split}.csv")
    }
    assert excluded and all(
        len(r) == 2
        for r in read_rows(tiny_world / "annotations" / f"excluded_timestamps_{split}.csv")
    )
    assert not excluded & set(zip(gt.video, gt.ts.tolist(), strict=True))


@pytest.mark.parametrize("split", SPLITS)
def test_proposals_csv(tiny_world: Path, split: str) -> None:
    rows = read_rows(tiny_world / "annotations" / f"person_boxes_{split}.csv")
    assert rows and all(len(r) == 8 and r[6] == "" for r in rows)
    boxes = np.array([[float(v) for v in r[2:6]] for r in rows])
    scores = np.array([float(r[7]) for r in rows])
    assert ((boxes >= 0) & (boxes <= 1)).all() and ((scores > 0) & (scores < 1)).all()
    gt = read_gt(tiny_world / "annotations" / f"{split}.csv")
    assert {r[0] for r in rows} == set(gt.video.tolist())


def test_dataset_yaml_and_world_json(tiny_world: Path) -> None:
    cfg = WorldConfig.tiny(seed=0)
    doc = yaml.safe_load((tiny_world / "dataset.yaml").read_text())
    assert doc["timestamp_offset"] == cfg.timestamp_offset == 900
    assert doc["exclusive_classes"] == list(POSE_IDS)
    for split in SPLITS:
        for key in ("gt", "proposals", "excluded"):
            assert (tiny_world / doc["annotations_dir"] / doc["splits"][split][key]).is_file()
    # The data layer's strict config model accepts it.
    dataset = DatasetConfig(root=tiny_world).resolved()
    assert dataset.timestamp_offset == cfg.timestamp_offset
    assert dataset.labelmap == "action_list.pbtxt" and set(dataset.splits) == set(SPLITS)
    world = read_world(tiny_world)
    assert world["seed"] == 0 and world["config"] == cfg.model_dump()
    for split in SPLITS:
        gt = read_gt(tiny_world / "annotations" / f"{split}.csv")
        for c in world["classes"]:
            assert c[f"{split}_count"] == int((gt.action == c["id"]).sum())
            assert c["decided_by"]
        assert {v["video_id"] for v in world["videos"] if v["split"] == split} >= set(
            gt.video.tolist()
        )


def test_videos_decode(tiny_world: Path) -> None:
    cfg = WorldConfig.tiny(seed=0)
    for path in sorted((tiny_world / "videos").glob("*.mp4")):
        vr = decord.VideoReader(str(path))
        assert len(vr) == cfg.duration_s * cfg.fps, path
        frame = vr[len(vr) - 1].asnumpy()
        assert frame.shape == (cfg.height, cfg.width, 3)
        assert abs(vr.get_avg_fps() - cfg.fps) < 1e-3


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="even"):
        WorldConfig(width=161)
    with pytest.raises(ValueError, match="margins"):
        WorldConfig(duration_s=8, keyframe_margin_s=4)
