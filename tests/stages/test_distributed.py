"""Data-parallel training (stages.framework.distributed) and mixed precision on the tiny world's features.

Two gloo processes on CPU train the same global batches as one process: the final weights
agree within 1e-5 and the val mAP within 1e-4; a two-process run killed mid-run resumes
from its last epoch checkpoint to the same weights. bf16 autocast trains (the loss falls)
to a val mAP close to fp32's, under another stage key.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.framework import STAGING_DIR, read_output, run_stage, stage_key
from stages.framework.distributed import shard
from stages.train import stage as train_stage
from tests.stages.test_train import REPO, Features
from tests.stages.test_train import features as _features
from tests.stages.test_train import one_thread as _one_thread

features = _features  # the train tests' fixtures: the tiny world's features, one thread
one_thread = _one_thread

# ACAR pools boxes (box jitter is drawn per global batch) and relates the actors of a
# keyframe (a keyframe never straddles two ranks); no dropout: its masks are drawn per rank.
# (Not ACRN: its BatchNorm normalises each rank's slice; docs/design.md.)
RUN = {
    "head": "acar",
    "head_kwargs": {"reduce_dim": 16, "dim": 8, "dropout": 0.0, "hr2o_dropout": 0.0},
}
OPTIM = {"epochs": 3, "batch_keyframes": 8, "box_jitter": 0.1, "optimizer": "adamw"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / train_stage.HEAD_FILE, weights_only=True)["state"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def config(features: Features, name: str, **optim):
    return features.config(name, **RUN, optim={**OPTIM, **optim})


@pytest.fixture(scope="module")
def single(features: Features, tmp_path_factory: pytest.TempPathFactory):
    cfg = config(features, "ddp")
    return run_stage(train_stage.STAGE, cfg, {"extract": features.extract},
                     tmp_path_factory.mktemp("single"))  # fmt: skip


def test_shards_cover_the_global_batch_in_order() -> None:
    batch = np.arange(7)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert np.concatenate([p for p, _ in parts]).tolist() == batch.tolist()
    assert [s for _, s in parts] == [0, 2, 5]
    assert [len(shard(np.arange(1), r, 2)[0]) for r in range(2)] == [0, 1]


@pytest.mark.slow  # two spawned processes import torch and open the stores: ~40 s here
def test_two_processes_train_like_one(features: Features, single, tmp_path: Path) -> None:
    cfg = config(features, "ddp", devices=2)
    # The device count is execution only: the same key, the same output.
    inputs = {"extract": features.extract}
    assert stage_key(train_stage.STAGE, cfg, inputs) == single.key
    t0 = time.perf_counter()
    two = run_stage(train_stage.STAGE, cfg, inputs, tmp_path)
    print(f"2-process stage run: {time.perf_counter() - t0:.1f} s")
    diff = max_difference(weights(single.path), weights(two.path))
    print(f"max |w_2proc - w_1proc| = {diff:.3g}; val mAP {two.summary['val_map']:.6f} vs "
          f"{single.summary['val_map']:.6f}")  # fmt: skip
    assert diff < 1e-5
    assert abs(two.summary["val_map"] - single.summary["val_map"]) < 1e-4
    losses = [(a["loss"], b["loss"]) for a, b in zip(single.summary["history"],
                                                      two.summary["history"], strict=True)]  # fmt: skip
    np.testing.assert_allclose(*zip(*losses, strict=True), rtol=1e-5)
    # Rank 0 alone wrote the events: one line per epoch.
    events = [json.loads(line) for line in (two.path / train_stage.EVENTS_FILE).open()]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "epoch"]


@pytest.mark.slow
def test_killed_two_process_run_resumes(features: Features, single, tmp_path: Path) -> None:
    cfg = config(features, "ddp", devices=2)
    inputs = {"extract": features.extract}
    key = stage_key(train_stage.STAGE, cfg, inputs)
    checkpoints = tmp_path / "train" / STAGING_DIR / key / train_stage.CHECKPOINT_DIR
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "config": cfg.model_dump(mode="json"),
        "extract": features.extract.model_dump(mode="json"),
        "work_root": str(tmp_path), "pause_after_epoch": 1, "pause": 60,
    }))  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.stages.train_worker", str(spec)], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "epoch_1.pt").is_file():
            if worker.poll() is not None:
                pytest.fail(f"worker ended early: {worker.stdout.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "no epoch-1 checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)  # the launcher only: its ranks must follow
        worker.wait(timeout=30)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-s", str(worker.pid)], capture_output=True).stdout:
            assert time.monotonic() < deadline, "ranks outlived their killed launcher"
            time.sleep(0.2)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.stdout.close()
    assert worker.returncode == -signal.SIGKILL
    assert read_output(tmp_path, "train", key) is None

    resumed = run_stage(train_stage.STAGE, cfg, inputs, tmp_path)
    events = [json.loads(line) for line in (resumed.path / train_stage.EVENTS_FILE).open()]
    names = [e["event"] for e in events]
    assert names.count("resume") == 1
    killed, after = names[: names.index("resume")], names[names.index("resume") + 1 :]
    # The launcher was killed once epoch 1's checkpoint existed. Its ranks are spawned (the
    # worker's pause does not reach them) and follow it within ~0.5 s, so on a busy machine
    # rank 0 may log one more epoch first; the resumed run continues from its checkpoint.
    assert set(killed) == {"epoch"} and len(killed) >= 2
    assert set(after) <= {"epoch"} and len(killed) + len(after) >= 3
    assert max_difference(weights(single.path), weights(resumed.path)) < 1e-5
    assert abs(resumed.summary["val_map"] - single.summary["val_map"]) < 1e-4


def test_bf16_trains_close_to_fp32(features: Features, single, tmp_path: Path) -> None:
    cfg = config(features, "ddp", precision="bf16")
    inputs = {"extract": features.extract}
    assert stage_key(train_stage.STAGE, cfg, inputs) != single.key
    bf16 = run_stage(train_stage.STAGE, cfg, inputs, tmp_path)
    losses = [r["loss"] for r in bf16.summary["history"]]
    fp32 = [r["loss"] for r in single.summary["history"]]
    print(f"bf16 losses {losses}, fp32 {fp32}; val mAP {bf16.summary['val_map']:.4f} vs "
          f"{single.summary['val_map']:.4f}")  # fmt: skip
    assert losses[-1] < losses[0]
    # bf16 keeps 8 mantissa bits: the same run's losses within 1 %, the mAP within 0.01
    # (measured: 0.05 % and 0.0003).
    np.testing.assert_allclose(losses, fp32, rtol=0.01)
    assert abs(bf16.summary["val_map"] - single.summary["val_map"]) < 0.01
    assert max_difference(weights(single.path), weights(bf16.path)) > 0  # it did autocast


TORCHRUN_RANK = """
import sys
import torch
from stages.framework.distributed import all_reduce_sum, run_data_parallel, world

def body():
    rank, size = world()
    return float(all_reduce_sum(torch.tensor(float(rank + 1))))

out = run_data_parallel(body, devices=2)
print(f"returned {out}")
"""


def test_torchrun_environment_is_joined_and_only_rank_0_returns(tmp_path: Path) -> None:
    """Processes started with RANK / WORLD_SIZE / MASTER_ADDR (as torchrun starts them) join
    that group instead of spawning; a rank other than 0 ends when the body is done."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def env(rank: int) -> dict[str, str]:
        return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TORCHRUN_RANK],
            cwd=REPO,
            text=True,
            env=env(r),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "returned 3.0" in outs[0]  # 1 + 2 summed over the two ranks
    assert "returned" not in outs[1]
