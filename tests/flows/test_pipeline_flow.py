"""The pipeline through Prefect (an ephemeral server per process, state under the work root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.pipeline import iter_runs

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "tiny.yaml"


def bankflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):
    """The tiny pipeline run twice, each in a new process."""
    work = tmp_path_factory.mktemp("flow")
    args = ("run", "--config", str(TINY), "--work-root", str(work / "w"),
            "--set", f"dataset.root={work / 'world'}")  # fmt: skip
    first = bankflow(*args, cwd=work)
    assert first.returncode == 0, first.stderr[-3000:]
    summary1 = json.loads((work / "w" / "summary.json").read_text())
    second = bankflow(*args, cwd=work)
    assert second.returncode == 0, second.stderr[-3000:]
    summary2 = json.loads((work / "w" / "summary.json").read_text())
    return work, first, summary1, second, summary2


@pytest.mark.slow
def test_first_run_computes_every_stage_and_writes_summary(two_runs):
    work, first, summary, _, _ = two_runs
    assert list(summary["stages"]) == ["detect", "track", "extract", "train", "evaluate", "report"]
    assert list(summary["stages"]["train"]["runs"]) == ["linear"]
    assert summary["stages"]["train"]["key"] == summary["stages"]["train"]["runs"]["linear"]["key"]
    root = work / "w"  # summary.json names outputs relative to the work root
    for name, rec in iter_runs(summary):
        assert rec["cached"] is False, name
        assert not Path(rec["uri"]).is_absolute()
        assert (root / rec["uri"]).is_dir() and (root / rec["uri"] / "COMPLETE.json").is_file()
        assert (root / rec["uri"]).parent.name == name.split(":")[0]
    model = summary["models"]["linear"]
    assert model["stage"] == "train" and model["head"] == "linear" and model["bank"] is None
    assert 0.0 <= model["val_map"] <= 1.0 and set(model["group_map"]) <= {
        "pose", "object_manipulation", "person_interaction"}  # fmt: skip
    assert (root / model["predictions_csv"]).is_file()
    assert 0.0 < summary["detector"]["ap50"] <= 1.0
    assert "train:linear" in first.stdout and "val mAP" in first.stdout
    evaluation = summary["stages"]["evaluate"]["runs"]["linear"]
    assert evaluation["summary"]["mAP"] == pytest.approx(model["val_map"], abs=1e-9)
    for name in ("metrics.json", "metrics.md", "per_class_ap.png"):
        assert (root / evaluation["uri"] / name).is_file()
    assert "frame-mAP@0.5" in first.stdout
    # The run's report (Markdown + HTML + plots), published as a Prefect artifact too.
    markdown = root / summary["report"]["markdown"]
    assert markdown.is_file() and (root / summary["report"]["html"]).is_file()
    assert "| linear |" in markdown.read_text()
    # Prefect's state lives under the work root, not ~/.prefect.
    assert (work / "w" / ".prefect").is_dir()


@pytest.mark.slow
def test_second_run_in_new_process_is_served_from_cache(two_runs):
    _, _, summary1, _, summary2 = two_runs
    assert list(summary2["stages"]) == list(summary1["stages"])
    first = dict(iter_runs(summary1))
    for name, rec in iter_runs(summary2):
        assert rec["cached"] is True, name
        assert rec["key"] == first[name]["key"]
        assert rec["uri"] == first[name]["uri"]
    assert summary2["models"]["linear"]["val_map"] == summary1["models"]["linear"]["val_map"]


@pytest.mark.slow
def test_changed_head_config_reruns_only_that_training(two_runs, tmp_path):
    work, _, summary1, _, _ = two_runs
    out = bankflow(
        "stage", "train", "--config", str(TINY), "--work-root", str(work / "w"),
        "--set", f"dataset.root={work / 'world'}", "--set", "train.runs.linear.optim.lr=0.01",
        cwd=work,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((work / "w" / "summary.json").read_text())
    for name in ("detect", "track", "extract"):
        assert summary["stages"][name]["cached"] is True
        assert summary["stages"][name]["key"] == summary1["stages"][name]["key"]
    assert summary["stages"]["train"]["cached"] is False
    assert summary["stages"]["train"]["key"] != summary1["stages"]["train"]["key"]


@pytest.mark.slow
def test_status_lists_each_stage_state(two_runs):
    work, _, summary1, _, _ = two_runs
    out = bankflow("status", "--config", str(TINY), "--work-root", str(work / "w"),
                   "--set", f"dataset.root={work / 'world'}", cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line}
    for name in ("detect", "track", "extract"):
        assert lines[name][1] == summary1["stages"][name]["key"]
        assert lines[name][2] == "cached"
