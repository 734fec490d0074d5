"""``bankflow checkpoint inspect``: format, architecture, tensor report, exit codes."""

from __future__ import annotations

from pathlib import Path

import torch

from flows.cli import main
from tests.models.test_backbones_parity_pyslowfast import _fixture, _state

R101 = "SLOWFAST_32x2_R101_50_50"


def test_inspect_a_pyslowfast_file_with_its_cfg(tmp_path: Path, capsys) -> None:
    fixture = _fixture(R101)
    state = _state(fixture)
    state["head.projection.weight"] = torch.zeros(80, 288)
    path = tmp_path / "r101.pyth"
    torch.save({"model_state": state, "cfg": fixture["cfg"]}, path)
    assert main(["checkpoint", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format: torch, pyslowfast naming, 1312 tensors" in out
    assert "architecture from: the cfg embedded in the file" in out
    assert "dilations (1, 1, 1, 2), slow sampling linspace" in out
    assert "non-local after blocks {'slow': ((), (), (6, 13, 20), ())" in out
    assert "tensors: 1311 loaded, 0 missing, 0 unexpected, 0 mis-shaped, 1 ignored" in out
    assert "ignored prefixes: head.* (1)" in out
    assert out.rstrip().endswith("verdict: loads")


def test_inspect_without_a_config_says_what_is_undetermined(tmp_path: Path, capsys) -> None:
    fixture = _fixture(R101)
    state = _state(fixture)
    del state["s3.pathway1_res0.branch2.b.weight"]
    path = tmp_path / "r101_bare.pyth"
    torch.save({"model_state": state}, path)
    assert main(["checkpoint", "inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "architecture from: the tensors only" in out
    assert "1 missing" in out
    assert "missing: fast.stages.1.0.b.conv.weight (s3.pathway1_res0.branch2.b.weight)" in out
    assert "undetermined: checkpoint" in out and "does not say its spatial_strides" in out
    assert out.rstrip().endswith("verdict: would be refused")

    yaml_path = tmp_path / "r101.yaml"
    yaml_path.write_text(fixture["cfg"])
    assert main(["checkpoint", "inspect", str(path), "--source-config", str(yaml_path)]) == 1
    out = capsys.readouterr().out
    assert f"architecture from: {yaml_path}" in out and "undetermined" not in out


def test_inspect_errors_are_one_line_with_exit_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.pyth"
    assert main(["checkpoint", "inspect", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bankflow: error: checkpoint inspect: checkpoint {missing} does not exist"

    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    assert main(["checkpoint", "inspect", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a SlowFast checkpoint" in err

    fixture = _fixture(R101)
    path = tmp_path / "r101.pyth"
    torch.save({"model_state": _state(fixture)}, path)
    preset = "pyslowfast/SLOWFAST_32x2_R101_50_50"  # the full-width network: width 64
    assert main(["checkpoint", "inspect", str(path), "--source-config", preset]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "says width=64, but the tensors" in err
