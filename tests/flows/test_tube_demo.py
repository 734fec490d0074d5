"""demo_tubes.yaml end to end through Prefect at tiny sizes: the tube world, frame- and
video-mAP per model from the evaluate stage, equal to ``bankflow eval --tubes``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.evaluate.cli import eval_main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "flows" / "configs" / "demo_tubes.yaml"
TINY = (
    "world.n_train_videos=4", "world.n_val_videos=2", "world.n_frames=48",
    "finetune.epochs=3", "extract.num_frames=8",
    "train.runs.linear.optim.epochs=6", "train.runs.acar.optim.epochs=4",
    "train.runs.pcca.optim.epochs=4", "train.runs.pcca.optim.warmup_epochs=1",
    "train.runs.pcca.optim.step_epochs=[3]", "train.runs.sonly.optim.epochs=4",
    "rebalance.epochs=2",
)  # fmt: skip


@pytest.mark.slow
def test_demo_tubes_runs_and_heads_beat_the_prior(tmp_path):
    args = ["run", "--config", str(CONFIG), "--work-root", str(tmp_path / "w"),
            "--set", f"dataset.root={tmp_path / 'world'}"]  # fmt: skip
    for item in TINY:
        args += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout[-3000:])  # the run's tables (pytest -s shows them)
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    runs = summary["stages"]["evaluate"]["runs"]
    assert set(runs) == {"linear", "acar", "pcca", "sonly", "pcca_crt"}
    # the run's table: frame-mAP and video-mAP per model, and the prior's
    assert "frame-mAP" in out.stdout and "v@0.5" in out.stdout
    for name in runs:
        assert any(line.startswith(name) and "val" in line for line in out.stdout.splitlines())
    beat = []
    for name, rec in runs.items():
        ev = rec["summary"]
        for key in ("frame_map", "v_map@0.2", "v_map@0.5", "v_map_0.10:0.90"):
            assert 0.0 <= ev[key] <= 1.0, (name, key)
        if ev["frame_map"] > ev["prior"]["frame_map"]:
            beat.append(name)
        # the same numbers from the model's prediction file alone
        # summary.json names outputs relative to the work root
        pred = tmp_path / "w" / summary["models"][name]["predictions_csv"]
        cli = tmp_path / f"cli_{name}"
        gt = tmp_path / "world" / "annotations" / "gt.json"
        assert eval_main(["--tubes", str(gt), str(pred), "--min-length", "8",
                          "--out-dir", str(cli)]) == 0  # fmt: skip
        stage_metrics = json.loads((tmp_path / "w" / rec["uri"] / "metrics.json").read_text())
        assert json.loads((cli / "metrics.json").read_text()) == stage_metrics
    assert "pcca" in beat and len(beat) >= 3, {n: r["summary"] for n, r in runs.items()}
    report = (tmp_path / "w" / summary["report"]["markdown"]).read_text()
    assert "video-mAP" in report and "v_map@0.5" in report
