"""BANKFLOW_RESULTS on object storage: Prefect's cache records on the moto S3 server serve
a second process's flow run (the storage block is saved server-side, holding only a URL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "tiny.yaml"


@pytest.mark.slow
def test_flow_runs_share_cache_records_on_s3(tiny_world, s3_server, tmp_path):
    bucket = s3_server.new_bucket("results")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), BANKFLOW_RESULTS=f"s3://{bucket}/results",
               PREFECT_LOGGING_LEVEL="INFO")  # fmt: skip
    args = [sys.executable, "-m", "flows.cli", "stage", "track", "--config", str(TINY),
            "--work-root", str(tmp_path / "w"), "--set", f"dataset.root={tiny_world}",
            "--set", "world=null"]  # fmt: skip
    # Prefect's own lines (task runs, Cached states) go to the run's log file, not the
    # terminal (flows/console.py): read what each run appended to it.
    log_file = tmp_path / "w" / ".prefect" / "prefect.log"
    outputs = []
    for _ in range(2):
        before = log_file.read_text() if log_file.exists() else ""
        run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        outputs.append(run.stdout + run.stderr + log_file.read_text()[len(before) :])
    first, second = outputs
    assert "Task run 'track-" in first and "Cached(type=COMPLETED)" not in first
    finished = [x for x in second.splitlines() if "Task run '" in x and "Finished" in x]
    assert len(finished) == 2 and all("Cached(type=COMPLETED)" in x for x in finished), second
    fs = fsspec.filesystem("s3")
    records = sorted(p.rsplit("/", 1)[-1].split("-")[0] for p in fs.find(f"{bucket}/results"))
    assert records == ["detect", "track"]
    assert not (tmp_path / "w" / ".prefect" / "results").exists()  # nothing went local
    secret = s3_server.env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in first + second
    for path in (tmp_path / "w").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
