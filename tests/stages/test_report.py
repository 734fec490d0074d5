"""The report stage on a small pipeline run (tiny world: two heads, a cRT run, an
ensemble): files exist, PNGs decode, tables hold every model, the key follows the inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stages.config import load_config
from stages.framework import stage_key
from stages.pipeline import (
    PipelineRun,
    format_summary,
    prepare_dataset,
    report_inputs,
    run_pipeline,
)
from stages.report import stage as report

TINY_YAML = Path(__file__).resolve().parents[1] / "flows" / "tiny.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_run(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = load_config(TINY_YAML, [
        f"dataset.root={tiny_world}", "world=null",
        "train.runs.acrn={head: acrn, head_kwargs: {dim: 8}, "
        "optim: {epochs: 2, batch_keyframes: 8}}",
        "rebalance.models=[linear]", "rebalance.epochs=2",
        "ensemble.runs.both={members: [linear, acrn]}",
        "report.title=tiny report",
    ])  # fmt: skip
    run = PipelineRun(config=cfg, work_root=tmp_path_factory.mktemp("report_run"))
    summary = run_pipeline(run)
    return cfg, run, summary


def test_report_files_tables_and_plots(small_run) -> None:
    _, run, summary = small_run
    ref = run.refs["report"]
    md = (ref.path / report.MARKDOWN_FILE).read_text()
    html = (ref.path / report.HTML_FILE).read_text()
    assert md.startswith("# tiny report") and "<title>tiny report</title>" in html
    models = ["linear", "acrn", "linear_crt", "both"]
    for name in models:
        assert f"| {name} |" in md and f"<td>{name}</td>" in html
    for section in ("## Models", "## Per-class AP", "## Class-balanced classifier re-training",
                    "## Ensembles", "## Person detector", "## Stores and banks",
                    "## Stage timings"):  # fmt: skip
        assert section in md
    # The mAP column holds each model's evaluated mAP (percent, two decimals).
    for name in ("linear", "acrn", "linear_crt"):
        evaluated = summary["stages"]["evaluate"]["runs"][name]["summary"]["mAP"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} | "))
        assert row.split(" | ")[1] == summary["models"][name]["stage"]
        assert row.split(" | ")[3] == f"{100 * evaluated:.2f}"
    assert f"{100 * summary['ensembles']['both']['val_map']:.2f}" in md
    plots = sorted(p.name for p in (ref.path / report.PLOTS_DIR).iterdir())
    assert plots == ["crt_delta.png", "map_by_model.png", "per_class_ap.png",
                     "per_class_heatmap.png"]  # fmt: skip
    for name in plots:
        assert f"]({report.PLOTS_DIR}/{name})" in md and f"src='{report.PLOTS_DIR}/{name}'" in html
        with Image.open(ref.path / report.PLOTS_DIR / name) as image:
            image.load()
            pixels = np.asarray(image)
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            assert pixels.std() > 10  # something is drawn
    data = json.loads((ref.path / report.JSON_FILE).read_text())
    assert [m["model"] for m in data["models"]] == models
    assert data["k"] >= 1 and data["crt"]["linear_crt"]["k"] == data["k"]
    # summary.json and the terminal summary point at the report and show the new results.
    assert summary["report"]["markdown"] == str(ref.path / report.MARKDOWN_FILE)
    assert summary["models"]["linear_crt"]["crt"]["k"] >= 1
    text = format_summary(summary)
    assert "linear_crt" in text and "tail Δ" in text and "both" in text
    assert str(ref.path / report.MARKDOWN_FILE) in text


def test_report_key_follows_its_inputs(small_run) -> None:
    cfg, run, _ = small_run
    dataset, fingerprint = prepare_dataset(cfg)
    config = report.ReportStageConfig(dataset=dataset, dataset_fingerprint=fingerprint,
                                      split="val", report=cfg.report)  # fmt: skip
    inputs = report_inputs(run.refs)
    assert {"model:linear", "model:linear_crt", "evaluate:acrn", "ensemble:both",
            "detect", "extract"} <= set(inputs)  # fmt: skip
    assert stage_key(report.STAGE, config, inputs) == run.refs["report"].key
    changed = dict(inputs)
    changed["model:acrn"] = inputs["model:acrn"].model_copy(update={"key": "0" * 16})
    assert stage_key(report.STAGE, config, changed) != run.refs["report"].key
    fewer = {k: v for k, v in inputs.items() if k != "ensemble:both"}
    assert stage_key(report.STAGE, config, fewer) != run.refs["report"].key


def test_second_run_serves_every_new_stage_from_cache(small_run) -> None:
    cfg, run, summary = small_run
    again = run_pipeline(PipelineRun(config=cfg, work_root=run.work_root), write=False)
    for stage in ("rebalance", "ensemble", "report"):
        assert again["stages"][stage]["cached"] is True, stage
        assert again["stages"][stage]["key"] == summary["stages"][stage]["key"]


KILL_REPORT = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from stages.config import load_config
from stages.pipeline import PipelineRun, run_pipeline
overrides = sys.argv[3:]
cfg = load_config(sys.argv[1], overrides)
run_pipeline(PipelineRun(config=cfg, work_root=Path(sys.argv[2])), write=False)
"""


@pytest.mark.slow
def test_sigkill_during_report_publishes_nothing_and_rerun_completes(small_run) -> None:
    """Fault injection (issue 20): SIGKILL as soon as the report's staging dir exists.
    Nothing reads as published; the next run writes the same report. Runs last in this
    module: it removes and rebuilds the fixture's report output."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from stages.framework import STAGING_DIR, read_output

    cfg, run, summary = small_run
    key = summary["stages"]["report"]["key"]
    published = Path(summary["report"]["markdown"]).parent
    before = {p.name: p.read_bytes() for p in published.iterdir() if p.suffix in (".md", ".csv")}
    shutil.rmtree(published)
    staging = run.work_root / "report" / STAGING_DIR / key
    root = Path(__file__).resolve().parents[2]
    overrides = [f"dataset.root={cfg.dataset.root}", "world=null",
                 "train.runs.acrn={head: acrn, head_kwargs: {dim: 8}, "
                 "optim: {epochs: 2, batch_keyframes: 8}}",
                 "rebalance.models=[linear]", "rebalance.epochs=2",
                 "ensemble.runs.both={members: [linear, acrn]}",
                 "report.title=tiny report"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_REPORT, str(TINY_YAML), str(run.work_root), *overrides],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not staging.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert read_output(run.work_root, "report", key) is None  # nothing half-written published
    again = run_pipeline(PipelineRun(config=cfg, work_root=run.work_root), write=False)
    assert again["stages"]["report"]["key"] == key and not again["stages"]["report"]["cached"]
    after = {p.name: p.read_bytes() for p in published.iterdir() if p.suffix in (".md", ".csv")}
    assert after.keys() == before.keys() and after
    assert read_output(run.work_root, "report", key) is not None
