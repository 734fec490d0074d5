"""One seed, one world: byte-identical text files and identical decoded frames."""

from __future__ import annotations

import re
from pathlib import Path

import decord
import numpy as np
import pytest

from stages.world import CLASSES, WorldConfig, build_world, load_world_summary

TEXT_FILES = [
    "annotations/train.csv",
    "annotations/val.csv",
    "annotations/action_list.pbtxt",
    "annotations/excluded_timestamps_train.csv",
    "annotations/excluded_timestamps_val.csv",
    "annotations/person_boxes_train.csv",
    "annotations/person_boxes_val.csv",
    "dataset.yaml",
    "world.json",
]


def _frames(path: Path) -> np.ndarray:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_same_seed_same_world(tiny_world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    # Rebuilt with two worker processes: parallel rendering must not change a byte.
    built = build_world(again, WorldConfig.tiny(seed=0), workers=2)
    loaded = load_world_summary(again)
    assert built.splits == loaded.splits and built.video_ids == loaded.video_ids
    for name in TEXT_FILES:
        assert (tiny_world / name).read_bytes() == (again / name).read_bytes(), name
    videos = sorted(p.name for p in (tiny_world / "videos").glob("*.mp4"))
    assert videos == sorted(p.name for p in (again / "videos").glob("*.mp4"))
    for name in videos:
        np.testing.assert_array_equal(
            _frames(tiny_world / "videos" / name), _frames(again / "videos" / name)
        )


def test_other_seed_other_world(tiny_world: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_world(other, WorldConfig.tiny(seed=1))
    for name in ("annotations/train.csv", "annotations/person_boxes_val.csv", "world.json"):
        assert (tiny_world / name).read_bytes() != (other / name).read_bytes(), name
    a = _frames(next(iter(sorted((tiny_world / "videos").glob("*.mp4")))))
    b = _frames(next(iter(sorted((other / "videos").glob("*.mp4")))))
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_rebuild_reuses_a_finished_world(tiny_world: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_world.rglob("*") if p.is_file()}
    summary = build_world(tiny_world, WorldConfig.tiny(seed=0))
    assert {p: p.stat().st_mtime_ns for p in tiny_world.rglob("*") if p.is_file()} == before
    assert summary == load_world_summary(tiny_world)
    assert summary.n_videos == {"train": 2, "val": 2}
    assert sum(summary.n_gt_boxes.values()) > 0
    table = summary.class_table()
    assert "wait for" in table and len(table.splitlines()) == 2 + len(CLASSES)


def test_unfinished_world_is_refused(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished demo world"):
        load_world_summary(tmp_path)


def test_story_probabilities_decide_the_plan_of_every_video() -> None:
    from stages.world.build import _plan

    def plans(**probs: float) -> list[tuple[str, bool]]:
        cfg = WorldConfig(n_train_videos=30, **probs)
        return [_plan(cfg, 0, i) for i in range(cfg.n_train_videos)]

    # The first two videos of a split always hold one return and one bring story.
    only_return = plans(return_story_prob=1.0, bring_story_prob=0.0, wait_story_prob=1.0)
    assert only_return[:2] == [("return", True), ("bring", True)]
    assert set(only_return[2:]) == {("return", True)}
    no_story = plans(return_story_prob=0.0, bring_story_prob=0.0, wait_story_prob=0.0)
    assert set(no_story[2:]) == {("plain", False)}
    # The defaults keep the mix the default world was built with.
    default = plans()
    assert {s for s, _ in default[2:]} == {"return", "bring", "plain"}
    with pytest.raises(
        ValueError, match=re.escape("return_story_prob + bring_story_prob = 1.2 > 1")
    ):
        WorldConfig(return_story_prob=0.6, bring_story_prob=0.6)
