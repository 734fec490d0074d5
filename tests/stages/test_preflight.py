"""Checks before any stage runs: named files, safe names, runs added by ``--set``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from stages.config import ConfigError, load_config
from stages.data.errors import DataError
from stages.pipeline import PipelineRun, run_pipeline

TINY_YAML = Path(__file__).resolve().parents[1] / "flows" / "tiny.yaml"


@pytest.fixture
def world(tiny_world: Path, tmp_path: Path) -> Path:
    out = tmp_path / "world"
    shutil.copytree(tiny_world, out)
    return out


def test_missing_named_file_stops_the_run_before_any_stage(world: Path, tmp_path: Path) -> None:
    meta = yaml.safe_load((world / "dataset.yaml").read_text())
    meta["splits"]["val"]["excluded"] = "excluded_val_v2.csv"  # named, never written
    (world / "dataset.yaml").write_text(yaml.safe_dump(meta))
    cfg = load_config(TINY_YAML, [f"dataset.root={world}", "world=null"])
    work = tmp_path / "work"
    with pytest.raises(DataError) as err:
        run_pipeline(PipelineRun(config=cfg, work_root=work), write=False)
    assert str(err.value) == (
        f"{world}/annotations/excluded_val_v2.csv: file named by "
        "dataset.splits.val.excluded does not exist"
    )
    assert not work.exists() or not any(work.iterdir())  # nothing ran, nothing written


def test_a_run_only_set_creates_must_name_its_head() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TINY_YAML, ["dataset.root=/x", "train.runs.linaer.optim.epochs=2"])
    assert str(err.value) == (
        "override 'train.runs.linaer.optim.epochs=2': train.runs.linaer is not a run of the "
        "config (its train.runs: linear); a new one must set train.runs.linaer.head"
    )
    cfg = load_config(TINY_YAML, ["dataset.root=/x", "train.runs.linear.optim.epochs=2",
                                  "train.runs.new.head=linear", "train.runs.new.optim.epochs=1"])  # fmt: skip
    assert sorted(cfg.train.runs) == ["linear", "new"]
    assert cfg.train.runs["linear"].optim.epochs == 2


def test_a_bank_only_set_creates_must_name_its_source() -> None:
    with pytest.raises(ConfigError, match=r"a new one must set dump.banks.lfb.from"):
        load_config(TINY_YAML, ["dataset.root=/x", "dump.banks.lfb.kind=acfb"])
    cfg = load_config(TINY_YAML, ["dataset.root=/x", "dump.banks.lfb={from: linear}"])
    assert cfg.dump.banks["lfb"].from_ == "linear"


@pytest.mark.parametrize("name", ["../up", ".hidden", "a/b"])
def test_names_that_become_paths_are_checked(name: str) -> None:
    with pytest.raises(ConfigError, match=r"tiny.yaml: train.runs.*name .* \(names become file"):
        load_config(TINY_YAML, ["dataset.root=/x", f"train.runs={{'{name}': {{head: linear}}}}"])
