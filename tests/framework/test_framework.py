from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.framework import (
    COMPLETE_MARKER,
    StageError,
    read_output,
    run_stage,
    stage_key,
    stage_status,
)
from tests.framework.toy_stages import STAGE_A, STAGE_B, AConfig, BConfig, run_chain

REPO = Path(__file__).resolve().parents[2]


def calls(root: Path) -> list[str]:
    log = root / "calls.log"
    return log.read_text().split()[::2] if log.exists() else []


def run_in_subprocess(root: Path, value: int, sleep_s: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.framework.toy_stages", str(root), str(value)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TOY_SLEEP_S": str(sleep_s)},
    )  # fmt: skip


def test_second_run_recomputes_nothing(tmp_path):
    a1, b1 = run_chain(tmp_path, AConfig(value=3), BConfig())
    assert (a1.cached, b1.cached) == (False, False)
    assert b1.summary == {"value": 6}
    a2, b2 = run_chain(tmp_path, AConfig(value=3), BConfig())
    assert (a2.cached, b2.cached) == (True, True)
    assert (a2.key, b2.key, b2.digest) == (a1.key, b1.key, b1.digest)
    assert calls(tmp_path) == ["a", "b"]


def test_second_run_in_new_process_recomputes_nothing(tmp_path):
    first = run_in_subprocess(tmp_path, 5)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert out.split()[:3] == ["False", "False", "10"]
    second = run_in_subprocess(tmp_path, 5)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert out.split()[:3] == ["True", "True", "10"]
    assert calls(tmp_path) == ["a", "b"]


def test_changed_config_rekeys_stage_and_dependents_only(tmp_path):
    a1, b1 = run_chain(tmp_path, AConfig(value=2), BConfig(factor=2))
    # Change the downstream stage: upstream stays cached.
    a2, b2 = run_chain(tmp_path, AConfig(value=2), BConfig(factor=5))
    assert a2.cached and a2.key == a1.key
    assert not b2.cached and b2.key != b1.key and b2.summary == {"value": 10}
    # Change the upstream stage: both re-key.
    a3, b3 = run_chain(tmp_path, AConfig(value=7), BConfig(factor=5))
    assert not a3.cached and a3.key != a1.key
    assert not b3.cached and b3.key not in {b1.key, b2.key}
    assert calls(tmp_path) == ["a", "b", "b", "a", "b"]
    # The earlier outputs are still there, untouched.
    assert (Path(b1.uri) / "value.txt").read_text() == "4"


def test_key_covers_code_version(tmp_path):
    bumped = STAGE_A.__class__(**{**STAGE_A.__dict__, "code_version": "2"})
    assert stage_key(bumped, AConfig(), {}) != stage_key(STAGE_A, AConfig(), {})


def test_crash_before_marker_leaves_nothing_complete(tmp_path):
    def explode(ctx):
        (ctx.staging / "half.txt").write_text("half")
        raise RuntimeError("boom")

    stage = STAGE_A.__class__(name="a", code_version="1", config_type=AConfig, compute=explode)
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(stage, AConfig(), {}, tmp_path)
    key = stage_key(stage, AConfig(), {})
    assert read_output(tmp_path, "a", key) is None
    assert not (tmp_path / "a" / key).exists()
    # The real stage then runs cleanly over the leftover staging directory.
    ref = run_stage(STAGE_A, AConfig(), {}, tmp_path)
    assert not ref.cached and sorted(os.listdir(ref.uri)) == sorted(
        [COMPLETE_MARKER, "part1.txt", "provenance.json", "value.txt"]
    )


def test_sigkill_mid_stage_leaves_nothing_complete_and_rerun_finishes(tmp_path):
    proc = run_in_subprocess(tmp_path, 9, sleep_s=30)
    key = stage_key(STAGE_A, AConfig(value=9), {})
    deadline = time.time() + 60
    while not (tmp_path / "a" / ".staging" / key / "part1.txt").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_output(tmp_path, "a", key) is None
    assert stage_status(tmp_path, STAGE_A, key)["state"] == "missing"
    ref_a = run_stage(STAGE_A, AConfig(value=9), {}, tmp_path)
    assert not ref_a.cached and (Path(ref_a.uri) / "value.txt").read_text() == "9"


def test_published_output_is_verified(tmp_path):
    a, _ = run_chain(tmp_path, AConfig(value=1), BConfig())
    (Path(a.uri) / "value.txt").unlink()
    with pytest.raises(StageError, match="no longer matches its manifest"):
        run_chain(tmp_path, AConfig(value=1), BConfig())


def test_force_recomputes_and_keeps_old_output_aside(tmp_path):
    a1 = run_stage(STAGE_A, AConfig(value=4), {}, tmp_path)
    a2 = run_stage(STAGE_A, AConfig(value=4), {}, tmp_path, force=True)
    assert not a2.cached and a2.key == a1.key
    assert calls(tmp_path) == ["a", "a"]
    replaced = list((tmp_path / "a" / ".replaced").iterdir())
    assert len(replaced) == 1 and (replaced[0] / "value.txt").read_text() == "4"


def test_provenance_is_recorded(tmp_path):
    import json

    a, b = run_chain(tmp_path, AConfig(value=2), BConfig())
    prov = json.loads((Path(b.uri) / "provenance.json").read_text())
    assert prov["stage"] == "b" and prov["code_version"] == "1"
    assert prov["config"] == {"factor": 2}
    # The input's output directory, named relative to the work root (issue 23).
    assert prov["inputs"] == {
        "a": {"key": a.key, "uri": Path(a.uri).relative_to(tmp_path).as_posix()}
    }
    assert prov["libraries"]["numpy"] and prov["libraries"]["pydantic"]
    assert prov["started"] <= prov["finished"]


def test_status_states(tmp_path):
    key1 = stage_key(STAGE_B, BConfig(), {"a": "x"})
    assert stage_status(tmp_path, STAGE_B, key1)["state"] == "missing"
    _, b = run_chain(tmp_path, AConfig(), BConfig(factor=3))
    assert stage_status(tmp_path, STAGE_B, b.key)["state"] == "cached"
    assert stage_status(tmp_path, STAGE_B, key1)["state"] == "stale"
