"""Tube datasets as datasets: JSON/pickle GT, keyframes from tubes, ``data check``."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.data import Dataset, DatasetConfig, check_dataset
from stages.data.errors import DataError
from stages.data.tube_dataset import TubeFiles, tube_box_table, tube_keyframes
from stages.data.tubes import (
    TubeGT,
    read_tube_file,
    read_tube_gt,
    read_tube_json,
    tube_gt_to_dict,
    write_tube_json,
)


def _gt(**tubes) -> TubeGT:
    return TubeGT(
        labels=("run", "jump"),
        train_videos=(("a",),),
        test_videos=(("b",),),
        nframes={"a": 10, "b": 6},
        resolution={"a": (20, 40), "b": (20, 40)},
        tubes=tubes
        or {
            "a": {0: [np.array([[f, 0, 0, 20, 10] for f in range(2, 9)], float)]},
            "b": {1: [np.array([[f, 4, 2, 24, 12] for f in range(1, 7)], float)]},
        },
    )


def test_json_round_trip_equals_pickle(tmp_path, peer_ava):
    gt = read_tube_gt(peer_ava / "mmaction2_eval_multisports" / "gt.pkl", trust_pickle=True)
    write_tube_json(tmp_path / "gt.json", gt)
    back = read_tube_json(tmp_path / "gt.json")
    assert back.labels == gt.labels and back.test_videos == gt.test_videos
    assert back.nframes == gt.nframes and back.resolution == gt.resolution
    for v, per in gt.tubes.items():
        assert sorted(back.tubes[v]) == sorted(per)
        for lb, tubes in per.items():
            for a, b in zip(tubes, back.tubes[v][lb], strict=True):
                np.testing.assert_allclose(a, b, atol=5e-4)


def test_pickle_needs_opt_in(tmp_path):
    path = tmp_path / "gt.pkl"
    path.write_bytes(pickle.dumps(tube_gt_to_dict(_gt()), protocol=2))
    with pytest.raises(DataError, match="trust_pickle: true"):
        read_tube_file(path)
    assert read_tube_file(path, trust_pickle=True).labels == ("run", "jump")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "invalid JSON"),
        ('{"labels": []}', "missing keys"),
        (
            '{"labels": ["a"], "test_videos": ["v"], "nframes": {"v": 3}, '
            '"resolution": {"v": [2, 2]}, "gttubes": {"v": {"5": [[[1, 0, 0, 1, 1]]]}}}',
            "label index 5 outside 0..0",
        ),
        (
            '{"labels": ["a"], "test_videos": ["v"], "nframes": {"v": 3}, '
            '"resolution": {"v": [2, 2]}, "gttubes": {"v": {"0": [[[1, 0, 0]]]}}}',
            "video v, label a, tube 0: shape",
        ),
    ],
)
def test_bad_json_one_clear_error(tmp_path, text, message):
    path = tmp_path / "gt.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_tube_json(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_keyframes_stride_one_based_and_background():
    gt = _gt()
    video, frame = tube_keyframes(gt, ("a",), 3)
    assert frame.tolist() == [1, 4, 7, 10] and set(video) == {"a"}
    table = tube_box_table(gt, ("a",), 3)
    # the tube covers frames 2..8: keyframes 4 and 7; frames 1 and 10 have no GT row,
    # so a person box there is background
    assert table.timestamp.tolist() == [4, 7]
    assert table.action.tolist() == [1, 1]  # label index 0 -> id 1
    np.testing.assert_allclose(table.boxes[0], [0, 0, 0.5, 0.5])
    assert table.person.tolist() == [1, 1]


def test_annotated_sampling_keeps_grid_frames_inside_tubes():
    """The PCCA report's training samples: grid keyframes inside a tube, nothing else."""
    gt = _gt(
        a={
            0: [np.array([[f, 0, 0, 20, 10] for f in range(2, 5)], float)],  # frames 2-4
            1: [np.array([[f, 4, 2, 24, 12] for f in range(7, 9)], float)],  # frames 7-8
        }
    )
    assert tube_keyframes(gt, ("a",), 1)[1].tolist() == list(range(1, 11))
    assert tube_keyframes(gt, ("a",), 1, annotated=True)[1].tolist() == [2, 3, 4, 7, 8]
    # stride 3 keeps the grid 1, 4, 7, 10 (1-based), then the frames in a tube
    assert tube_keyframes(gt, ("a",), 3, annotated=True)[1].tolist() == [4, 7]
    assert tube_keyframes(gt, ("a",), 2, annotated=True)[1].tolist() == [3, 7]
    # a video without tubes has no annotated keyframe
    assert tube_keyframes(_gt(a={}), ("a",), 1, annotated=True)[1].size == 0
    assert tube_box_table(gt, ("a",), 3).timestamp.tolist() == [4, 7]


def test_annotated_sampling_through_the_dataset(tiny_tube_world):
    full = Dataset.open(tiny_tube_world)
    files = full.config.tubes
    assert files is not None and files.sampling == {}
    pcca = files.model_copy(update={"sampling": {"train": "annotated"}})
    ds = Dataset.open(DatasetConfig(root=tiny_tube_world, tubes=pcca))
    video, frame = ds.keyframes("train")
    _all_video, all_frame = full.keyframes("train")
    gt = ds.gt("train")
    in_tube = set(zip(gt.video.tolist(), gt.timestamp.tolist(), strict=True))
    # exactly the stride-2 keyframes that carry a GT row
    assert set(zip(video.tolist(), frame.tolist(), strict=True)) == in_tube
    assert 0 < len(frame) < len(all_frame) and set(np.unique((frame - 1) % 2)) == {0}
    # proposals (the detect stage's persons for the world) only on those keyframes,
    # background persons on them kept
    props = ds.proposals("train")
    assert set(zip(props.video.tolist(), props.timestamp.tolist(), strict=True)) == in_tube
    assert len(props) > len(gt)
    # val keeps every frame (frame-mAP)
    assert ds.keyframes("val")[1].size == full.keyframes("val")[1].size


def test_tube_world_reads_as_dataset(tiny_tube_world):
    ds = Dataset.open(tiny_tube_world)
    assert ds.is_tubes and ds.timestamp_offset == 1.0 and ds.frames_per_timestamp == 1.0
    assert ds.labelmap.names == ("wave", "point", "sit", "run", "lie down")
    assert ds.exclusive_ids.tolist() == [1, 2, 3, 4, 5]  # single-label: one softmax group
    _video, frame = ds.keyframes("train")  # stride 2 (the world's dataset.yaml)
    assert frame.min() == 1 and set(np.unique((frame - 1) % 2)) == {0}
    assert set(ds.keyframes("val")[1]) == set(range(1, 41))  # every frame of val
    props = ds.proposals("train")
    assert set(np.unique((props.timestamp - 1) % 2)) == {0}
    gt = ds.gt("val")
    assert set(gt.video) <= set(ds.video_ids("val"))
    assert gt.boxes.min() >= 0 and gt.boxes.max() <= 1
    report = check_dataset(tiny_tube_world)
    assert report.timestamp_offset == 1.0
    assert all("has no tube" in str(p) for p in report.problems), report.format_problems()


def _broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    path = dst / "annotations" / "gt.json"
    raw = json.loads(path.read_text())
    video = raw["train_videos"][0][0]
    _label, tubes = next(iter(raw["gttubes"][video].items()))
    tubes[0][-1][0] = raw["nframes"][video] + 5  # a frame after the video's end
    tubes[0][0][3] = raw["resolution"][video][1] + 50  # x2 beyond the width
    raw["labels"].append("ghost")  # a class without tubes
    raw["test_videos"][0].append("missing_video")  # a split video without a file
    raw["nframes"]["missing_video"] = 10
    raw["resolution"]["missing_video"] = [120, 160]
    path.write_text(json.dumps(raw))
    return dst


def test_data_check_names_each_problem(tiny_tube_world, tmp_path):
    root = _broken_copy(tiny_tube_world, tmp_path / "broken")
    report = check_dataset(root)
    text = report.format_problems()
    lines = text.splitlines()
    assert any("tube 0: frames" in x and "outside the video's 1..40" in x for x in lines), text
    assert any("is not inside the 160x120 frame, x1 < x2 and y1 < y2" in x for x in lines), text
    assert any("class 'ghost' (label 5) has no tube" in x for x in lines), text
    assert any("video 'missing_video' of split 'val' has no file" in x for x in lines), text
    assert all(str(root / "annotations" / "gt.json") in x for x in lines), text


def test_data_check_cli_exit_status(tiny_tube_world, tmp_path, capsys):
    from flows.cli import main

    root = _broken_copy(tiny_tube_world, tmp_path / "broken")
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "class 'ghost' (label 5) has no tube" in err


def test_pickle_dataset_needs_trust(tiny_tube_world, tmp_path):
    root = tmp_path / "pk"
    shutil.copytree(tiny_tube_world, root)
    gt = read_tube_json(root / "annotations" / "gt.json")
    (root / "annotations" / "gt.pkl").write_bytes(pickle.dumps(tube_gt_to_dict(gt)))
    tubes = TubeFiles(annotation="gt.pkl", keyframe_stride={"train": 2})
    cfg = DatasetConfig(root=root, tubes=tubes)
    with pytest.raises(DataError, match="is a pickle"):
        Dataset.open(cfg).gt("train")
    trusted = tubes.model_copy(update={"trust_pickle": True})
    ds = Dataset.open(DatasetConfig(root=root, tubes=trusted))
    assert len(ds.gt("train")) == len(Dataset.open(tiny_tube_world).gt("train"))


def test_world_cli_writes_a_tube_dataset(tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "w"
    assert main(["world", "--format", "tubes", str(out)]) == 0
    gt = read_tube_json(out / "annotations" / "gt.json")
    assert gt.labels == ("wave", "point", "sit", "run", "lie down")
    # persons move through single-label actions with start and end inside the video
    for video, per in gt.tubes.items():
        for tubes in per.values():
            for t in tubes:
                assert t[0, 0] > 1 and t[-1, 0] < gt.nframes[video]
                assert np.all(np.diff(t[:, 0]) == 1)
    assert all(any(v in gt.tubes and lb in gt.tubes[v] for v in gt.tubes) for lb in range(5))
    assert check_dataset(out).ok, check_dataset(out).format_problems()


def test_single_label_softmax_targets(tiny_tube_world):
    """One label per person per keyframe; every class in the softmax group, which the
    heads' loss and scores take as they are."""
    import torch

    from models.losses import ava_loss, ava_scores
    from stages.extract.finetune import gt_actor_index

    ds = Dataset.open(tiny_tube_world)
    index = gt_actor_index(ds.gt("train"), ds.labelmap)
    assert len(index.labels) > 0 and np.all(index.labels.sum(axis=1) == 1)
    exclusive = [ds.labelmap.index_of(int(i)) for i in ds.exclusive_ids]
    assert exclusive == list(range(len(ds.labelmap)))
    logits = torch.zeros(len(index.labels), len(ds.labelmap), requires_grad=True)
    targets = torch.from_numpy(index.labels)
    loss = ava_loss(logits, targets, exclusive=exclusive)
    # uniform logits: the softmax cross-entropy of one label among C is log C
    assert loss.item() == pytest.approx(np.log(len(ds.labelmap)), rel=1e-5)
    loss.backward()
    scores = ava_scores(logits.detach(), exclusive)
    assert torch.allclose(scores.sum(dim=1), torch.ones(len(scores)))
