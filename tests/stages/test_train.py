"""The train stage and its loop on the tiny world's features (detect → track → extract once).

Every head trains through the same loop; predictions are written for every (box, class)
or the top k; a killed run resumes to bitwise the same weights; a few keyframes are
learned to near-zero loss; the prior-only baseline is reported.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.heads import HEADS, build_head
from stages.config import load_config
from stages.data import Dataset, DatasetConfig
from stages.data.predictions import read_predictions_parquet
from stages.evaluate.ava import evaluate_ava
from stages.extract.stage import store_path
from stages.framework import STAGING_DIR, StageRef, read_output, run_stage, stage_key
from stages.pipeline import PipelineRun, prepare_dataset, run_pipeline
from stages.train import stage as train_stage
from stages.train.data import KeyframeSource, build_index, open_split
from stages.train.loop import (
    OptimConfig,
    TrainData,
    TrainingError,
    latest_checkpoint,
    predict,
    train,
)

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"

# Widths small enough that 2 epochs of any head take well under a second on one core.
HEAD_KWARGS: dict[str, dict[str, Any]] = {
    "linear": {},
    "acrn": {"dim": 8},
    "acar": {"reduce_dim": 16, "dim": 8},
    "amcr": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
    "amcr_slim": {"hidden_dim": 16, "num_heads": 2},
    "pcca": {"dim": 16, "num_heads": 2, "num_layers": 1},
    "sonly": {"hidden_dim": 16, "num_heads": 2},
    "tonly": {"hidden_dim": 16, "num_heads": 2},
    "igmn_dam": {"attention_hidden": 8, "fuse_hidden": 16},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops spin-wait with 2 contending threads on a shared 2-core box; one is faster
    and makes float sums reproducible across the processes of the resume test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Features:
    dataset: DatasetConfig
    fingerprint: str
    extract: StageRef

    def config(self, name: str, **run: Any) -> train_stage.TrainStageConfig:
        run.setdefault("optim", {"epochs": 2, "batch_keyframes": 8})
        return train_stage.TrainStageConfig(
            dataset=self.dataset,
            dataset_fingerprint=self.fingerprint,
            name=name,
            run=train_stage.HeadRunConfig(**run),
        )

    def store(self, split: str):
        return open_split(store_path(self.extract.uri, split))


@pytest.fixture(scope="module")
def features(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Features:
    """The tiny world's features with 7×7 and temporal RoI maps (S-only / T-only read them)."""
    cfg = load_config(
        TINY_YAML,
        [
            f"dataset.root={tiny_world}",
            "world=null",  # the session's world is built already (by the conftest)
            "extract.store_roi=true",
            "extract.store_roi_t=true",
        ],
    )
    work = tmp_path_factory.mktemp("train_features")
    run = PipelineRun(config=cfg, work_root=work, until="extract")
    run_pipeline(run, write=False)
    dataset, fingerprint = prepare_dataset(cfg)
    return Features(dataset=dataset, fingerprint=fingerprint, extract=run.refs["extract"])


@pytest.fixture(scope="module")
def val_actors(features: Features) -> int:
    store = features.store("val")
    return sum(int(store.index(v)[1][-1]) for v in store.videos())


def n_classes(features: Features) -> int:
    dataset = Dataset.open(features.dataset)
    return len(train_stage.evaluated_labelmap(dataset, features.dataset))


def csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def history_without_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "time")} for r in history]


def bank_kind(builder: Any) -> str | None:
    """A stage-2 head's bank kind (None for stage-1 heads, which this stage trains)."""
    return getattr(getattr(builder, "func", builder), "BANK_KIND", None)


def test_heads_table_is_covered() -> None:
    assert set(HEAD_KWARGS) == {name for name, h in HEADS.items() if bank_kind(h) is None}


@pytest.mark.parametrize("head", sorted(HEAD_KWARGS))
def test_every_head_trains_through_the_stage(
    head: str, features: Features, val_actors: int, tmp_path: Path
) -> None:
    ref = run_stage(
        train_stage.STAGE,
        features.config(head, head=head, head_kwargs=HEAD_KWARGS[head]),
        {"extract": features.extract},
        tmp_path,
    )
    summary = ref.summary
    assert summary["head"] == head and summary["epochs"] == 2
    assert math.isfinite(summary["val_map"]) and 0.0 <= summary["val_map"] <= 1.0
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in summary["history"])
    csv = ref.path / "predictions" / "val.csv"
    assert csv.is_file() and len(csv_rows(csv)) == val_actors * n_classes(features)
    history = json.loads((ref.path / train_stage.HISTORY_FILE).read_text())
    events = [json.loads(line) for line in (ref.path / train_stage.EVENTS_FILE).open()]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch"]
    assert history_without_times(events[1:]) == history_without_times(
        [{"event": "epoch", **r} for r in history]
    )
    # The published weights rebuild the head.
    saved = torch.load(ref.path / train_stage.HEAD_FILE, weights_only=True)
    model = build_head(
        saved["head"], in_channels=saved["in_channels"], num_classes=len(saved["classes"]),
        **saved["kwargs"],
    )  # fmt: skip
    model.load_state_dict(saved["state"])


def test_a_recipe_and_the_actor_position_train_through_the_stage(
    features: Features, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``recipe: paper`` trains with the scaled paper recipe and the zeroed HR2O branches;
    ``actor_position`` reaches the head and its published weights."""
    kwargs = {**HEAD_KWARGS["acar"], "actor_position": "box_mask"}
    config = features.config("acar_recipe", head="acar", head_kwargs=kwargs, recipe="paper")
    assert config.run.optim.optimizer == "sgd" and config.run.optim.schedule == "step"
    with caplog.at_level("INFO", logger="bankflow.train"):
        ref = run_stage(train_stage.STAGE, config, {"extract": features.extract}, tmp_path)
    assert "2 residual relation branches start at zero" in caplog.text
    assert math.isfinite(ref.summary["val_map"])
    saved = torch.load(ref.path / train_stage.HEAD_FILE, weights_only=True)
    assert saved["kwargs"]["actor_position"] == "box_mask"
    assert "encoder.position.weight" in saved["state"]


def test_predictions_every_class_and_top_k(
    features: Features, val_actors: int, tmp_path: Path
) -> None:
    k = n_classes(features)
    full = run_stage(
        train_stage.STAGE, features.config("all"), {"extract": features.extract}, tmp_path
    )
    top = run_stage(
        train_stage.STAGE, features.config("top2", top_k=2), {"extract": features.extract},
        tmp_path,
    )  # fmt: skip
    assert full.key != top.key
    full_csv = csv_rows(full.path / "predictions" / "val.csv")
    top_csv = csv_rows(top.path / "predictions" / "val.csv")
    assert len(full_csv) == val_actors * k and len(top_csv) == val_actors * 2
    assert all(len(row) == 8 for row in full_csv)
    full_pq = read_predictions_parquet(full.path / "predictions" / "val.parquet")
    top_pq = read_predictions_parquet(top.path / "predictions" / "val.parquet")
    assert len(full_pq) == val_actors * k and len(top_pq) == val_actors * 2
    # CSV and Parquet hold the same rows (the CSV rounds scores to 6 digits).
    np.testing.assert_allclose([float(r[7]) for r in full_csv], full_pq.score, rtol=1e-5)
    assert [r[0] for r in full_csv] == full_pq.video.tolist()
    # top_k does not change training: the kept rows are each box's 2 best of the full table.
    full_scores = full_pq.score.reshape(val_actors, k)
    best2 = -np.sort(-full_scores, axis=1)[:, :2]
    np.testing.assert_array_equal(top_pq.score.reshape(val_actors, 2), best2)
    full_actions = full_pq.action.reshape(val_actors, k)
    best2_actions = np.take_along_axis(
        full_actions, np.argsort(-full_scores, axis=1, kind="stable")[:, :2], axis=1
    )
    np.testing.assert_array_equal(top_pq.action.reshape(val_actors, 2), best2_actions)
    np.testing.assert_array_equal(top_pq.boxes[::2], full_pq.boxes[::k])


def test_prior_baseline_is_reported(features: Features, tmp_path: Path) -> None:
    ref = run_stage(train_stage.STAGE, features.config("prior"), {"extract": features.extract},
                    tmp_path)  # fmt: skip
    dataset = Dataset.open(features.dataset)
    labelmap = train_stage.evaluated_labelmap(dataset, features.dataset)
    train_index = build_index(features.store("train"), dataset.gt("train"), labelmap)
    val_index = build_index(features.store("val"), None, labelmap)
    scores = train_stage.prior_scores(train_index.labels, len(val_index.boxes))
    table = train_stage.predictions_table(val_index, scores, labelmap, None)
    expected = evaluate_ava(dataset.gt("val"), table, labelmap, dataset.excluded("val")).mAP
    assert ref.summary["prior_map"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0
    metrics = json.loads((ref.path / train_stage.METRICS_FILE).read_text())
    assert metrics["prior"]["mAP"] == pytest.approx(expected, abs=1e-12)
    assert metrics["mAP"] == pytest.approx(ref.summary["val_map"])


def make_data(features: Features, *, preload: bool = True, keyframes: int | None = None):
    dataset = Dataset.open(features.dataset)
    labelmap = train_stage.evaluated_labelmap(dataset, features.dataset)
    store = features.store("train")
    index = build_index(store, dataset.gt("train"), labelmap)
    if keyframes is not None:
        index = index.subset(np.arange(keyframes))
    exclusive_ids = {int(i) for i in dataset.exclusive_ids}
    return TrainData(
        train=KeyframeSource(store, index, preload=preload),
        val=None,
        exclusive=[k for k, c in enumerate(labelmap.ids) if int(c) in exclusive_ids],
        use_roi=True,
        use_roi_t=False,
    ), len(labelmap)


def test_overfits_a_few_keyframes(features: Features, tmp_path: Path) -> None:
    data, k = make_data(features, keyframes=4)
    labels = data.train.index.labels
    assert labels.sum() > 0 and len(labels) >= 4
    torch.manual_seed(0)
    model = build_head("linear", in_channels=features.store("train").schema.pooled_dim,
                       num_classes=k, dropout=0.0)  # fmt: skip
    cfg = OptimConfig(epochs=150, batch_keyframes=4, lr=0.05, warmup_epochs=0, loss="bce",
                      schedule="step",  # a constant rate: no cosine tail
                      weight_decay=0.0, grad_clip=0.0)  # fmt: skip
    history = train(model, data, cfg, tmp_path / "ckpt")
    assert history[0]["loss"] > 0.3
    assert history[-1]["loss"] < 0.02
    scores = predict(model, data.train, data)
    np.testing.assert_array_equal(scores > 0.5, labels > 0.5)


def test_checkpoint_holds_the_full_training_state(features: Features, tmp_path: Path) -> None:
    data, k = make_data(features)
    model = build_head("linear", in_channels=features.store("train").schema.pooled_dim,
                       num_classes=k)  # fmt: skip
    cfg = OptimConfig(epochs=3, batch_keyframes=8, box_jitter=0.1)
    train(model, data, cfg, tmp_path / "ckpt", events=tmp_path / "events.jsonl")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch_2.pt"]
    state = torch.load(latest_checkpoint(tmp_path / "ckpt"), weights_only=True)
    for key in ("model", "optimizer", "scheduler", "generator", "torch_rng", "history"):
        assert key in state
    assert state["data_order"] == {"seed": 0, "next_epoch": 3}
    assert state["scheduler"]["last_epoch"] == 3 * math.ceil(len(data.train.index) / 8)
    assert len(state["optimizer"]["state"]) == len(list(model.parameters()))
    # A finished run resumed is a no-op that returns the same history.
    again = train(model, data, cfg, tmp_path / "ckpt", events=tmp_path / "events.jsonl")
    assert again == state["history"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").open()]
    assert [e["event"] for e in events] == ["epoch"] * 3 + ["resume"]
    # Another run's checkpoints are refused, not silently continued.
    with pytest.raises(TrainingError, match="checkpoint of another run"):
        train(model, data, cfg.model_copy(update={"lr": 0.5}), tmp_path / "ckpt")


def test_store_backed_source_trains_like_preloaded(features: Features, tmp_path: Path) -> None:
    """The prefetching store reader feeds the same batches in the same order."""
    weights = []
    for preload in (True, False):
        data, k = make_data(features, preload=preload)
        torch.manual_seed(0)
        model = build_head("acrn", in_channels=features.store("train").schema.pooled_dim,
                           num_classes=k, **HEAD_KWARGS["acrn"])  # fmt: skip
        cfg = OptimConfig(epochs=2, batch_keyframes=4)
        train(model, data, cfg, tmp_path / f"ckpt_{preload}", prefetch=2)
        weights.append(model.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_non_finite_loss_stops_training(features: Features, tmp_path: Path) -> None:
    data, k = make_data(features)
    model = build_head("linear", in_channels=features.store("train").schema.pooled_dim,
                       num_classes=k)  # fmt: skip
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 0, step 0"):
        train(model, data, OptimConfig(epochs=1), tmp_path / "ckpt")
    assert latest_checkpoint(tmp_path / "ckpt") is None


def test_bad_run_config_is_refused() -> None:
    with pytest.raises(ValueError, match="label_iou"):
        train_stage.HeadRunConfig(label_iou=1.5)
    with pytest.raises(ValueError, match="top_k"):
        train_stage.HeadRunConfig(top_k=0)
    with pytest.raises(ValueError, match="batch_keyframes"):
        OptimConfig(batch_keyframes=0)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(features: Features, tmp_path: Path) -> None:
    # PCCA with dropout and box jitter: resuming must restore both RNG streams.
    config = features.config(
        "resume", head="pcca", head_kwargs=HEAD_KWARGS["pcca"],
        optim={"epochs": 4, "batch_keyframes": 8, "box_jitter": 0.1},
    )  # fmt: skip
    inputs = {"extract": features.extract}
    whole = run_stage(train_stage.STAGE, config, inputs, tmp_path / "whole")

    killed_root = tmp_path / "killed"
    key = stage_key(train_stage.STAGE, config, inputs)
    checkpoints = killed_root / "train" / STAGING_DIR / key / train_stage.CHECKPOINT_DIR
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "config": config.model_dump(mode="json"),
                "extract": features.extract.model_dump(mode="json"),
                "work_root": str(killed_root),
                "pause_after_epoch": 1,
                "pause": 60,
            }
        )
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.stages.train_worker", str(spec)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "epoch_1.pt").is_file():
            if worker.poll() is not None:
                pytest.fail(f"worker ended early: {worker.stdout.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no epoch-1 checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stdout.close()
    assert worker.returncode == -signal.SIGKILL
    assert read_output(killed_root, "train", key) is None  # nothing published

    resumed = run_stage(train_stage.STAGE, config, inputs, killed_root)
    events = [json.loads(line) for line in (resumed.path / train_stage.EVENTS_FILE).open()]
    assert [e["event"] for e in events] == ["epoch", "epoch", "resume", "epoch", "epoch"]
    assert events[2]["epoch"] == 2

    a = torch.load(whole.path / train_stage.HEAD_FILE, weights_only=True)["state"]
    b = torch.load(resumed.path / train_stage.HEAD_FILE, weights_only=True)["state"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    history_a = json.loads((whole.path / train_stage.HISTORY_FILE).read_text())
    history_b = json.loads((resumed.path / train_stage.HISTORY_FILE).read_text())
    assert history_without_times(history_a) == history_without_times(history_b)
    assert whole.summary["val_map"] == resumed.summary["val_map"]
    assert (whole.path / "predictions" / "val.csv").read_bytes() == (
        resumed.path / "predictions" / "val.csv"
    ).read_bytes()


def test_epochs_are_tensorboard_scalars(features: Features, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, k = make_data(features)
    model = build_head("linear", in_channels=features.store("train").schema.pooled_dim,
                       num_classes=k)  # fmt: skip
    cfg = OptimConfig(epochs=3, batch_keyframes=8)
    history = train(model, data, cfg, tmp_path / "ckpt", events=tmp_path / "events.jsonl")
    board = EventAccumulator(str(tmp_path / "tensorboard"))
    board.Reload()
    assert {"loss", "lr", "seconds"} <= set(board.Tags()["scalars"])
    losses = board.Scalars("loss")
    assert [e.step for e in losses] == [0, 1, 2]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in history], rel=1e-6)


def test_auto_preload_counts_only_the_arrays_the_head_reads() -> None:
    from featurestore import StoreSchema

    schema = StoreSchema(
        backbone="b", weights_sha256=None, detector_key=None,
        clip={"frames": 8, "stride": 1, "fps": None, "short_side": None},
        context_shape=(16, 4, 5), pooled_dim=16, roi_shape=(16, 7, 7),
    )  # fmt: skip
    pooled = train_stage.features_nbytes(schema, 10, 30, {"pooled"})
    assert pooled == 30 * 16 * 2  # float16
    both = train_stage.features_nbytes(schema, 10, 30, {"pooled", "context", "roi_t"})
    assert both == pooled + 10 * 16 * 4 * 5 * 2  # no roi_t in this store: nothing counted
    assert train_stage.HeadRunConfig().preload == "auto"
    with pytest.raises(ValueError):
        train_stage.HeadRunConfig(preload="sometimes")
