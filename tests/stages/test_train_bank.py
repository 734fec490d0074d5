"""The train_bank stage on the tiny world: the lfb head over a dumped bank (offline, read
from disk or preloaded: the same training), the online memory, the checks that refuse a
bank of the wrong kind, and the whole pipeline with a dump and a stage-2 run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head
from stages.config import load_config
from stages.framework import StageError, StageRef, run_stage
from stages.pipeline import PipelineRun, run_pipeline
from stages.train import bank as train_bank
from stages.train import dump as dump_stage
from tests.stages.test_dump import TINY_YAML, Stage1, stage1_outputs

LFB_KWARGS = {"hidden_dim": 16, "num_layers": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stage1(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Stage1:
    return stage1_outputs(tiny_world, tmp_path_factory)


@pytest.fixture(scope="module")
def banks(stage1: Stage1, tmp_path_factory: pytest.TempPathFactory) -> dict[str, StageRef]:
    work = tmp_path_factory.mktemp("banks")
    lfb = run_stage(dump_stage.STAGE, stage1.dump_config(), stage1.inputs(), work)
    acfb = run_stage(dump_stage.STAGE, stage1.dump_config("acfb", kind="acfb", **{"from": "acar"}),
                     stage1.inputs("acar"), work)  # fmt: skip
    return {"lfb": lfb, "acfb": acfb}


def config(stage1: Stage1, name: str, **run: Any) -> train_bank.TrainBankStageConfig:
    run.setdefault("head", "lfb")
    run.setdefault("head_kwargs", LFB_KWARGS)
    run.setdefault("optim", {"epochs": 2, "batch_keyframes": 8})
    run.setdefault("window", {"before": 4, "after": 2})
    return train_bank.TrainBankStageConfig(
        dataset=stage1.dataset, dataset_fingerprint=stage1.fingerprint, name=name,
        run=train_bank.BankRunConfig(**run),
    )  # fmt: skip


def weights(ref: StageRef) -> dict[str, torch.Tensor]:
    return torch.load(ref.path / "head.pt", weights_only=True)["state"]


def test_lfb_head_trains_on_the_bank(
    stage1: Stage1, banks: dict[str, StageRef], tmp_path: Path
) -> None:
    cfg = config(stage1, "lfb", bank="lfb")
    inputs = {"extract": stage1.extract, "dump": banks["lfb"]}
    ref = run_stage(train_bank.STAGE, cfg, inputs, tmp_path)
    s = ref.summary
    assert s["head"] == "lfb" and s["bank_kind"] == "lfb" and s["epochs"] == 2
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in s["history"])
    assert 0.0 <= s["val_map"] <= 1.0 and s["class_ap"] and s["group_map"]
    metrics = json.loads((ref.path / "metrics.json").read_text())
    assert metrics["per_class"] == s["class_ap"] and "prior" in metrics
    store = stage1.store("val")
    n_val = sum(int(store.index(v)[1][-1]) for v in store.videos())
    lines = (ref.path / "predictions" / "val.csv").read_text().splitlines()
    assert len(lines) % n_val == 0 and len(lines) >= n_val
    saved = torch.load(ref.path / "head.pt", weights_only=True)
    assert saved["kwargs"]["bank_dim"] == store.schema.pooled_dim  # filled from the bank
    assert saved["bank_kind"] == "lfb" and saved["window"]["before"] == 4

    # The window read from disk per batch trains exactly like the preloaded bank, which is
    # why bank_preload is not in the key (stages.framework.keys): computed in another work root.
    preloaded = run_stage(train_bank.STAGE, config(stage1, "lfb", bank="lfb", bank_preload=True),
                          inputs, tmp_path / "preloaded")  # fmt: skip
    assert preloaded.key == ref.key and not preloaded.cached
    a, b = weights(ref), weights(preloaded)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert preloaded.summary["val_map"] == s["val_map"]

    # Features beyond the RAM budget ("auto" with 0 GB: AVA's context maps) are read from
    # the feature store per batch, and train exactly like features held in RAM.
    streamed = run_stage(train_bank.STAGE, config(stage1, "lfb", bank="lfb", preload_max_gb=0.0),
                         inputs, tmp_path / "streamed")  # fmt: skip
    assert streamed.key == ref.key and not streamed.cached
    assert train_bank.BankRunConfig(bank="x").preload == "auto"
    c = weights(streamed)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_the_window_changes_what_the_head_sees(
    stage1: Stage1, banks: dict[str, StageRef], tmp_path: Path
) -> None:
    inputs = {"extract": stage1.extract, "dump": banks["lfb"]}
    near = run_stage(train_bank.STAGE, config(stage1, "w", bank="lfb"), inputs, tmp_path)
    none = run_stage(train_bank.STAGE, config(stage1, "w", bank="lfb", window={
        "before": 0, "after": 0, "include_current": False}), inputs, tmp_path)  # fmt: skip
    a, b = weights(near), weights(none)
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_bank_of_another_kind_is_refused(
    stage1: Stage1, banks: dict[str, StageRef], tmp_path: Path
) -> None:
    with pytest.raises(StageError, match=r"reads 'lfb' banks, but bank 'acfb' is a 'acfb' bank"):
        run_stage(train_bank.STAGE, config(stage1, "bad", bank="acfb"),
                  {"extract": stage1.extract, "dump": banks["acfb"]}, tmp_path)  # fmt: skip
    with pytest.raises(StageError, match="reads no bank"):
        run_stage(train_bank.STAGE, config(stage1, "bad", bank="lfb", head="linear", head_kwargs={}),
                  {"extract": stage1.extract, "dump": banks["lfb"]}, tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="needs `bank"):
        train_bank.BankRunConfig(head="lfb")


def test_online_memory_trains_and_fills(stage1: Stage1, tmp_path: Path) -> None:
    cfg = config(stage1, "online", bank_mode="online")
    ref = run_stage(train_bank.STAGE, cfg, {"extract": stage1.extract}, tmp_path)
    s = ref.summary
    assert s["bank_mode"] == "online" and s["bank"] is None
    assert all(math.isfinite(r["loss"]) for r in s["history"])
    # The memory holds the head's own features: bank_dim = C + hidden_dim.
    saved = torch.load(ref.path / "head.pt", weights_only=True)
    c = stage1.store("train").schema.pooled_dim
    assert saved["kwargs"]["bank_dim"] == c + LFB_KWARGS["hidden_dim"]
    state = torch.load(next((ref.path / "checkpoints").glob("epoch_*.pt")), weights_only=True)
    seen = state["model"]["seen"]
    memory = state["model"]["memory"]
    assert bool(seen.all())  # every train and val actor was written
    assert bool((memory.abs().sum(1) > 0).all())


def test_online_memory_starts_unseen(stage1: Stage1) -> None:
    """Unseen entries are masked out; written ones come back as stored."""
    seen_banks: list[dict[str, torch.Tensor]] = []

    class Echo(Head):  # the contract: a head is a models.heads.Head
        def forward(self, batch):
            seen_banks.append(dict(batch.bank))
            return HeadOutput(logits=batch.pooled[:, :1], features=batch.pooled[:, :2] + 1)

    memory = train_bank.OnlineMemoryHead(Echo(), rows=4, dim=2)
    batch = ActorBatch(context=torch.zeros(1, 1, 1, 1), pooled=torch.arange(6.0).view(2, 3),
                       boxes=torch.zeros(2, 4), batch_index=torch.zeros(2, dtype=torch.long))  # fmt: skip
    batch.bank = {"mask": torch.tensor([[True, True, False]]), "dt": torch.zeros(1, 3),
                  "track": torch.full((1, 3), -1), "current": torch.zeros(1, 3, dtype=torch.bool),
                  "memory_rows": torch.tensor([[1, 2, 0]]), "actor_rows": torch.tensor([1, 2])}  # fmt: skip
    memory.train()
    memory(batch)
    assert not seen_banks[0]["mask"].any() and torch.all(seen_banks[0]["features"] == 0)
    memory(batch)
    assert seen_banks[1]["mask"].tolist() == [[True, True, False]]
    np.testing.assert_array_equal(seen_banks[1]["features"][0, :2].numpy(), [[1, 2], [4, 5]])
    memory.eval()
    memory.reset(0, 4)
    memory(batch)
    assert not memory.seen.any()  # eval without fill writes nothing


def test_pipeline_dumps_and_trains_stage2(tiny_world: Path, tmp_path: Path) -> None:
    cfg = load_config(TINY_YAML, [
        f"dataset.root={tiny_world}", "world=null",
        "dump.banks.lfb={from: linear, kind: lfb}",
        "train_bank.runs.lfb_nl={head: lfb, bank: lfb, head_kwargs: {hidden_dim: 16, "
        "num_layers: 1}, window: {before: 4, after: 2}, optim: {epochs: 2, batch_keyframes: 8}}",
    ])  # fmt: skip
    summary = run_pipeline(PipelineRun(config=cfg, work_root=tmp_path))
    dumped = summary["stages"]["dump"]["runs"]["lfb"]["summary"]
    assert dumped["kind"] == "lfb" and dumped["computed"] > 0 and dumped["reused"] == 0
    model = summary["models"]["lfb_nl"]
    assert model["stage"] == "train_bank" and model["bank"] == "lfb"
    assert 0.0 <= model["val_map"] <= 1.0
    assert "lfb_nl" in summary["stages"]["evaluate"]["runs"]
    again = run_pipeline(PipelineRun(config=cfg, work_root=tmp_path))
    assert again["stages"]["dump"]["cached"] and again["stages"]["train_bank"]["cached"]
