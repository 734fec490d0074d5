"""The ``bankflow`` command line: light commands, one-line errors, help, version, config show."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from stages.catalog import STAGES
from stages.config import PipelineConfig, load_config
from stages.data import write_labelmap
from stages.pipeline import PipelineRun, dry_runner, iter_runs, run_pipeline
from stages.stage_names import STAGE_ORDER
from tests.evaluate.cases import labelmap

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "tiny.yaml"
HEAVY = ("torch", "torchvision", "prefect")

# Runs bankflow's main() in a fresh interpreter, then prints which heavy modules it imported.
PROBE = """
import json, sys
from flows.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def _probe(*args: str, cwd: Path) -> tuple[dict, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def _eval_case(tmp_path: Path) -> tuple[Path, Path, Path]:
    gt, pred, lm = tmp_path / "gt.csv", tmp_path / "pred.csv", tmp_path / "labelmap.pbtxt"
    gt.write_text("v1,0902,0.1,0.1,0.5,0.5,1,0\nv1,0902,0.1,0.1,0.5,0.5,2,0\n")
    pred.write_text("v1,0902,0.1,0.1,0.5,0.5,1,0.9\nv1,0902,0.6,0.6,0.9,0.9,2,0.8\n")
    write_labelmap(lm, labelmap([1, 2]))
    return gt, pred, lm


def test_light_commands_import_neither_torch_nor_prefect(tiny_world, tmp_path):
    gt, pred, lm = _eval_case(tmp_path)
    config = ["--config", str(TINY), "--set", "world=null", "--set", f"dataset.root={tiny_world}",
              "--work-root", str(tmp_path / "work")]  # fmt: skip
    commands = {
        "status": (["status", *config], 0),
        "config show": (["config", "show", *config], 0),
        "help": (["--help"], 0),
        "version": (["--version"], 0),
        "eval help": (["eval", "--help"], 0),
        "eval": (["eval", str(gt), str(pred), "--labelmap", str(lm)], 0),
        "data check": (["data", "check", str(tmp_path / "no_dataset")], 2),
        "store info": (["store", "info", str(tmp_path / "no_store")], 2),
        "store verify": (["store", "verify", str(tmp_path / "no_store")], 2),
    }
    for what, (args, code) in commands.items():
        result, proc = _probe(*args, cwd=tmp_path)
        assert result == {"code": code, "heavy": []}, (what, proc.stderr[-2000:])
    result, proc = _probe("eval", str(gt), str(pred), "--labelmap", str(lm), cwd=tmp_path)
    assert "mAP@0.5 = 0.500000" in proc.stdout


@pytest.mark.slow
def test_config_errors_come_before_prefect_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {root: /nowhere}\ndetect: {min_scor: 1}\n")
    for args in (["run", "--config", str(bad)],
                 ["demo", "--set", "detect.min_scor=1", "--work-root", str(tmp_path / "w")]):  # fmt: skip
        result, proc = _probe(*args, cwd=tmp_path)
        assert result["code"] == 2 and "prefect" not in result["heavy"], args
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("bankflow: error: ") and "detect.min_scor" in line
    assert not (tmp_path / "w" / ".prefect").exists()


def test_config_errors_stop_stage_and_run_before_prefect_home_is_made(tmp_path, capsys):
    work = tmp_path / "w"
    for argv, named in ((["stage", "train", "--config", str(tmp_path / "absent.yaml")],
                         "absent.yaml: config file not found"),
                        (["run", "--config", str(TINY), "--set", "train.runs.linear.optim.lr"],
                         "expected section.key=value")):  # fmt: skip
        assert main([*argv, "--work-root", str(work)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("bankflow: error: ") and named in line
    assert not work.exists()


def test_unknown_stage_is_one_line_listing_the_stages(capsys):
    for argv in (["run", "--config", "x.yaml", "--until", "extrct"],
                 ["stage", "extrct", "--config", "x.yaml"]):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "unknown stage 'extrct'" in line
        assert line.endswith(f"stages: {', '.join(STAGE_ORDER)} (see bankflow {argv[0]} --help)")


def test_help_lists_the_stages_and_version_matches_pyproject(capsys):
    for argv in (["--help"], ["run", "--help"], ["stage", "--help"], ["status", "--help"],
                 ["config", "show", "--help"]):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert ", ".join(STAGE_ORDER) in text, argv
    assert main(["eval", "--help"]) == 0
    assert "usage: bankflow eval" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"bankflow {version}"


def test_every_stage_name_has_a_stage():
    assert set(STAGES) == set(STAGE_ORDER) and len(STAGE_ORDER) == len(set(STAGE_ORDER))


def test_every_stage_names_a_compute_whose_module_exports_the_stage():
    """The catalog's stages name their compute by path (imported when they run); each
    compute module re-exports its stage as ``STAGE``."""
    for name, stage in STAGES.items():
        assert isinstance(stage.compute, str), name
        compute = stage.compute_function()
        assert callable(compute), name
        assert importlib.import_module(compute.__module__).STAGE is stage, name


def test_config_show_prints_the_resolved_config_and_every_stage_key(tiny_world, tmp_path, capsys):
    overrides = ["world=null", f"dataset.root={tiny_world}", "train.runs.linear.optim.lr=0.01"]
    argv = ["config", "show", "--config", str(TINY), "--work-root", str(tmp_path)]
    assert main([*argv, *(x for o in overrides for x in ("--set", o))]) == 0
    out = capsys.readouterr().out
    config = load_config(TINY, overrides)
    assert PipelineConfig.model_validate(yaml.safe_load(out)) == config
    assert yaml.safe_load(out)["train"]["runs"]["linear"]["optim"]["lr"] == 0.01
    run = PipelineRun(config=config, work_root=tmp_path, runner=dry_runner)
    keys = {name: rec["key"] for name, rec in iter_runs(run_pipeline(run, write=False))}
    shown = dict(line[2:].split() for line in out.splitlines() if line.startswith("# ") and
                 len(line.split()) == 3)  # fmt: skip
    assert shown == keys and {"detect", "track", "extract", "train:linear"} <= set(keys)
    assert not (tmp_path / "summary.json").exists()
