"""One contract for every backend a feature store can live on (STYLE #9)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from featurestore import (
    FeatureStore,
    KeyframeNotFoundError,
    StoreError,
    export_hdf5,
    import_hdf5,
    store_info,
    store_verify,
)
from featurestore.backend import open_zarr_store
from featurestore.layout import VIDEOS
from tests.featurestore.factories import assert_same, make_video, small_schema


class StoreContract:
    """Behaviour every backend must show. Subclasses provide a ``url`` fixture."""

    @pytest.fixture
    def store(self, url: str) -> FeatureStore:
        return FeatureStore.create(
            url,
            small_schema(),
            provenance={"stage": "extract", "key": "k1"},
            expected_videos=["vid_a", "-vid_b"],
        )

    def _fill(self, store: FeatureStore) -> dict:
        videos = {
            "vid_a": make_video(store.schema, n_keyframes=7, seed=1),
            "-vid_b": make_video(store.schema, n_keyframes=3, seed=2, t0=1500),
        }
        for video_id, feats in videos.items():
            store.write_video(video_id, feats, provenance={"seconds": 1.5})
        return videos

    def test_round_trip(self, store: FeatureStore, url: str) -> None:
        videos = self._fill(store)
        store.finalize()
        reader = FeatureStore.open(url, expect_schema=small_schema())
        assert reader.complete
        assert reader.videos() == ["-vid_b", "vid_a"]
        for video_id, feats in videos.items():
            assert_same(reader.read_video(video_id), feats)
        assert reader.provenance == {"stage": "extract", "key": "k1"}
        assert reader.video_attrs("vid_a")["provenance"] == {"seconds": 1.5}
        assert reader.video_attrs("vid_a")["n_keyframes"] == 7
        assert reader.nbytes() > 0

    def test_read_window_keyframe_pooled(self, store: FeatureStore) -> None:
        feats = self._fill(store)["vid_a"]
        window = store.read_window("vid_a", 904, 906)
        np.testing.assert_array_equal(window.timestamps, [904, 905, 906])
        off = feats.actor_offset
        a0, a1 = off[2], off[5]
        np.testing.assert_array_equal(window.actor_offset, off[2:6] - a0)
        np.testing.assert_array_equal(window.pooled, feats.pooled[a0:a1])
        np.testing.assert_array_equal(window.roi, feats.roi[a0:a1])
        np.testing.assert_array_equal(window.context, feats.context[2:5])
        assert store.read_window("vid_a", 0, 10).n_keyframes == 0
        assert store.read_window("vid_a", 907.5, 2000).n_keyframes == 1

        kf = store.read_keyframe("vid_a", 905)
        np.testing.assert_array_equal(kf.boxes, feats.boxes[off[3] : off[4]])
        np.testing.assert_array_equal(kf.context, feats.context[3])
        with pytest.raises(KeyframeNotFoundError, match=r"'vid_a'.*no keyframe at timestamp 999"):
            store.read_keyframe("vid_a", 999)
        with pytest.raises(KeyError, match="no such video"):
            store.read_keyframe("nope", 902)

        rows = [5, 0, 5, feats.n_actors - 1]
        np.testing.assert_array_equal(store.read_pooled("vid_a", rows), feats.pooled[rows])
        with pytest.raises(StoreError, match="actor rows must be in"):
            store.read_pooled("vid_a", [feats.n_actors])

    def test_read_keyframes_only_the_arrays_asked_for(self, store: FeatureStore) -> None:
        feats = self._fill(store)["vid_a"]
        off = feats.actor_offset
        full, pooled_only, with_roi = (
            store.read_keyframes([("vid_a", 905), ("vid_a", 903)], arrays=arrays)
            for arrays in (None, {"pooled"}, {"roi"})
        )
        for kf, row in zip(full, (3, 1), strict=True):
            np.testing.assert_array_equal(kf.context, feats.context[row])
            np.testing.assert_array_equal(kf.roi, feats.roi[off[row] : off[row + 1]])
        for kf, ref in zip(pooled_only, full, strict=True):
            assert kf.context.size == 0 and kf.roi is None
            np.testing.assert_array_equal(kf.pooled, ref.pooled)  # always read
            np.testing.assert_array_equal(kf.boxes, ref.boxes)
        for kf, ref in zip(with_roi, full, strict=True):
            assert kf.context.size == 0
            np.testing.assert_array_equal(kf.roi, ref.roi)
        with pytest.raises(ValueError, match=r"unknown feature arrays \['contxt'\]"):
            store.read_keyframes([("vid_a", 905)], arrays={"contxt"})

    def test_actor_index(self, store: FeatureStore) -> None:
        videos = self._fill(store)
        vids, kf_rows, actor_rows = store.actor_index()
        assert len(vids) == sum(v.n_actors for v in videos.values())
        for video_id, feats in videos.items():
            sel = vids == video_id
            np.testing.assert_array_equal(actor_rows[sel], np.arange(feats.n_actors))
            counts = np.bincount(kf_rows[sel], minlength=feats.n_keyframes)
            np.testing.assert_array_equal(counts, np.diff(feats.actor_offset))

    def test_verify_catches_deleted_chunk(self, store: FeatureStore, url: str) -> None:
        self._fill(store)
        store.finalize()
        assert store.verify().ok, store.verify()
        key = f"{VIDEOS}/vid_a/context/c/0/0/0/0"
        sync(store.zarr_store.delete(key))
        report = store_verify(url)
        assert not report.ok
        assert any("'vid_a'" in p and "'context'" in p and key in p for p in report.problems)

    def test_corrupt_chunks_are_caught_where_read(self, store: FeatureStore, url: str) -> None:
        """A chunk truncated to half and one with a flipped byte: ``verify`` names both (it
        said OK before the checksum), ``quick`` only checks existence, and reading either
        raises StoreError naming store, video, array and chunk (was ValueError: reshape)."""
        self._fill(store)
        store.finalize()
        proto = default_buffer_prototype()
        truncated = f"{VIDEOS}/vid_a/context/c/0/0/0/0"
        flipped = f"{VIDEOS}/-vid_b/pooled/c/0/0"
        for key, damage in ((truncated, lambda b: b[: len(b) // 2]),
                            (flipped, lambda b: b[:3] + bytes([b[3] ^ 1]) + b[4:])):  # fmt: skip
            data = sync(store.zarr_store.get(key, prototype=proto)).to_bytes()
            sync(store.zarr_store.set(key, proto.buffer.from_bytes(damage(data))))
        report = store_verify(url)
        assert any(truncated in p and "'context'" in p for p in report.problems), report
        assert any(flipped in p and "checksum" in p for p in report.problems), report
        assert store_verify(url, quick=True).ok
        reader = FeatureStore.open(url)
        with pytest.raises(StoreError) as err:
            reader.read_video("vid_a")
        assert str(err.value).startswith(f"store {reader.url!r}, video 'vid_a', array 'context'")
        assert f"chunk {truncated!r}: corrupt" in str(err.value)
        with pytest.raises(StoreError, match=f"video '-vid_b', array 'pooled', chunk '{flipped}'"):
            reader.read_pooled("-vid_b", [0])
        t = int(reader.index("-vid_b")[0][0])
        with pytest.raises(StoreError, match=r"array 'pooled', chunk .*crc32c checksum mismatch"):
            reader.read_keyframes([("-vid_b", t)])

    def test_verify_catches_bad_index_arrays(self, store: FeatureStore, url: str) -> None:
        self._fill(store)
        store.finalize()
        offsets = store.array("vid_a", "actor_offset")
        offsets[1] = offsets[2] + 1  # no longer non-decreasing
        store.array("-vid_b", "timestamps")[:] = [1500, 1500, 1499]
        problems = store_verify(url).problems
        assert any("'vid_a'" in p and "actor_offset is not a CSR" in p for p in problems)
        assert any("'-vid_b'" in p and "timestamps are not sorted" in p for p in problems)

    def test_all_zero_chunks_are_written(self, store: FeatureStore) -> None:
        feats = make_video(store.schema, n_keyframes=4, seed=3)
        feats.context[:] = 0
        store.write_video("vid_a", feats)
        assert sync(store.zarr_store.exists(f"{VIDEOS}/vid_a/context/c/0/0/0/0"))
        assert not [p for p in store.verify().problems if "vid_a" in p]

    def _kill_writer(self, store: FeatureStore, video_id: str) -> None:
        """What a writer killed mid-video leaves: a group without ``complete``, some arrays."""
        group = store._videos.create_group(video_id, attributes={"complete": False})
        group.create_array("timestamps", shape=(3,), dtype="int32")[:] = [1, 2, 3]

    def test_incomplete_video_reported_and_rewritten(self, store: FeatureStore, url: str) -> None:
        store.write_video("vid_a", make_video(store.schema, seed=1))
        self._kill_writer(store, "-vid_b")
        assert store.videos() == ["vid_a"]
        assert store.videos(complete_only=False) == ["-vid_b", "vid_a"]
        report = store.verify()
        assert any("'-vid_b'" in p and "incomplete" in p for p in report.problems)
        with pytest.raises(StoreError, match=r"incomplete videos \['-vid_b'\]"):
            FeatureStore.open(url)
        with pytest.raises(StoreError, match=r"cannot finalize.*incomplete videos \['-vid_b'\]"):
            store.finalize()
        assert FeatureStore.open(url, allow_incomplete=True).videos() == ["vid_a"]
        feats = make_video(store.schema, seed=5)
        store.write_video("-vid_b", feats)  # the killed writer's group is replaced
        assert_same(store.read_video("-vid_b"), feats)
        store.finalize()
        assert FeatureStore.open(url).verify().ok

    def test_complete_video_not_overwritten(self, store: FeatureStore) -> None:
        store.write_video("vid_a", make_video(store.schema, seed=1))
        with pytest.raises(StoreError, match=r"'vid_a'.*already complete"):
            store.write_video("vid_a", make_video(store.schema, seed=2))
        new = make_video(store.schema, seed=2, n_keyframes=2)
        store.write_video("vid_a", new, overwrite=True)
        assert_same(store.read_video("vid_a"), new)

    def test_finalize_names_missing_and_readonly(self, store: FeatureStore, url: str) -> None:
        store.write_video("vid_a", make_video(store.schema, seed=1))
        with pytest.raises(StoreError, match=r"missing videos \['-vid_b'\]"):
            store.finalize()
        with pytest.raises(StoreError, match=r"missing videos \['-vid_b'\]"):
            FeatureStore.open(url)
        reader = FeatureStore.open(url, allow_incomplete=True)
        with pytest.raises(StoreError, match="read-only"):
            reader.write_video("-vid_b", make_video(store.schema))
        store.finalize(expected_videos=["vid_a"])
        with pytest.raises(StoreError, match="finalized"):
            store.write_video("-vid_b", make_video(store.schema))

    def test_schema_mismatch_message(self, store: FeatureStore, url: str) -> None:
        other = small_schema(context_shape=(4, 8, 8), detector_key=None, extra={"pool": "avg"})
        with pytest.raises(StoreError) as info:
            FeatureStore.open(url, mode="a", expect_schema=other)
        text = str(info.value)
        assert "context_shape: [4, 8, 8] != [4, 2, 3]" in text
        assert "detector_key: None != 'det-123'" in text
        assert "extra.pool: 'avg' != 'max'" in text
        assert "pooled_dim" not in text
        with pytest.raises(StoreError, match="context_shape"):
            FeatureStore.create(url, other, provenance={}, exist_ok=True)
        with pytest.raises(StoreError, match="already exists"):
            FeatureStore.create(url, small_schema(), provenance={})
        resumed = FeatureStore.create(url, small_schema(), provenance={}, exist_ok=True)
        assert resumed.mode == "a"

    def test_write_rejects_bad_features(self, store: FeatureStore) -> None:
        feats = make_video(store.schema, seed=1)
        feats.pooled = feats.pooled.astype(np.float32)
        with pytest.raises(StoreError, match=r"video 'vid_a': array 'pooled' has dtype float32"):
            store.write_video("vid_a", feats)
        with pytest.raises(StoreError, match="invalid video id"):
            store.write_video("a/b", make_video(store.schema))
        assert store.videos(complete_only=False) == []

    def test_not_a_store_message(self, url: str) -> None:
        with pytest.raises(StoreError, match=r"is not a bankflow feature store: no zarr\.json"):
            FeatureStore.open(url)
        # A zarr group, but not ours.
        zarr.open_group(open_zarr_store(url, read_only=False), mode="w", attributes={"a": 1})
        with pytest.raises(StoreError, match="is not a bankflow feature store"):
            FeatureStore.open(url)

    def test_hdf5_round_trip(self, store: FeatureStore, url: str, tmp_path: Path) -> None:
        videos = self._fill(store)
        store.finalize()
        h5_path = tmp_path / "bank.h5"
        assert export_hdf5(url, h5_path) == 2
        with h5py.File(h5_path, "r") as h5:
            assert h5["videos/vid_a/pooled"].dtype == np.float16
        copy_url = self.other_url(url)
        copy = import_hdf5(h5_path, copy_url)
        assert copy.root_attrs == FeatureStore.open(url).root_attrs
        assert copy.complete and copy.verify().ok
        for video_id, feats in videos.items():
            assert_same(copy.read_video(video_id), feats)
            assert copy.video_attrs(video_id) == store.video_attrs(video_id)

    def other_url(self, url: str) -> str:
        return url.replace(".zarr", "_copy.zarr")

    def test_store_info(self, store: FeatureStore, url: str) -> None:
        videos = self._fill(store)
        text = store_info(url)
        assert "backbone   test_backbone" in text
        assert f"keyframes  {sum(v.n_keyframes for v in videos.values())}" in text
        assert f"actors     {sum(v.n_actors for v in videos.values())}" in text
        assert "complete   False" in text

    def test_claims(self, store: FeatureStore) -> None:
        first = store.try_claim("vid_a", "w1", ttl_s=60)
        assert first is not None
        assert store.try_claim("vid_a", "w2", ttl_s=60) is None
        lock = json.loads(store._locks.read("vid_a.json"))
        assert lock["owner"] == "w1" and lock["token"] == first.token
        store.write_video("vid_a", make_video(store.schema))
        first.release()
        assert store._locks.read("vid_a.json") is None
        assert store.try_claim("vid_a", "w2") is None  # complete videos are never claimed
        with store.claim("-vid_b", "w2") as claim:
            assert claim is not None
        assert store._locks.read("-vid_b.json") is None

    def test_expired_claim_is_taken_over(self, store: FeatureStore) -> None:
        dead = store.try_claim("vid_a", "killed", ttl_s=0.2)
        assert dead is not None
        dead._stop.set()  # a killed process stops heart-beating
        dead._thread.join()
        assert store.try_claim("vid_a", "w2", ttl_s=0.2) is None
        time.sleep(0.3)
        live = store.try_claim("vid_a", "w2", ttl_s=60)
        assert live is not None and live.owner == "w2"
        dead.release()  # the old owner's release must not delete the new lock
        assert json.loads(store._locks.read("vid_a.json"))["token"] == live.token
        live.release()

    def test_heartbeat_keeps_claim_alive(self, store: FeatureStore) -> None:
        with store.claim("vid_a", "slow", ttl_s=0.3) as claim:
            time.sleep(0.6)  # two TTLs: only the heartbeat keeps it alive
            assert store.try_claim("vid_a", "w2", ttl_s=0.3) is None
            assert claim is not None and not claim.lost


class TestLocalPathStore(StoreContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return str(tmp_path / "features.zarr")


class TestFileUrlStore(StoreContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}/features.zarr"


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://{uuid.uuid4().hex}/features.zarr"


class TestLocalDirectoryNotAStore:
    def test_plain_directory_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "notes.txt").write_text("not features")
        with pytest.raises(StoreError, match=rf"{tmp_path} is not a bankflow feature store"):
            FeatureStore.open(tmp_path)
        with pytest.raises(StoreError, match="is not empty and is not a zarr store"):
            FeatureStore.create(tmp_path, small_schema(), provenance={})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

    def test_import_rejects_corrupt_hdf5(self, tmp_path: Path) -> None:
        store = FeatureStore.create(tmp_path / "a.zarr", small_schema(), provenance={})
        store.write_video("v", make_video(store.schema, seed=1))
        export_hdf5(tmp_path / "a.zarr", tmp_path / "a.h5")
        with h5py.File(tmp_path / "a.h5", "r+") as h5:
            del h5["videos/v/pooled"]
            h5["videos/v/pooled"] = np.zeros((1, 5), np.float16)
        with pytest.raises(StoreError, match=r"video 'v': array 'pooled' has shape \(1, 5\)"):
            import_hdf5(tmp_path / "a.h5", tmp_path / "b.zarr")
        with pytest.raises(StoreError, match="is not a bankflow HDF5 export"):
            with h5py.File(tmp_path / "empty.h5", "w"):
                pass
            import_hdf5(tmp_path / "empty.h5", tmp_path / "c.zarr")


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_chunking_and_compression_follow_create_options(tmp_path: Path, compression: str) -> None:
    schema = small_schema(context_shape=(64, 4, 4))  # 2 kB per keyframe row
    store = FeatureStore.create(
        tmp_path / "s.zarr", schema, provenance={}, chunk_target_bytes=5000, compression=compression
    )
    feats = make_video(schema, n_keyframes=7, seed=9)
    store.write_video("v", feats)
    context = store.array("v", "context")
    assert context.chunks == (3, 64, 4, 4)  # ceil(5000 / 2048) rows
    # Every array ends its chain with a crc32c checksum; zstd only when asked.
    assert isinstance(context.compressors[-1], Crc32cCodec)
    assert any(isinstance(c, ZstdCodec) for c in context.compressors) == (compression == "zstd")
    assert store.array("v", "timestamps").chunks == (7,)  # capped at the array length
    store.finalize()
    reopened = FeatureStore.open(tmp_path / "s.zarr")
    assert reopened.compression == compression and reopened.chunk_target_bytes == 5000
    assert_same(reopened.read_video("v"), feats)
    assert reopened.verify().ok
    with pytest.raises(StoreError, match="compression must be one of"):
        FeatureStore.create(tmp_path / "t.zarr", schema, provenance={}, compression="lz4")
