"""The ensemble stage: alignment of differing box sets, weights, greedy selection.

Members of the stage tests are real stage outputs holding predictions made from the tiny
world's val GT (a good scorer, a noisy one, one on shifted and partly missing boxes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from stages.data import BoxTable, Dataset, DatasetConfig, LabelMap
from stages.data.predictions import read_predictions_parquet, write_predictions_parquet
from stages.evaluate import stage as evaluate
from stages.evaluate.ava import evaluate_ava
from stages.framework import Stage, StageContext, StageError, run_stage
from stages.framework.fingerprint import dataset_fingerprint
from stages.predict import ensemble
from stages.predict.ensemble import BoxScores, average, match_boxes

LABELS = LabelMap(ids=np.array([1, 2, 3]), names=("a", "b", "c"), label_types=(None,) * 3)


def table(rows: list[tuple[str, int, list[float], int, float]]) -> BoxTable:
    """Prediction rows (video, timestamp, box, action, score)."""
    n = len(rows)
    return BoxTable(
        video=np.array([r[0] for r in rows], dtype=object),
        timestamp=np.array([r[1] for r in rows], dtype=np.int64),
        boxes=np.array([r[2] for r in rows], dtype=np.float64).reshape(n, 4),
        action=np.array([r[3] for r in rows], dtype=np.int64),
        person=np.full(n, -1, dtype=np.int64),
        score=np.array([r[4] for r in rows], dtype=np.float64),
        line=np.arange(1, n + 1, dtype=np.int64),
    )


def dense(boxes: dict[tuple[str, int], list[tuple[list[float], list[float]]]]) -> BoxScores:
    """BoxScores from {(video, t): [(box, [score per class])]} through the table reader."""
    rows = []
    for (v, t), items in boxes.items():
        for box, scores in items:
            rows += [(v, t, box, cid, s) for cid, s in zip(LABELS.ids, scores, strict=True)]
    return BoxScores.from_table(table(rows), LABELS)


A = [0.10, 0.10, 0.30, 0.50]
B = [0.50, 0.10, 0.70, 0.50]
C = [0.10, 0.55, 0.40, 0.95]


def test_from_table_groups_rows_by_keyframe_and_box() -> None:
    t = table([
        ("v", 2, B, 2, 0.4), ("v", 1, A, 1, 0.9), ("v", 2, B, 1, 0.3), ("v", 1, A, 3, 0.1),
        ("w", 1, A, 2, 0.5), ("v", 2, A, 2, 0.7), ("v", 1, A, 99, 0.8),  # 99: not a class
    ])  # fmt: skip
    s = BoxScores.from_table(t, LABELS)
    assert s.video.tolist() == ["v", "v", "w"] and s.timestamp.tolist() == [2, 1, 1]
    assert s.offset.tolist() == [0, 2, 3, 4]
    np.testing.assert_array_equal(s.boxes, [B, A, A, A])
    # Absent (box, class) pairs (top_k predictions) score 0.
    np.testing.assert_allclose(s.scores, [[0.3, 0.4, 0], [0, 0.7, 0], [0.9, 0, 0.1], [0, 0.5, 0]])
    back = s.to_table(LABELS)
    assert len(back) == 4 * 3 and back.action[:3].tolist() == [1, 2, 3]


@pytest.mark.parametrize("grouped", [True, False])
def test_from_file_read_a_row_group_at_a_time_is_from_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grouped: bool
) -> None:
    """A member's file is turned into per-box scores a part of whole keyframes at a time
    (row groups of 2 rows here; keyframes cut across them): the same BoxScores as from the
    whole table. A file whose keyframe's rows are apart is read whole, with the same
    result."""
    from stages.data import predictions
    from stages.data.predictions import stream_predictions_parquet

    rows = [
        ("v", 2, B, 2, 0.4), ("v", 2, B, 1, 0.3), ("v", 2, A, 2, 0.7),
        ("v", 1, A, 1, 0.9), ("v", 1, A, 3, 0.1), ("v", 1, A, 99, 0.8),  # 99: not a class
        ("w", 1, A, 2, 0.5), ("w", 1, C, 1, 0.2), ("w", 3, C, 3, 0.6),
    ]  # fmt: skip
    if not grouped:
        rows.append(("v", 2, C, 1, 0.25))  # keyframe (v, 2) again, after others
    monkeypatch.setattr(predictions, "CSV_BLOCK_ROWS", 2)
    path = tmp_path / "member.parquet"
    write_predictions_parquet(path, table(rows))
    whole = BoxScores.from_table(read_predictions_parquet(path), LABELS)
    parts = BoxScores.from_file(stream_predictions_parquet(path), LABELS)
    for name in ("video", "timestamp", "offset", "boxes", "scores"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), err_msg=name)
    assert len(whole.timestamp) == 4
    assert parts.rows(LABELS).table().score.tolist() == whole.to_table(LABELS).score.tolist()


def test_identical_boxes_average_exactly_whatever_the_row_order() -> None:
    one = dense({("v", 1): [(A, [0.2, 0.4, 0.6]), (B, [0.1, 0.1, 0.1])]})
    two = dense({("v", 1): [(B, [0.3, 0.5, 0.7]), (A, [0.4, 0.0, 0.2])]})
    avg = average([one, two], [1.0, 1.0], 0.5)
    np.testing.assert_array_equal(avg.boxes, one.boxes)
    np.testing.assert_allclose(avg.scores, [[0.3, 0.2, 0.4], [0.2, 0.3, 0.4]])
    weighted = average([one, two], [1.0, 3.0], 0.5)
    np.testing.assert_allclose(weighted.scores[0], [(0.2 + 3 * 0.4) / 4, 0.4 / 4, 1.2 / 4])


def test_differing_box_sets_follow_the_reference_rule() -> None:
    shift = [0.02, 0.0, 0.02, 0.0]
    ref = dense({
        ("v", 1): [(A, [0.2, 0.2, 0.2]), (B, [0.4, 0.4, 0.4]), (C, [0.6, 0.6, 0.6])],
        ("v", 2): [(A, [0.8, 0.8, 0.8])],
    })  # fmt: skip
    other = dense({
        # C and A shifted (IoU > 0.5), in another order; B missing; one far extra box
        ("v", 1): [(list(np.add(C, shift)), [1.0, 0.0, 0.5]),
                   (list(np.add(A, shift)), [0.0, 1.0, 0.5]),
                   ([0.8, 0.8, 0.95, 0.95], [1.0, 1.0, 1.0])],
        ("v", 3): [(A, [1.0, 1.0, 1.0])],  # a keyframe the reference lacks
    })  # fmt: skip
    match = match_boxes(ref, other, 0.5)
    assert match.tolist() == [1, -1, 0, -1]
    avg = average([ref, other], [1.0, 1.0], 0.5)
    assert avg.timestamp.tolist() == [1, 2] and len(avg.boxes) == 4
    np.testing.assert_allclose(avg.scores, [
        [0.1, 0.6, 0.35],  # A: both members
        [0.4, 0.4, 0.4],   # B: only the reference has it -> its score, not halved
        [0.8, 0.3, 0.55],  # C
        [0.8, 0.8, 0.8],   # keyframe 2: the other member has none
    ])  # fmt: skip
    weighted = average([ref, other], [1.0, 3.0], 0.5)
    np.testing.assert_allclose(weighted.scores[0], [0.05, 0.8, 0.425])
    np.testing.assert_allclose(weighted.scores[1], [0.4, 0.4, 0.4])
    # Above the pairs' IoU nothing matches: the reference's own scores.
    strict = average([ref, other], [1.0, 1.0], 0.95)
    np.testing.assert_allclose(strict.scores, ref.scores)


def test_matching_is_one_to_one_and_maximises_total_iou() -> None:
    r1, r2 = [0.0, 0.0, 0.10, 0.10], [0.02, 0.0, 0.12, 0.10]
    o1, o2 = [0.01, 0.0, 0.11, 0.10], [0.03, 0.0, 0.13, 0.10]
    ref = dense({("v", 1): [(r1, [1, 1, 1]), (r2, [1, 1, 1])]})
    # o2 listed first: a greedy pass taking the first box above the threshold would give
    # r1 -> o2 (IoU 0.54) and r2 -> o1; the assignment pairs neighbours (0.82 each).
    other = dense({("v", 1): [(o2, [0, 0, 0]), (o1, [0, 0, 0])]})
    assert match_boxes(ref, other, 0.5).tolist() == [1, 0]
    lone = dense({("v", 1): [(o1, [0, 0, 0])]})
    assert sorted(match_boxes(ref, lone, 0.5).tolist()) == [-1, 0]


def test_bad_weights_are_refused() -> None:
    one = dense({("v", 1): [(A, [0.2, 0.4, 0.6])]})
    with pytest.raises(ValueError, match="one positive weight per member"):
        average([one, one], [1.0, 0.0], 0.5)
    with pytest.raises(ValueError, match="at least one member"):
        average([], [], 0.5)


# --- the stage on the tiny world ---------------------------------------------------


class FixedPredictions(BaseModel):
    name: str
    parquet: str  # a predictions file the test wrote


def _publish(ctx: StageContext) -> dict[str, Any]:
    out = ctx.staging / "predictions"
    out.mkdir()
    table = read_predictions_parquet(ctx.config.parquet)  # type: ignore[attr-defined]
    write_predictions_parquet(out / "val.parquet", table)
    return {"name": ctx.config.name}  # type: ignore[attr-defined]


MODEL = Stage(name="train", code_version="test", config_type=FixedPredictions, compute=_publish)


def gt_predictions(gt: BoxTable, labelmap: LabelMap, *, signal: float, seed: int,
                   shift: float = 0.0, drop: float = 0.0) -> BoxTable:  # fmt: skip
    """Every unique GT box of ``gt`` scored ``signal`` × label + noise for every class."""
    rng = np.random.default_rng(seed)
    keys = np.array([f"{v},{t},{b.tolist()}" for v, t, b in zip(gt.video, gt.timestamp, gt.boxes,
                                                               strict=True)])  # fmt: skip
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    labels = np.zeros((len(first), len(labelmap)))
    for row, box in enumerate(inverse.ravel()):
        if int(gt.action[row]) in labelmap:
            labels[box, labelmap.index_of(int(gt.action[row]))] = 1
    keep = rng.random(len(first)) >= drop
    scores = signal * labels + rng.random(labels.shape)
    rows = []
    for b in np.flatnonzero(keep):
        box = (gt.boxes[first[b]] + [shift, 0, shift, 0]).tolist()
        v, t = str(gt.video[first[b]]), int(gt.timestamp[first[b]])
        rows += [(v, t, box, int(c), float(s)) for c, s in zip(labelmap.ids, scores[b],
                                                                strict=True)]  # fmt: skip
    return table(rows)


@pytest.fixture(scope="module")
def members(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    dataset_cfg = DatasetConfig(root=tiny_world)
    dataset = Dataset.open(dataset_cfg)
    gt, labelmap = dataset.gt("val"), dataset.labelmap
    root = tmp_path_factory.mktemp("ensemble_members")
    specs = {
        "good": {"signal": 0.6, "seed": 1},
        "shifted": {"signal": 0.6, "seed": 2, "shift": 0.01, "drop": 0.1},
        "noise": {"signal": 0.0, "seed": 3},
    }
    refs = {}
    for name, spec in specs.items():
        path = root / f"{name}.parquet"
        write_predictions_parquet(path, gt_predictions(gt, labelmap, **spec))
        refs[name] = run_stage(MODEL, FixedPredictions(name=name, parquet=str(path)), {}, root)
    return dataset_cfg, refs, root


def stage_config(dataset_cfg: DatasetConfig, names: list[str], **run) -> Any:
    return ensemble.EnsembleStageConfig(
        dataset=dataset_cfg, dataset_fingerprint=dataset_fingerprint(dataset_cfg), name="e",
        members=names, run=ensemble.EnsembleRunConfig(**run),
    )  # fmt: skip


def test_greedy_selection_skips_the_noisy_member(members, tmp_path: Path) -> None:
    dataset_cfg, refs, _ = members
    names = ["noise", "shifted", "good"]
    ref = run_stage(ensemble.STAGE, stage_config(dataset_cfg, names, select=True),
                    {n: refs[n] for n in names}, tmp_path)  # fmt: skip
    s = ref.summary
    maps = s["member_maps"]
    assert maps["good"] > maps["noise"] + 0.1 and maps["shifted"] > maps["noise"] + 0.1
    assert s["members"][0] == max(maps, key=maps.get)  # best single member is the reference
    assert "noise" not in s["members"]
    assert s["val_map"] >= s["best_member_map"] and s["gain"] >= 0
    assert s["selection_optimistic"] is True
    steps = [step["mAP"] for step in s["selection"] if "added" in step]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # strictly rising
    # The published predictions evaluate to the reported mAP.
    dataset = Dataset.open(dataset_cfg)
    pred = read_predictions_parquet(ref.path / "predictions" / "val.parquet")
    result = evaluate_ava(dataset.gt("val"), pred, dataset.labelmap, dataset.excluded("val"))
    assert result.mAP == pytest.approx(s["val_map"], abs=1e-12)
    assert (ref.path / "predictions" / "val.csv").is_file()
    metrics = json.loads((ref.path / "metrics.json").read_text())
    assert metrics["selection"][0]["singles"] == pytest.approx(maps)
    eval_config = evaluate.EvaluateStageConfig(
        dataset=dataset_cfg, dataset_fingerprint=dataset_fingerprint(dataset_cfg),
        evaluate=evaluate.EvaluateConfig(),
    )  # fmt: skip
    assert run_stage(evaluate.STAGE, eval_config, {"predictions": ref}, tmp_path).summary[
        "mAP"
    ] == pytest.approx(s["val_map"], abs=1e-5)


def test_plain_average_and_weights_change_the_key(members, tmp_path: Path) -> None:
    dataset_cfg, refs, _ = members
    names = ["good", "noise"]
    inputs = {n: refs[n] for n in names}
    plain = run_stage(ensemble.STAGE, stage_config(dataset_cfg, names), inputs, tmp_path)
    heavy = run_stage(ensemble.STAGE, stage_config(dataset_cfg, names,
                                                   weights={"good": 9.0}), inputs, tmp_path)  # fmt: skip
    assert plain.key != heavy.key
    assert plain.summary["members"] == names and plain.summary["selection"] == []
    assert plain.summary["selection_optimistic"] is False
    # Noise averaged in at equal weight hurts; weighting the good member 9:1 hurts less.
    assert plain.summary["val_map"] < plain.summary["member_maps"]["good"]
    assert plain.summary["val_map"] < heavy.summary["val_map"]
    assert plain.summary["gain"] == pytest.approx(
        plain.summary["val_map"] - plain.summary["member_maps"]["good"]
    )


def test_differing_boxes_in_the_stage(members, tmp_path: Path) -> None:
    dataset_cfg, refs, _ = members
    names = ["good", "shifted"]
    ref = run_stage(ensemble.STAGE, stage_config(dataset_cfg, names), {n: refs[n] for n in names},
                    tmp_path)  # fmt: skip
    good = read_predictions_parquet(refs["good"].path / "predictions" / "val.parquet")
    out = read_predictions_parquet(ref.path / "predictions" / "val.parquet")
    # The reference's boxes exactly, whatever the shifted member has.
    assert len(out) == len(good)
    np.testing.assert_array_equal(np.unique(out.boxes, axis=0), np.unique(good.boxes, axis=0))
    assert ref.summary["val_map"] > ref.summary["member_maps"]["good"]


def test_stage_errors_name_what_is_wrong(members, tmp_path: Path) -> None:
    dataset_cfg, refs, _ = members
    with pytest.raises(StageError, match=r"weights for non-members \['other'\]"):
        run_stage(ensemble.STAGE, stage_config(dataset_cfg, ["good"], weights={"other": 2.0}),
                  {"good": refs["good"]}, tmp_path)  # fmt: skip
    with pytest.raises(StageError, match=r"member 'good' .* no 'train' predictions"):
        run_stage(ensemble.STAGE,
                  stage_config(dataset_cfg, ["good"], select=True, select_split="train"),
                  {"good": refs["good"]}, tmp_path)  # fmt: skip
