"""Training reads feature stores and banks in place from the S3 server (``cache.stores:
in_place``): heads, dumps and stage-2 heads come out bit for bit as from local stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.config import load_config
from stages.pipeline import PipelineRun, iter_runs, run_pipeline

TINY_YAML = Path(__file__).parent / "tiny.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def files(root: Path, below: str) -> dict[str, bytes]:
    """Every array chunk below ``root/below`` (zarr.json metadata names its own store)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / below).rglob("*"))
        if p.is_file() and p.name != "zarr.json" and "/locks/" not in p.as_posix()
    }


@pytest.mark.slow
def test_heads_dumps_and_stage2_read_the_store_in_place(tiny_world, s3_server, tmp_path):
    cache = f"s3://{s3_server.new_bucket()}/cache"
    overrides = [
        f"dataset.root={tiny_world}", "world=null", "report=null", f"cache.url={cache}",
        "dump.banks.lfb={from: linear, kind: lfb}",
        "train_bank.runs.lfb_nl={head: lfb, bank: lfb, head_kwargs: {hidden_dim: 16, "
        "num_layers: 1}, window: {before: 4, after: 2}, optim: {epochs: 2, batch_keyframes: 8}}",
    ]  # fmt: skip
    local = run_pipeline(
        PipelineRun(config=load_config(TINY_YAML, overrides), work_root=tmp_path / "a")
    )
    assert all(rec["source"] == "computed" for _, rec in iter_runs(local))

    in_place = load_config(TINY_YAML, [*overrides, "cache.stores=in_place", "cache.push=false"])
    remote = run_pipeline(PipelineRun(
        config=in_place, work_root=tmp_path / "b", until="train_bank",
        force=frozenset({"train", "train_bank"}),
    ))  # fmt: skip
    runs = dict(iter_runs(remote))
    assert runs["extract"]["source"] == "remote" and runs["extract"]["uri"].startswith(cache)
    assert runs["dump:lfb"]["source"] == "remote" and runs["dump:lfb"]["uri"].startswith(cache)
    assert runs["train:linear"]["source"] == "computed"
    assert runs["train_bank:lfb_nl"]["source"] == "computed"
    assert not (tmp_path / "b" / "extract").exists() and not (tmp_path / "b" / "dump").exists()
    for name in ("train:linear", "train_bank:lfb_nl"):
        key = runs[name]["key"]
        stage = name.split(":")[0]
        a = (tmp_path / "a" / stage / key / "head.pt").read_bytes()
        b = (tmp_path / "b" / stage / key / "head.pt").read_bytes()
        assert a == b, name

    # A dump computed over the remote store: the same bank, chunk for chunk.
    dumped = run_pipeline(PipelineRun(
        config=in_place, work_root=tmp_path / "c", until="dump", force=frozenset({"dump"}),
    ))  # fmt: skip
    runs = dict(iter_runs(dumped))
    assert runs["dump:lfb"]["source"] == "computed" and runs["extract"]["source"] == "remote"
    key = runs["dump:lfb"]["key"]
    bank_a = files(tmp_path / "a" / "dump" / key, "banks")
    bank_c = files(tmp_path / "c" / "dump" / key, "banks")
    assert bank_a and bank_a == bank_c
