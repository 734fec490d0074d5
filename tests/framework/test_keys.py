"""Stage keys say what changes results, and nothing else (stages.framework.keys).

Every field of every stage config carries a key marker; paths never enter a key (files by
their sha256, the dataset by its content fingerprint); execution-only settings stay out.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stages.catalog import STAGES
from stages.config import PipelineConfig
from stages.framework import StageError, stage_key
from stages.framework.keys import FileInKey, InKey, KeyRole, NotInKey, declared_models, field_role
from stages.pipeline import PipelineRun, dry_runner, run_pipeline

# What is left out of keys, per config model: execution only, or (DatasetConfig) where
# the files are and what they are called, which the dataset fingerprint stands for.
# Changing this set is a decision: it changes which outputs teammates share.
NOT_IN_KEY = {
    "DatasetConfig": {"root", "videos_dir", "annotations_dir", "splits", "labelmap"},
    "SplitFiles": {"gt", "excluded", "proposals"},
    "TubeFiles": {"trust_pickle"},
    "DetectConfig": {"trust_pickle", "batch_size", "device"},
    "FinetuneConfig": {"device", "devices", "num_threads", "clip_cache", "cache_max_bytes"},
    "ExtractConfig": {"batch_size", "device", "allow_low_disk"},
    "OptimConfig": {"devices"},
    "RebalanceSettings": {"devices"},
    "HeadRunConfig": {"preload", "preload_max_gb"},
    "BankRunConfig": {"bank_preload", "preload", "preload_max_gb"},
    "BankDumpConfig": {"batch_keyframes"},
}
FILE_IN_KEY = {
    "DetectConfig": {"proposals", "checkpoint"},
    "BackboneConfig": {"weights"},
    "ExtractConfig": {"weights"},
}


def stage_config_models() -> dict[str, type[BaseModel]]:
    """Every model reachable from a stage's config type, by class name."""
    found: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel]) -> None:
        if found.setdefault(model.__name__, model) is not model:
            raise AssertionError(f"two config models named {model.__name__}")
        for info in model.model_fields.values():
            for sub in declared_models(info.annotation):
                if sub.__name__ not in found:
                    walk(sub)

    for stage in STAGES.values():
        walk(stage.config_type)
    return found


def test_every_field_of_every_stage_config_says_whether_it_enters_the_key() -> None:
    models = stage_config_models()
    assert len(models) >= 25  # every stage's section, the dataset, optimizers, windows…
    unclassified = [
        f"{name}.{field}"
        for name, model in models.items()
        for field in model.model_fields
        if field_role(model, field) is None
    ]
    assert unclassified == [], f"fields without InKey/NotInKey/FileInKey: {unclassified}"
    excluded = {
        name: {f for f in m.model_fields if field_role(m, f) is KeyRole.EXCLUDED}
        for name, m in models.items()
    }
    assert {n: f for n, f in excluded.items() if f} == NOT_IN_KEY
    files = {
        name: {f for f in m.model_fields if field_role(m, f) is KeyRole.FILE}
        for name, m in models.items()
    }
    assert {n: f for n, f in files.items() if f} == FILE_IN_KEY


def test_an_unmarked_field_enters_the_key_and_markers_do_what_they_say(tmp_path: Path) -> None:
    class Toy(BaseModel):
        plain: int = 1
        kept: InKey[int] = 2
        device: NotInKey[str] = "cpu"
        weights: FileInKey[str | None] = None

    from tests.framework.toy_stages import STAGE_A

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"abc")
    base = stage_key(STAGE_A, Toy(weights=str(weights)), {})
    assert stage_key(STAGE_A, Toy(weights=str(weights), device="cuda"), {}) == base
    assert stage_key(STAGE_A, Toy(weights=str(weights), plain=5), {}) != base
    assert stage_key(STAGE_A, Toy(weights=str(weights), kept=5), {}) != base
    moved = tmp_path / "elsewhere" / "w.bin"
    moved.parent.mkdir()
    shutil.move(weights, moved)
    assert stage_key(STAGE_A, Toy(weights=str(moved)), {}) == base
    moved.write_bytes(b"abd")  # same size, other bytes
    assert stage_key(STAGE_A, Toy(weights=str(moved)), {}) != base
    with pytest.raises(StageError, match=r"weights: .*nowhere\.bin"):
        stage_key(STAGE_A, Toy(weights=str(tmp_path / "nowhere.bin")), {})


def every_stage_config(world: Path, files: Path, **execution: Any) -> dict[str, Any]:
    """A config running every stage once: files (weights, checkpoint, proposals) in
    ``files``, execution settings from ``execution`` (device, batch sizes, RAM)."""
    device = execution.get("device", "cpu")
    batch = execution.get("batch", 4)
    preload = execution.get("preload", "auto")
    run_exec = {"preload": preload, "preload_max_gb": execution.get("preload_max_gb", 8.0)}
    return {
        "name": "every-stage",
        "dataset": {"root": str(world)},
        "detect": {
            "source": "fasterrcnn", "checkpoint": str(files / "detector.pt"),
            "proposals": {"val": str(files / "proposals_val.csv")},
            "finetune": {"epochs": 1, "batch_size": 2},
            "batch_size": batch, "device": device,
            "trust_pickle": execution.get("trust_pickle", False),
        },
        "finetune": {
            "epochs": 1, "batch_keyframes": 4, "device": device,
            "num_threads": execution.get("threads"), "clip_cache": execution.get("clip_cache", "auto"),
            "cache_max_bytes": execution.get("cache_max_bytes", 1 << 30),
        },
        "extract": {
            "backbone": "slowfast_tiny", "weights": str(files / "backbone.pt"),
            "num_frames": 8, "short_side": None, "batch_size": batch, "device": device,
            "allow_low_disk": execution.get("allow_low_disk", False),
        },
        "train": {"runs": {"linear": {"head": "linear", **run_exec}}},
        "dump": {"banks": {"lfb": {"from": "linear", "batch_keyframes": batch}}},
        "train_bank": {
            "runs": {
                "lfb": {"head": "lfb", "bank": "lfb", **run_exec,
                        "bank_preload": execution.get("bank_preload", False)},
            }
        },
        "rebalance": {"models": ["linear"]},
        "tta": {"views": [{"flip": True}]},
        "ensemble": {"runs": {"all": {}}},
        "report": {"title": "keys"},
    }  # fmt: skip


def stage_keys(config: dict[str, Any], work_root: Path) -> dict[str, str]:
    """Every stage run's key, as ``bankflow status`` computes them (nothing runs)."""
    run = PipelineRun(
        config=PipelineConfig.model_validate(config), work_root=work_root, runner=dry_runner
    )
    summary = run_pipeline(run, write=False)
    keys = {name: rec["key"] for name, rec in run.records.items()}
    assert not (work_root / "summary.json").exists()
    assert summary["stages"]
    return keys


def make_files(where: Path, source: Path) -> Path:
    where.mkdir(parents=True)
    (where / "detector.pt").write_bytes(b"detector weights " * 100)
    (where / "backbone.pt").write_bytes(b"backbone weights " * 100)
    shutil.copy(source / "annotations" / "person_boxes_val.csv", where / "proposals_val.csv")
    return where


def test_keys_survive_moving_the_dataset_weights_and_work_root(
    tiny_world: Path, tmp_path: Path
) -> None:
    world_a = tmp_path / "a" / "world"
    shutil.copytree(tiny_world, world_a)
    files_a = make_files(tmp_path / "a" / "models", world_a)
    keys_a = stage_keys(every_stage_config(world_a, files_a), tmp_path / "a" / "work")
    # Every stage ran but link, which runs on tube datasets only (an AVA-style world here).
    assert {name.partition(":")[0] for name in keys_a} == set(STAGES) - {"link"}

    # A teammate: everything at other paths, other devices, batch sizes and RAM budgets.
    world_b = tmp_path / "b" / "data" / "ava"
    shutil.copytree(world_a, world_b)
    files_b = tmp_path / "b" / "weights"
    shutil.copytree(files_a, files_b)
    shutil.rmtree(tmp_path / "a")  # nothing of A's paths is left to be read
    other = every_stage_config(
        world_b, files_b, device="cuda", batch=32, preload=False, preload_max_gb=0.5,
        trust_pickle=True, threads=1, clip_cache="stream", cache_max_bytes=1 << 20,
        allow_low_disk=True, bank_preload=True,
    )  # fmt: skip
    keys_b = stage_keys(other, tmp_path / "b" / "work-root")
    assert keys_b == keys_a

    # What changes results still changes keys, and only downstream of the change.
    (files_b / "backbone.pt").write_bytes(b"other backbone " * 100)
    retrained = stage_keys(other, tmp_path / "b" / "work-root")
    changed = {n for n in keys_a if retrained[n] != keys_a[n]}
    assert {"detect", "track"}.isdisjoint(changed)  # upstream of the backbone
    assert {"finetune", "extract", "train:linear", "evaluate:linear"} <= changed
    other["train"]["runs"]["linear"]["optim"] = {"batch_keyframes": 8}  # training batch size
    trained = stage_keys(other, tmp_path / "b" / "work-root")
    assert trained["train:linear"] != retrained["train:linear"]
    assert trained["extract"] == retrained["extract"]
    (world_b / "annotations" / "val.csv").write_text(
        (world_b / "annotations" / "val.csv").read_text() + "\n"
    )
    assert stage_keys(other, tmp_path / "b" / "work-root")["detect"] != trained["detect"]
