"""A planted ``head.pt`` in a copied work root runs no code (issue 20, defect 2).

The probe: copy a work root with a trained stage-1 run, replace its ``head.pt`` by a
pickle that runs a shell command when unpickled (padded to the original size, so the
publication manifest's (path, size) check passes), then ``stage dump --force``. Before
the fix ``stages/train/dump.py`` loaded it with ``weights_only=False`` and the command ran.
Now the file's sha256 differs from the one recorded at publication and the load is
refused naming the file; with the manifest forged too, ``weights_only=True`` refuses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from stages.framework import COMPLETE_MARKER, StageError
from stages.pipeline import PipelineRun, run_pipeline
from stages.train.run import TrainedRun, load_trained_head
from tests.stages.test_dump import stage1_outputs


class _RunsCommand:
    """Unpickling calls ``os.system(command)``: what a hostile head.pt would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _crafted_head(size: int, marker: Path) -> bytes:
    """A torch.save'd pickle of ``size`` bytes that touches ``marker`` when loaded (the
    sequential legacy format: padding grows the file byte by byte)."""
    pad = 0
    for _ in range(20):
        buf = io.BytesIO()
        payload = {"head": "linear", "x": _RunsCommand(f"touch {marker}"), "pad": "p" * pad}
        torch.save(payload, buf, _use_new_zipfile_serialization=False)
        data = buf.getvalue()
        if len(data) == size:
            return data
        pad += size - len(data)
        if pad < 0:
            break
    pytest.fail(f"could not craft a pickle of exactly {size} bytes")


@pytest.fixture(scope="module")
def stage1(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    return stage1_outputs(tiny_world, tmp_path_factory)


def _copied_root_with_planted_head(stage1, tmp_path: Path) -> tuple[Path, Path, Path]:
    work = tmp_path / "copied_work"
    shutil.copytree(stage1.work, work, symlinks=True)
    run_dir = work / "train" / stage1.linear.key
    head = run_dir / "head.pt"
    marker = tmp_path / "pwned"
    head.write_bytes(_crafted_head(head.stat().st_size, marker))
    return work, head, marker


def test_planted_head_in_copied_work_root_runs_no_command(stage1, tmp_path: Path) -> None:
    work, head, marker = _copied_root_with_planted_head(stage1, tmp_path)
    cfg = stage1.config.model_copy(deep=True)
    cfg.dump.banks = {"lfb": stage1.dump_config().bank}
    run = PipelineRun(config=cfg, work_root=work, until="dump", force=frozenset({"dump"}))
    with pytest.raises(StageError) as err:
        run_pipeline(run, write=False)
    assert not marker.exists(), "unpickling the planted head.pt ran a shell command"
    assert str(head) in str(err.value) and "sha256" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_planted_head_with_forged_manifest_is_refused_by_weights_only(
    stage1, tmp_path: Path
) -> None:
    _, head, marker = _copied_root_with_planted_head(stage1, tmp_path)
    record_path = head.parent / COMPLETE_MARKER
    record = json.loads(record_path.read_text())
    digest = hashlib.sha256(head.read_bytes()).hexdigest()
    record["manifest"] = [
        [e[0], e[1], digest] if e[0] == "head.pt" else e for e in record["manifest"]
    ]
    record_path.write_text(json.dumps(record))
    for load in (load_trained_head, TrainedRun.open):
        with pytest.raises(StageError, match=r"head\.pt: not a plain tensor file"):
            load(head.parent)
    assert not marker.exists()
