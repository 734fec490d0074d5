"""Helpers of the train stage that need no features: labels, batches, prefetch, events."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from models.boxes import iou_matrix
from stages.data import BoxTable, LabelMap
from stages.train.data import SplitIndex, assign_labels, iter_batches
from stages.train.loop import EventLog, OptimConfig, epoch_batches, epoch_order, lr_factor
from stages.train.stage import predictions_table, prior_scores


def gt_table(rows: list[tuple[str, int, tuple[float, float, float, float], int, int]]):
    return BoxTable(
        video=np.asarray([r[0] for r in rows], dtype=object),
        timestamp=np.asarray([r[1] for r in rows], dtype=np.int64),
        boxes=np.asarray([r[2] for r in rows], dtype=np.float64),
        action=np.asarray([r[3] for r in rows], dtype=np.int64),
        person=np.asarray([r[4] for r in rows], dtype=np.int64),
        score=np.ones(len(rows)),
        line=np.arange(1, len(rows) + 1),
    )


def test_assign_labels_two_persons_hand_case() -> None:
    # Full-height boxes, so IoU is the IoU of the x intervals.
    a = (0.0, 0.0, 0.5, 1.0)  # person 0: actions 3 and 7 (one GT row per action)
    b = (0.4, 0.0, 0.875, 1.0)  # person 1: action 5
    gt = gt_table([("v", 902, a, 3, 0), ("v", 902, a, 7, 0), ("v", 902, b, 5, 1)])
    class_index = {3: 0, 5: 1, 7: 2, 9: 3}
    det = np.array(
        [[0.125, 0.0, 0.625, 1.0],  # IoU 0.375/0.625 = 0.6 with A, 0.225/0.75 = 0.3 with B
         [0.0, 0.0, 0.5, 1.0],  # A itself (a GT-box actor)
         [0.9, 0.0, 1.0, 1.0]],  # nobody
        dtype=np.float32,
    )  # fmt: skip
    np.testing.assert_allclose(iou_matrix(det[:1].astype(np.float64), gt.boxes)[0],
                               [0.6, 0.6, 0.3], atol=1e-6)  # fmt: skip
    rows = np.arange(3)
    labels = assign_labels("v", 902, det, rows, gt, class_index, 0.5)
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [[1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    # A lower threshold also gives the first detection person 1's action.
    labels = assign_labels("v", 902, det, rows, gt, class_index, 0.25)
    np.testing.assert_array_equal(labels[0], [1, 1, 1, 0])
    # Actions outside the label map are dropped; no GT rows, no labels.
    assert assign_labels("v", 902, det[:1], rows, gt, {5: 0}, 0.5).tolist() == [[0.0]]
    assert assign_labels("v", 902, det, rows[:0], gt, class_index, 0.5).sum() == 0


def test_assign_labels_refuses_bad_input() -> None:
    gt = gt_table([("v", 902, (0, 0, 1, 1), 3, 0)])
    with pytest.raises(ValueError, match=r"v,0902: actor boxes must have shape \[n, 4\]"):
        assign_labels("v", 902, np.zeros((2, 3)), np.arange(1), gt, {3: 0}, 0.5)
    with pytest.raises(ValueError, match="label IoU must be in"):
        assign_labels("v", 902, np.zeros((2, 4)), np.arange(1), gt, {3: 0}, 0.0)


def small_index() -> SplitIndex:
    counts = [2, 0, 3, 1]
    n = sum(counts)
    return SplitIndex(
        video=np.asarray(["a", "a", "b", "b"], dtype=object),
        timestamp=np.asarray([902, 903, 902, 904]),
        actor_offset=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=np.arange(n * 4, dtype=np.float32).reshape(n, 4) / 100,
        scores=np.linspace(0.5, 1.0, n, dtype=np.float32),
        labels=np.eye(n, 3, dtype=np.float32),
    )


def test_split_index_subset() -> None:
    index = small_index()
    sub = index.subset([2, 0])
    assert sub.video.tolist() == ["b", "a"] and sub.timestamp.tolist() == [902, 902]
    assert sub.actor_offset.tolist() == [0, 3, 5]
    np.testing.assert_array_equal(sub.boxes, index.boxes[[2, 3, 4, 0, 1]])
    np.testing.assert_array_equal(sub.labels, index.labels[[2, 3, 4, 0, 1]])
    assert len(index.subset([1])) == 1 and index.subset([1]).boxes.shape == (0, 4)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        index.subset([4])


class StoreBacked:
    """What ``iter_batches`` reads of a source: only whether it is preloaded."""

    preload = False


def test_prefetch_yields_every_batch_in_order() -> None:
    batches = epoch_batches(epoch_order(23, seed=3, epoch=1), 4)
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 3]
    threads = set()

    def read(kf: np.ndarray) -> list[int]:
        threads.add(threading.current_thread().name)
        return kf.tolist()

    got = list(iter_batches(StoreBacked(), batches, read, prefetch=2))
    assert got == [b.tolist() for b in batches]
    assert threads == {"bankflow-prefetch"}  # read in the background
    assert list(iter_batches(StoreBacked(), batches, read, prefetch=0)) == got


def test_prefetch_raises_read_errors_and_stops_early() -> None:
    batches = [np.array([k]) for k in range(10)]

    def failing(kf: np.ndarray) -> int:
        if kf[0] == 3:
            raise OSError("store read failed at batch 3")
        return int(kf[0])

    seen = []
    with pytest.raises(OSError, match="batch 3"):
        for item in iter_batches(StoreBacked(), batches, failing, prefetch=2):
            seen.append(item)
    assert seen == [0, 1, 2]
    read = []
    for _item in iter_batches(StoreBacked(), batches, lambda kf: read.append(kf[0]), prefetch=2):
        break  # the generator's cleanup stops the reader
    assert len(read) <= 4  # the one consumed + at most the queue + one in hand
    assert not any(t.name == "bankflow-prefetch" for t in threading.enumerate())


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    np.testing.assert_array_equal(epoch_order(50, 1, 4), epoch_order(50, 1, 4))
    assert not np.array_equal(epoch_order(50, 1, 4), epoch_order(50, 1, 5))
    assert sorted(epoch_order(50, 1, 4).tolist()) == list(range(50))


def test_lr_warmup_then_cosine() -> None:
    cfg = OptimConfig(epochs=4, warmup_epochs=1.0)
    assert lr_factor(cfg, 5, 10) == pytest.approx(0.5)
    assert lr_factor(cfg, 10, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 25, 10) == pytest.approx(0.5)
    assert lr_factor(cfg, 40, 10) == pytest.approx(0.0)


def test_event_log_writes_lines_and_restarts_from_history(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = EventLog(path)
    events.restart([])
    events.write("start", {"epochs": 3})
    events.write("epoch", {"epoch": 0, "loss": 1.5})
    events.write("epoch", {"epoch": 1, "loss": 1.0})  # lost by the kill: no checkpoint
    events.restart([{"epoch": 0, "loss": 1.5}])
    events.write("resume", {"epoch": 1})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e.get("epoch")) for e in lines] == [("epoch", 0), ("resume", 1)]
    assert all(isinstance(e["time"], float) for e in lines)
    EventLog(None).write("epoch", {"epoch": 0})  # no file: a no-op


def test_predictions_table_all_classes_and_top_k() -> None:
    index = small_index()
    labelmap = LabelMap(ids=np.array([11, 12, 13]), names=["a", "b", "c"], label_types=[None] * 3)
    scores = np.array(
        [[0.1, 0.9, 0.5], [0.3, 0.3, 0.2], [0.0, 0.1, 0.2], [0.7, 0.6, 0.5], [0.4, 0.8, 0.9],
         [0.2, 0.2, 0.2]], dtype=np.float32,
    )  # fmt: skip
    full = predictions_table(index, scores, labelmap, None)
    assert len(full) == 6 * 3
    assert full.action.tolist()[:6] == [11, 12, 13, 11, 12, 13]
    assert full.video.tolist()[::3] == ["a", "a", "b", "b", "b", "b"]
    assert full.timestamp.tolist()[::3] == [902, 902, 902, 902, 902, 904]
    np.testing.assert_allclose(full.score, scores.reshape(-1))
    top = predictions_table(index, scores, labelmap, 2)
    assert len(top) == 6 * 2
    assert top.action.tolist() == [12, 13, 11, 12, 13, 12, 11, 12, 13, 12, 11, 12]
    np.testing.assert_allclose(top.boxes[::2], index.boxes)
    assert len(predictions_table(index, scores, labelmap, 5)) == 18  # k >= C: every class
    with pytest.raises(ValueError, match="expected \\(6 actors, 3 classes\\)"):
        predictions_table(index, scores[:, :2], labelmap, None)


def test_prior_scores_are_training_class_frequencies() -> None:
    train_labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    prior = prior_scores(train_labels, 3)
    assert prior.shape == (3, 3) and prior.dtype == np.float32
    np.testing.assert_allclose(prior, [[0.75, 0.5, 0.0]] * 3)
    assert prior_scores(np.zeros((0, 2), np.float32), 2).tolist() == [[0, 0], [0, 0]]


def test_max_steps_per_epoch_caps_each_epoch_and_keeps_unset_keys(tmp_path: Path) -> None:
    import torch

    from models.heads import build_head
    from stages.framework.keys import key_payload
    from stages.train.loop import latest_checkpoint, train
    from tests.stages.test_progress import CHANNELS, CLASSES, tiny_data

    torch.manual_seed(0)
    model = build_head("linear", in_channels=CHANNELS, num_classes=CLASSES)
    cfg = OptimConfig(epochs=2, batch_keyframes=4, loss="bce", max_steps_per_epoch=1)
    events = tmp_path / "events.jsonl"
    train(model, tiny_data(), cfg, tmp_path / "ckpt", events=events)
    start = json.loads(events.read_text().splitlines()[0])
    assert start["steps_per_epoch"] == 1  # 10 keyframes / 4 = 3 steps uncapped
    last = latest_checkpoint(tmp_path / "ckpt")
    assert last is not None
    state = torch.load(last, weights_only=True)["optimizer"]["state"]
    assert {float(s["step"]) for s in state.values()} == {2.0}  # 2 epochs x 1 step
    # Unset, the field stays out of the key: keys made before it existed still hold.
    assert "max_steps_per_epoch" not in key_payload(OptimConfig())
    assert key_payload(OptimConfig(max_steps_per_epoch=5))["max_steps_per_epoch"] == 5
