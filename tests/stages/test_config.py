"""Config files: ``base:`` inheritance (one level), ``_replace_``, overrides, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stages.config import ConfigError, load_config, merge_config, read_config_file
from stages.pipeline import PipelineRun, dry_runner, iter_runs, run_pipeline

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "flows" / "configs"
# demo_banks.yaml and demo_detector.yaml as they were before they said `base: demo.yaml`
# (full copies of demo's sections).
FLAT = {
    name: ROOT / "tests" / "fixtures" / "configs" / f"{name}_flat.yaml"
    for name in ("demo_banks", "demo_detector")
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_merge_mappings_recursively_and_replace_other_values():
    base = {"a": {"x": 1, "y": {"p": [1, 2], "q": 2}}, "b": [1], "c": {"k": 1}, "d": 5}
    child = {"a": {"y": {"p": [3]}, "z": 0}, "b": [2, 3], "c": None, "e": {"n": 1}}
    assert merge_config(base, child) == {
        "a": {"x": 1, "y": {"p": [3], "q": 2}, "z": 0}, "b": [2, 3], "c": None, "d": 5,
        "e": {"n": 1},
    }  # fmt: skip
    assert base["a"]["y"] == {"p": [1, 2], "q": 2}  # the base is not modified


def test_replace_mark_swaps_the_base_mapping_whole():
    base = {"runs": {"a": {"lr": 1}, "b": {"lr": 2}}, "s": {"k": 1}}
    child = {"runs": {"_replace_": True, "c": {"lr": 3, "opt": {"_replace_": True, "m": 1}}},
             "s": {"_replace_": True}}  # fmt: skip
    assert merge_config(base, child) == {"runs": {"c": {"lr": 3, "opt": {"m": 1}}}, "s": {}}


def test_base_is_relative_to_the_file_and_overrides_apply_after_the_merge(tmp_path):
    _write(tmp_path / "shared" / "base.yaml",
           "name: base\ndataset: {root: /data}\ndetect: {min_score: 0.3}\n"
           "train: {runs: {lin: {head: linear}}}\n")  # fmt: skip
    child = _write(tmp_path / "mine" / "child.yaml",
                   "base: ../shared/base.yaml\nname: child\ndetect: {source: proposals}\n")  # fmt: skip
    assert read_config_file(child)["detect"] == {"min_score": 0.3, "source": "proposals"}
    config = load_config(child, ["detect.min_score=0.5"])
    assert config.name == "child" and str(config.dataset.root) == "/data"
    assert config.detect.min_score == 0.5 and config.detect.source == "proposals"
    assert list(config.train.runs) == ["lin"]


def test_base_errors_name_the_file(tmp_path):
    _write(tmp_path / "grand.yaml", "name: g\n")
    _write(tmp_path / "parent.yaml", "base: grand.yaml\nname: p\n")
    deep = _write(tmp_path / "deep.yaml", "base: parent.yaml\n")
    with pytest.raises(
        ConfigError, match=r"deep\.yaml: base: .*parent\.yaml has a base of its own"
    ):
        read_config_file(deep)
    missing = _write(tmp_path / "missing.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: base: 'nowhere\.yaml' not found"):
        read_config_file(missing)
    wrong = _write(tmp_path / "wrong.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: base: expected a config file path"):
        read_config_file(wrong)
    _write(tmp_path / "ok.yaml", "dataset: {root: /d}\n")
    typo = _write(tmp_path / "typo.yaml", "base: ok.yaml\ndetect: {min_scor: 1}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: invalid config: detect\.min_scor"):
        load_config(typo)


@pytest.mark.parametrize("name", sorted(FLAT))
def test_configs_with_a_base_resolve_to_their_former_flat_copies(name):
    """``base: demo.yaml`` changed the file, not the config: same values, same order."""
    based = load_config(CONFIGS / f"{name}.yaml").model_dump(mode="json")
    flat = load_config(FLAT[name]).model_dump(mode="json")
    assert json.dumps(based) == json.dumps(flat)
    assert "base: demo.yaml" in (CONFIGS / f"{name}.yaml").read_text()


def _stage_keys(config_path: Path, dataset: Path, work_root: Path) -> dict[str, str]:
    config = load_config(config_path, ["world=null", f"dataset.root={dataset}"])
    run = PipelineRun(config=config, work_root=work_root, runner=dry_runner)
    return {name: rec["key"] for name, rec in iter_runs(run_pipeline(run, write=False))}


def test_demo_banks_and_demo_detector_keep_every_stage_key(tiny_world, tmp_path):
    based = _stage_keys(CONFIGS / "demo_banks.yaml", tiny_world, tmp_path)
    assert based == _stage_keys(FLAT["demo_banks"], tiny_world, tmp_path)
    assert {"detect", "extract", "train:tonly", "dump:identity", "train_bank:igmn"} <= set(based)
    assert not any(name.startswith(("rebalance", "ensemble")) for name in based)
    based = _stage_keys(CONFIGS / "demo_detector.yaml", tiny_world, tmp_path)
    assert based == _stage_keys(FLAT["demo_detector"], tiny_world, tmp_path)
    assert "train:sonly" in based and not any(n.startswith("dump") for n in based)


def test_the_ava_example_config_in_the_docs_is_valid(tmp_path):
    text = (ROOT / "docs" / "ava.md").read_text()
    (example,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert "base: /path/to/bankflow/flows/configs/demo.yaml" in example
    path = _write(tmp_path / "ava.yaml", example.replace("/path/to/bankflow", str(ROOT)))
    config = load_config(path)
    assert config.world is None and config.finetune is None
    assert config.extract.backbone == "slowfast_r50" and config.extract.backbone_kwargs == {}
    assert list(config.train.runs) == ["slowfast_det", "acar"] and not config.ensemble.runs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dump.banks.lfb.from=linearr", "dump.banks.lfb.from: 'linearr' is not one of the train runs"),
        ("train_bank.runs.lfb.bank=lfbb", "train_bank.runs.lfb.bank: 'lfbb' is not one of the dumps"),
        ("train_bank.runs.acar_acfb.stage1=acr", "train_bank.runs.acar_acfb.stage1: 'acr' is not"),
        ("train_bank.runs.linear={head: lfb, bank: lfb}", "train_bank.runs ['linear'] have the names of train"),
        ("rebalance.models=[acar_acfbb]", "rebalance.models: 'acar_acfbb' is not one of the models"),
        ("ensemble.runs.x.members=[linear_crt, lnear]", "ensemble.runs.x.members: 'lnear' is not"),
    ],
)  # fmt: skip
def test_runs_that_name_other_runs_are_checked_at_load(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "demo.yaml", [override])
    assert str(error.value).startswith(f"{CONFIGS / 'demo.yaml'}: invalid config: {message}")


def test_models_of_crt_and_tta_can_be_ensembled():
    config = load_config(CONFIGS / "demo.yaml", [
        "tta={views: [{flip: true}]}", "ensemble.runs.x.members=[linear_crt, acar_tta, lfb]"])  # fmt: skip
    assert config.ensemble.runs["x"].members == ["linear_crt", "acar_tta", "lfb"]
