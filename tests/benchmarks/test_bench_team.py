"""Sharing through object storage: training step time reading a feature store from the S3
server (moto on 127.0.0.1) ÷ from local disk, and pull throughput (MB/s).

The store is the synthetic one of ``test_bench_train`` (C=256, 8x8 context, 7x7 RoI maps).
Loopback S3 has no network latency: on a real object store each chunk read costs a round
trip (~10-50 ms), so read in place only with prefetch and heavy heads, or pull first.

Run: ``.venv/bin/python -m pytest tests/benchmarks/test_bench_team.py -m bench -s``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import fsspec
import pytest
import torch

from featurestore import FeatureStore
from stages.framework import Stage, StageContext, run_stage
from stages.framework.remote_cache import StageCache
from tests.benchmarks.test_bench_train import make_store, step_seconds
from tests.flows.cache_worker import publish_blob


def store_stage(source: Path) -> Stage:
    """A stage whose output is a copy of ``source`` (so a real store is pushed and pulled)."""
    from pydantic import BaseModel

    class Copy(BaseModel):
        name: str = "bench"

    def compute(ctx: StageContext) -> dict:
        shutil.copytree(source, ctx.staging / "features" / "train.zarr")
        return {}

    return Stage(name="extract", code_version="bench", config_type=Copy, compute=compute)


def pull_rate(cache: StageCache, work_root: Path, stage: str, key: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    n = cache.pull(work_root, stage, key)
    seconds = time.perf_counter() - t0
    return n / 1e6, n / 1e6 / seconds


@pytest.mark.bench
def test_bench_store_on_s3(tmp_path: Path, s3_server) -> None:
    torch.set_num_threads(1)
    local = make_store(tmp_path / "bench.zarr")
    bucket = s3_server.new_bucket("bench")
    fs = fsspec.filesystem("s3")
    fs.put(str(tmp_path / "bench.zarr"), f"{bucket}/bench.zarr", recursive=True)
    remote = FeatureStore.open(f"s3://{bucket}/bench.zarr", mode="r")
    print(f"\n{'head':<8} {'prefetch':>8} {'local ms':>9} {'S3 ms':>8} {'S3/local':>9}")
    ratios = {}
    for head in ("linear", "acrn"):
        for prefetch in (0, 2):
            # Separate directories: train() resumes from a finished history in its own.
            a = step_seconds(local, head, preload=False, prefetch=prefetch, tmp=tmp_path / "l")
            b = step_seconds(remote, head, preload=False, prefetch=prefetch, tmp=tmp_path / "r")
            ratios[head, prefetch] = b / a
            print(f"{head:<8} {prefetch:>8} {a * 1e3:>9.2f} {b * 1e3:>8.2f} {b / a:>9.2f}")

    cache = StageCache(f"s3://{bucket}/cache")
    blob = publish_blob(tmp_path / "a", files=32, file_bytes=2 << 20)
    cache.push(tmp_path / "a", "blob", blob.key)
    copy = store_stage(tmp_path / "bench.zarr")
    store_ref = run_stage(copy, copy.config_type(), {}, tmp_path / "a")
    cache.push(tmp_path / "a", "extract", store_ref.key)
    n_chunks = sum(1 for p in (tmp_path / "bench.zarr").rglob("*") if p.is_file())
    for label, stage, key in (("32 x 2 MB files", "blob", blob.key),
                              (f"store, {n_chunks} files", "extract", store_ref.key)):  # fmt: skip
        mb, rate = pull_rate(cache, tmp_path / "b", stage, key)
        print(f"pull {label}: {mb:.1f} MB at {rate:.1f} MB/s")
    assert all(r > 0 for r in ratios.values())
