"""Whole-process start and run times of the light CLI commands (pytest -m bench -s).

``bankflow eval`` on a ~300k-detection-row case against ``plain_ava_eval.py`` (numpy
only, the same protocol): the ratio is what the CLI costs beyond the evaluation itself
(interpreter, imports, parsing, report). Target: <= 1.5. Also ``bankflow --help`` and
``bankflow eval --help``. And config mistakes (unknown field, bad value, missing file,
unknown stage): whole-process seconds to the one-line error before Prefect starts
(target < 1 s), beside the floor any config read pays (python + numpy, pydantic, yaml).
Each figure is the best of three runs, measured in this run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stages.data import write_labelmap
from tests.benchmarks.test_bench_eval import _make_case

ROOT = Path(__file__).resolve().parents[2]
PLAIN = Path(__file__).with_name("plain_ava_eval.py")
RUNS = 3


def _best_of(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    best, out = float("inf"), ""
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - start
        assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
        best, out = min(best, seconds), proc.stdout
    return best, out


@pytest.mark.bench
def test_bench_eval_process_against_plain_numpy(tmp_path):
    gt, det, labelmap = _make_case(tmp_path, np.random.default_rng(0), n_videos=19)
    write_labelmap(tmp_path / "labelmap.pbtxt", labelmap)
    rows = sum(1 for _ in det.open())
    bankflow_s, bankflow_out = _best_of(
        [sys.executable, "-m", "flows.cli", "eval", str(gt), str(det),
         "--labelmap", str(tmp_path / "labelmap.pbtxt")]
    )  # fmt: skip
    plain_s, plain_out = _best_of(
        [sys.executable, str(PLAIN), str(gt), str(det), ",".join(map(str, labelmap.ids))]
    )
    bankflow_map = float(bankflow_out.split("mAP@0.5 = ")[1].split()[0])
    plain_map = float(plain_out.split()[1])
    help_s, _ = _best_of([sys.executable, "-m", "flows.cli", "--help"])
    eval_help_s, _ = _best_of([sys.executable, "-m", "flows.cli", "eval", "--help"])
    print(f"\n{rows} detection rows: bankflow eval {bankflow_s:.2f} s (mAP {bankflow_map:.6f}), "
          f"plain numpy {plain_s:.2f} s (mAP {plain_map:.6f}): ratio {bankflow_s / plain_s:.2f}")  # fmt: skip
    print(f"bankflow --help {help_s:.2f} s, bankflow eval --help {eval_help_s:.2f} s")
    # The yardstick evaluates the same protocol: the same number, or the ratio means nothing.
    # Both print 6 decimals: values a float's noise apart may round one unit apart.
    assert abs(bankflow_map - plain_map) < 1.5e-6
    assert rows > 280_000
    assert bankflow_s / plain_s <= 1.5  # the target of issue #18 (it was ~5-10 with torch)


def _best_failing(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Best of three whole-process times of a command that must fail with a usage error:
    exit 2 and one line on stderr (returned)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    best, line = float("inf"), ""
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        best = min(best, time.perf_counter() - start)
        assert proc.returncode == 2, f"{cmd}: {proc.returncode} {proc.stderr}"
        (line,) = proc.stderr.strip().splitlines()
    return best, line


@pytest.mark.bench
def test_bench_config_errors_before_prefect(tmp_path):
    """Config mistakes end a run before Prefect starts: whole-process seconds of each
    (target < 1 s, issue #18), beside the interpreter's own start-up in this run."""
    (tmp_path / "data").mkdir()
    cases = {
        "unknown field": ("detect: {min_scor: 1}", []),
        "bad value": ("detect: {min_score: high}", []),
        "missing named file": ("extract: {weights: no/such/weights.pt}", []),
        "missing dataset": ("", ["--set", "dataset.root=no/such/dataset"]),
        "unknown --until stage": ("", ["--until", "extrct"]),
        "missing config file": (None, []),
    }
    python_s = min(_timed([sys.executable, "-c", "pass"], tmp_path) for _ in range(RUNS))
    # What reading any pydantic config costs: the floor of a config error.
    floor = [sys.executable, "-c", "import numpy, pydantic, yaml"]
    floor_s = min(_timed(floor, tmp_path) for _ in range(RUNS))
    print(f"\npython -c pass: {python_s:.2f} s; import numpy, pydantic, yaml: {floor_s:.2f} s")
    for what, (body, extra) in cases.items():
        config = tmp_path / f"{what.replace(' ', '_')}.yaml"
        if body is not None:
            config.write_text(f"dataset: {{root: {tmp_path / 'data'}}}\n{body}\n")
        seconds, line = _best_failing(
            [sys.executable, "-m", "flows.cli", "run", "--config", str(config),
             "--work-root", str(tmp_path / "work"), *extra], tmp_path,
        )  # fmt: skip
        print(f"{what:<22} {seconds:.2f} s ({seconds / floor_s:.1f}x the floor): {line}")
        assert line.startswith("bankflow")
    assert not (tmp_path / "work").exists()  # nothing made, no Prefect home


def _timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start
