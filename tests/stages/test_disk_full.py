"""Out of disk space (issue 20, defect 6): one line naming stage, file and bytes, exit 2;
the free-space check covers the whole stage; a rerun with space resumes.

The disk-full case is real: the work root is a 1.2 MB tmpfs mounted in a private mount
namespace (``unshare --mount``; root, or an unprivileged user namespace where allowed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from featurestore import FeatureStore
from stages.extract import stage as extract
from stages.framework import STAGING_DIR, StageError, StageRef, run_stage
from tests.stages.extract_worker import stage_configs, track_input

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "flows" / "tiny.yaml"


def test_free_space_check_covers_every_split(tiny_world: Path, tmp_path: Path, monkeypatch):
    """Free space for either split's store but not for both: refused before anything is
    written (it was checked per split, so the train store was written first)."""
    work = tmp_path / "w"
    tracks: StageRef = track_input(tiny_world, work)
    per_split: list[int] = []
    real = extract.estimate_store_bytes

    def recording(*args, **kwargs) -> int:
        per_split.append(real(*args, **kwargs))
        return per_split[-1]

    monkeypatch.setattr(extract, "estimate_store_bytes", recording)
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 0}
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda _p: usage(10**9, 0, free["bytes"]))
    _, _, cfg = stage_configs(tiny_world)
    with pytest.raises(StageError):
        run_stage(extract.STAGE, cfg, {"track": tracks}, work)
    assert len(per_split) == 2
    free["bytes"] = max(per_split) + 1  # enough for each split alone, not for the stage
    with pytest.raises(StageError, match="allow_low_disk") as info:
        run_stage(extract.STAGE, cfg, {"track": tracks}, work)
    assert "has" in str(info.value) and "free" in str(info.value)
    stores = list((work / "extract" / STAGING_DIR).glob("*/features/*.zarr"))
    assert all(FeatureStore.open(s, allow_incomplete=True).videos() == [] for s in stores)


def _namespace_cmd() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to mount a small tmpfs for this test")
    return ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "-rm"]


SCRIPT = """
set -u
mount -t tmpfs -o size=1200k tmpfs "$SMALL" || exit 90
"$PY" -m flows.cli stage extract --config "$TINY" --work-root "$SMALL/w" \
    --set dataset.root="$WORLD" --set extract.allow_low_disk=true 2>"$OUT/first.err"
echo $? > "$OUT/first.rc"
cat "$SMALL"/w/extract/.staging/*/features/*.zarr/videos/*/zarr.json > "$OUT/videos.json"
mount -o remount,size=16m "$SMALL"
"$PY" -m flows.cli stage extract --config "$TINY" --work-root "$SMALL/w" \
    --set dataset.root="$WORLD" --set extract.allow_low_disk=true 2>"$OUT/second.err"
echo $? > "$OUT/second.rc"
cat "$SMALL"/w/extract/*/COMPLETE.json > "$OUT/complete.json" 2>/dev/null
"""


@pytest.mark.slow
def test_disk_full_mid_write_is_one_line_and_resumes(tmp_path: Path) -> None:
    small, out = tmp_path / "small", tmp_path / "out"
    small.mkdir()
    out.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = {**base, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "home"),
           "SMALL": str(small), "OUT": str(out), "PY": sys.executable, "TINY": str(TINY),
           "WORLD": str(tmp_path / "world")}  # fmt: skip
    done = subprocess.run([*_namespace_cmd(), "sh", "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr[-2000:]}"
    first = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first[-3000:]
    errors = [line for line in first.splitlines() if not line[:2].isdigit()]  # not log lines
    assert len(errors) == 1 and "Traceback" not in first, first[-3000:]
    (line,) = errors
    assert line.startswith("bankflow: error: stage extract: out of disk space writing ")
    assert "/features/train.zarr/videos/" in line and " free, the stage needs about " in line
    # The traceback is kept, in Prefect's log file.
    assert "Traceback" in (tmp_path / "home" / "prefect.log").read_text()
    second = (out / "second.err").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second[-3000:]
    summary = json.loads((out / "complete.json").read_text())["summary"]
    # The videos complete when the disk filled were kept, not recomputed.
    before = (out / "videos.json").read_text().replace(" ", "").count('"complete":true')
    assert sum(s["resumed"] for s in summary.values()) == before
