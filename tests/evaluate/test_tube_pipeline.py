"""Tube datasets through the link and evaluate stages: linking + frame/video-mAP from the
files the pipeline writes, equal to ``bankflow eval --tubes``, and the peer's values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from stages.config import load_config
from stages.data import Dataset, DatasetConfig, SplitFiles
from stages.data.predictions import write_predictions_csv
from stages.data.tube_dataset import TubeFiles
from stages.data.types import NO_PERSON, BoxTable
from stages.evaluate import link as link_stage
from stages.evaluate import stage as evaluate_stage
from stages.evaluate.cli import eval_main
from stages.evaluate.tube_eval import (
    LinkingConfig,
    frame_detections,
    link_detections,
    load_tubes,
    save_tubes,
)
from stages.framework import Stage, StageError, run_stage
from stages.pipeline import PipelineRun, dry_runner, run_pipeline
from stages.train.config import crt_name

CONFIGS = Path(__file__).resolve().parents[2] / "flows" / "configs"


class _Written(BaseModel):
    table: str  # a CSV written by write_predictions_csv, published as predictions/val.csv


def _publish(ctx) -> dict:
    out = ctx.staging / "predictions"
    out.mkdir()
    shutil.copy(ctx.config.table, out / "val.csv")
    return {}


# A model-producing stage of the framework (train's output layout), so the evaluate stage
# reads a published, verified output.
MODEL = Stage(name="model", code_version="1", config_type=_Written, compute=_publish)


def _table(dets: np.ndarray, videos, resolution) -> BoxTable:
    """Per-frame detections [N, 8] (pixels) as the pipeline's prediction rows."""
    hw = np.array([resolution[videos[int(i)]] for i in dets[:, 0]], dtype=np.float64)
    scale = np.column_stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]])
    n = len(dets)
    return BoxTable(
        video=np.array([videos[int(i)] for i in dets[:, 0]], dtype=object),
        timestamp=dets[:, 1].astype(np.int64),
        boxes=dets[:, 4:8] / scale,
        action=dets[:, 2].astype(np.int64) + 1,
        person=np.full(n, NO_PERSON, dtype=np.int64),
        score=dets[:, 3].astype(np.float64),
        line=np.arange(1, n + 1),
    )


def _evaluate(cfg: DatasetConfig, pred_dir, work, linking=None, **evaluate) -> dict:
    """The model's predictions through the link stage (``linking``: its section) and the
    evaluate stage, as the pipeline wires them."""
    ev = evaluate_stage.EvaluateConfig(**evaluate)
    config = evaluate_stage.EvaluateStageConfig(
        dataset=cfg, dataset_fingerprint="test", evaluate=ev
    )
    link_config = link_stage.LinkStageConfig(
        dataset=cfg, dataset_fingerprint="test", split=ev.split, train_split=ev.train_split,
        link=LinkingConfig(**(linking or {})),
    )  # fmt: skip
    ref = run_stage(MODEL, _Written(table=str(pred_dir / "predictions" / "val.csv")), {}, work)
    tubes = run_stage(link_stage.STAGE, link_config, {"predictions": ref}, work)
    out = run_stage(evaluate_stage.STAGE, config, {"predictions": ref, "tubes": tubes}, work)
    return json.loads((out.path / "metrics.json").read_text()) | {"_dir": str(out.path)}


@pytest.fixture
def peer_dataset(peer_ava, tmp_path):
    src = peer_ava / "mmaction2_eval_multisports"
    root = tmp_path / "ms"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(src / "gt.pkl", root / "annotations" / "gt.pkl")
    tubes = TubeFiles(annotation="gt.pkl", trust_pickle=True, split_of={"val": "test"})
    cfg = DatasetConfig(root=root, tubes=tubes, splits={"val": SplitFiles()})
    return cfg, np.load(src / "frame_dets_derived.npy")


def test_peer_values_from_pipeline_files(peer_dataset, tmp_path):
    cfg, dets = peer_dataset
    gt = Dataset.open(cfg).tube_gt
    videos = gt.test_videos[0]
    pred_dir = tmp_path / "model"
    (pred_dir / "predictions").mkdir(parents=True)
    csv = pred_dir / "predictions" / "val.csv"
    # the pipeline's own writer (boxes normalised to 3 decimals, frames as timestamps)
    write_predictions_csv(csv, _table(dets, videos, gt.resolution))
    m = _evaluate(cfg, pred_dir, tmp_path / "work", train_split="val")
    # mmaction2's test_multisport_detection: percent, rounded to 4 decimals
    assert round(100 * m["frame_map"], 4) == 83.6506
    # with every box's own score the linker finds both people of class 10
    assert m["v_map@0.5"] == 0.5
    # the peer's video-mAPs come from linking with its stale score (see LinkingConfig)
    m = _evaluate(cfg, pred_dir, tmp_path / "work", train_split="val",
                  linking={"mmaction2_scores": True})  # fmt: skip
    assert round(100 * m["frame_map"], 4) == 83.6506
    assert round(100 * m["v_map@0.2"], 4) == 37.5
    assert round(100 * m["v_map@0.5"], 4) == 37.5
    assert round(100 * m["v_map_0.10:0.90"], 4) == pytest.approx(29.1667, abs=1e-4)
    tubes = json.loads((Path(m["_dir"]) / "tubes.json").read_text())
    assert sum(len(v) for v in tubes.values()) > 0

    # bankflow eval --tubes on the same file gives the same metrics, byte for byte
    out = tmp_path / "cli"
    argv = ["--tubes", str(cfg.root / "annotations" / "gt.pkl"), str(csv), "--trust-pickle",
            "--mmaction2-scores"]  # fmt: skip
    assert eval_main([*argv, "--out-dir", str(out)]) == 0
    cli = json.loads((out / "metrics.json").read_text())
    assert cli == {k: v for k, v in m.items() if k != "_dir"}


def test_pickle_gt_needs_trust_in_cli(peer_dataset, tmp_path, capsys):
    cfg, _ = peer_dataset
    gt = cfg.root / "annotations" / "gt.pkl"
    assert eval_main(["--tubes", str(gt), str(gt)]) == 2
    err = capsys.readouterr().err
    assert "is a pickle" in err and str(gt) in err and err.count("\n") == 1


def test_stage_equals_cli_on_tube_world(tiny_tube_world, tmp_path):
    ds = Dataset.open(tiny_tube_world)
    gt, videos = ds.tube_gt, ds.tube_videos("val")
    # a model's output: every val proposal scored for every class (seeded noise around
    # the GT label where the proposal overlaps a GT box)
    props = ds.proposals("val")
    rng = np.random.default_rng(0)
    c = len(ds.labelmap)
    rows = np.repeat(np.arange(len(props)), c)
    table = props.take(rows)
    table = BoxTable(
        video=table.video, timestamp=table.timestamp, boxes=table.boxes,
        action=np.tile(np.arange(1, c + 1), len(props)), person=table.person,
        score=rng.uniform(0, 1, len(rows)), line=table.line,
    )  # fmt: skip
    pred_dir = tmp_path / "model"
    (pred_dir / "predictions").mkdir(parents=True)
    csv = pred_dir / "predictions" / "val.csv"
    write_predictions_csv(csv, table)
    m = _evaluate(ds.config, pred_dir, tmp_path / "work", linking={"min_length": 5})
    assert 0 <= m["frame_map"] <= 1 and m["tubes"] > 0
    gt_file = tiny_tube_world / "annotations" / "gt.json"
    out = tmp_path / "cli"
    assert eval_main(["--tubes", str(gt_file), str(csv), "--min-length", "5",
                      "--out-dir", str(out)]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text()) == {
        k: v for k, v in m.items() if k != "_dir"
    }
    # one detection per box: its best class
    dets = frame_detections(table, gt, videos)
    assert len(dets) == len(props)


def test_tubes_file_round_trip_is_exact(tiny_tube_world, tmp_path):
    ds = Dataset.open(tiny_tube_world)
    gt, videos = ds.tube_gt, ds.tube_videos("val")
    rng = np.random.default_rng(0)
    props = ds.proposals("val")
    c = len(ds.labelmap)
    table = props.take(np.repeat(np.arange(len(props)), c))
    table = BoxTable(
        video=table.video, timestamp=table.timestamp, boxes=table.boxes,
        action=np.tile(np.arange(1, c + 1), len(props)), person=table.person,
        score=rng.uniform(0, 1, len(table.video)), line=table.line,
    )  # fmt: skip
    tubes = link_detections(
        gt, frame_detections(table, gt, videos), videos, LinkingConfig(min_length=2)
    )
    assert sum(len(t) for t in tubes.values()) > 0
    tubes[len(tubes)] = []  # a class without tubes keeps its (empty) entry
    save_tubes(tmp_path / "t.npz", tubes)
    back = load_tubes(tmp_path / "t.npz")
    assert list(back) == list(tubes)
    for label, items in tubes.items():
        assert [(v, s) for v, s, _ in back[label]] == [(v, s) for v, s, _ in items]
        for (_, _, a), (_, _, b) in zip(back[label], items, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_link_runs_per_model_on_tube_datasets_only(tiny_tube_world, tiny_world, tmp_path):
    """The pipeline wires link between the models and evaluate on a tube dataset (each
    evaluation reads its model's tubes) and skips it on an AVA dataset."""
    tubes_cfg = load_config(CONFIGS / "demo_tubes.yaml",
                            ["world=null", f"dataset.root={tiny_tube_world}"])  # fmt: skip
    run = PipelineRun(config=tubes_cfg, work_root=tmp_path / "t", runner=dry_runner)
    run_pipeline(run, write=False)
    # Every model: the train runs and the cRT re-trainings (PCCA's second phase).
    models = set(tubes_cfg.train.runs) | {crt_name(m) for m in tubes_cfg.rebalance.models}
    assert models > set(tubes_cfg.train.runs)
    assert {n for n in run.refs if n.startswith("link:")} == {f"link:{m}" for m in models}
    link_keys = {run.refs[f"link:{m}"].key for m in models}
    assert len(link_keys) == len(models)  # one per model: its predictions are in the key
    ava_cfg = load_config(CONFIGS / "demo.yaml", ["world=null", f"dataset.root={tiny_world}"])
    run = PipelineRun(config=ava_cfg, work_root=tmp_path / "a", runner=dry_runner)
    run_pipeline(run, write=False)
    assert any(n.startswith("evaluate:") for n in run.refs)
    assert not any(n.startswith("link") for n in run.refs)


def test_link_and_evaluate_refuse_what_they_cannot_use(tiny_tube_world, tiny_world, tmp_path):
    ds = Dataset.open(tiny_tube_world)
    pred_dir = tmp_path / "model"
    (pred_dir / "predictions").mkdir(parents=True)
    write_predictions_csv(pred_dir / "predictions" / "val.csv", ds.proposals("val"))
    ref = run_stage(MODEL, _Written(table=str(pred_dir / "predictions" / "val.csv")), {}, tmp_path)
    config = evaluate_stage.EvaluateStageConfig(
        dataset=ds.config, dataset_fingerprint="test", evaluate=evaluate_stage.EvaluateConfig()
    )
    # a tube dataset is scored from the link stage's tubes: without them, one clear error
    with pytest.raises(StageError, match="needs input 'tubes'"):
        run_stage(evaluate_stage.STAGE, config, {"predictions": ref}, tmp_path)
    ava = Dataset.open(DatasetConfig(root=tiny_world)).config
    link_config = link_stage.LinkStageConfig(
        dataset=ava, dataset_fingerprint="test", split="val", train_split="train"
    )
    with pytest.raises(StageError, match="is not a tube dataset"):
        run_stage(link_stage.STAGE, link_config, {"predictions": ref}, tmp_path)
