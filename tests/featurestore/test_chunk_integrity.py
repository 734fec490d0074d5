"""Checksummed chunks (issue 20, defect 3): old stores still read, banks checked too, and
``bankflow store verify`` decodes every chunk (``--quick``: existence only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import featurestore.store
from featurestore import FeatureStore, StoreError, store_verify
from featurestore.backend import open_zarr_store
from featurestore.banks import BankStore
from featurestore.chunks import has_checksum
from featurestore.layout import VIDEOS
from flows.cli import main as bankflow
from tests.featurestore.factories import assert_same, make_video, small_schema

PROTO = default_buffer_prototype()


def _damage(url: Path, key: str) -> None:
    """Truncate a stored chunk to half its bytes (what a full disk or a cut copy leaves)."""
    zstore = open_zarr_store(url, read_only=False)
    data = sync(zstore.get(key, prototype=PROTO)).to_bytes()
    sync(zstore.set(key, PROTO.buffer.from_bytes(data[: len(data) // 2])))


def test_store_written_without_checksum_still_reads(tmp_path: Path, monkeypatch) -> None:
    """A store written before the checksum (plain chunks, the old codec chain) opens, reads
    and verifies; a truncated chunk of it is still named (by its wrong length)."""
    url = tmp_path / "old.zarr"
    with monkeypatch.context() as m:
        m.setattr(featurestore.store, "chunk_codecs", lambda compression: None)
        old = FeatureStore.create(url, small_schema(), provenance={}, expected_videos=["v"])
        video = make_video(old.schema, n_keyframes=5, seed=4)
        old.write_video("v", video)
        old.finalize()
    reader = FeatureStore.open(url)
    assert not has_checksum(reader.array("v", "context"))
    assert_same(reader.read_video("v"), video)
    assert reader.verify().ok
    key = f"{VIDEOS}/v/context/c/0/0/0/0"
    _damage(url, key)
    with pytest.raises(StoreError, match=f"video 'v', array 'context', chunk '{key}': corrupt"):
        FeatureStore.open(url).read_video("v")
    assert any(key in p for p in store_verify(url).problems)


def _bank(url: Path) -> BankStore:
    bank = BankStore.create(url, kind="lfb", arrays={"features": (6,)}, provenance={},
                            expected_videos=["v"], chunk_target_bytes=24)  # fmt: skip
    rng = np.random.default_rng(0)
    bank.write_video("v", timestamps=np.arange(3), actor_offset=np.array([0, 2, 3, 5]),
                     track=np.arange(5, dtype=np.int32),
                     arrays={"features": rng.standard_normal((5, 6))}, video_key="k")  # fmt: skip
    bank.finalize()
    return bank


def test_corrupt_bank_chunk_is_caught(tmp_path: Path) -> None:
    bank = _bank(tmp_path / "b.zarr")
    assert has_checksum(bank.array("v", "features")) and bank.verify() == []
    key = f"{VIDEOS}/v/features/c/1/0"  # rows 2..3 (24-byte chunks of 12-byte rows)
    _damage(tmp_path / "b.zarr", key)
    problems = BankStore.open(tmp_path / "b.zarr").verify()
    assert any(key in p and "checksum" in p for p in problems), problems
    assert BankStore.open(tmp_path / "b.zarr").verify(quick=True) == []
    reader = BankStore.open(tmp_path / "b.zarr")
    assert reader.read_rows([("v", 0, 2)])[0]["features"].shape == (2, 6)  # other chunks read
    with pytest.raises(StoreError, match=f"video 'v', array 'features', chunk '{key}'"):
        reader.read_rows([("v", 1, 4)])


def test_cli_store_verify_decodes_every_chunk(tmp_path: Path, capsys) -> None:
    url = tmp_path / "s.zarr"
    store = FeatureStore.create(url, small_schema(), provenance={}, expected_videos=["v"])
    store.write_video("v", make_video(store.schema, seed=5))
    store.finalize()
    _bank(tmp_path / "b.zarr")
    for target in (url, tmp_path / "b.zarr"):
        assert bankflow(["store", "verify", str(target)]) == 0
        assert capsys.readouterr().out.strip() == "ok"
    key = f"{VIDEOS}/v/pooled/c/0/0"
    _damage(url, key)
    _damage(tmp_path / "b.zarr", f"{VIDEOS}/v/track/c/0")
    assert bankflow(["store", "verify", str(url), "--quick"]) == 0  # every chunk exists
    capsys.readouterr()
    assert bankflow(["store", "verify", str(url)]) == 1
    out = capsys.readouterr().out
    assert f"video 'v': array 'pooled' chunk {key}: crc32c checksum mismatch" in out
    assert bankflow(["store", "verify", str(tmp_path / "b.zarr")]) == 1
    assert "track chunk videos/v/track/c/0: crc32c checksum mismatch" in capsys.readouterr().out
    # A store error on the command line is one line and exit status 2, not a traceback.
    assert bankflow(["store", "export", str(url), str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"chunk '{key}': corrupt" in err, err
    assert bankflow(["store", "info", str(tmp_path / "nothing")]) == 2
    assert "is not a bankflow feature store" in capsys.readouterr().err


def test_bank_rows_read_as_files_equal_zarr(tmp_path: Path) -> None:
    """A local bank's plain chunks are read as files (featurestore.rawread), giving what
    zarr gives for every row range, chunk-aligned or not."""
    _bank(tmp_path / "b.zarr")
    reader = BankStore.open(tmp_path / "b.zarr")
    assert reader._raw("v", "features") is not None
    whole = reader.read_video("v")["features"]  # through zarr
    ranges = [("v", a0, a1) for a0 in range(6) for a1 in range(a0, 6)]
    for (_, a0, a1), got in zip(ranges, reader.read_rows(ranges), strict=True):
        assert got["features"].dtype == np.float16 and got["features"].shape == (a1 - a0, 6)
        np.testing.assert_array_equal(got["features"], whole[a0:a1])
