"""Chunks of a local store read as files (issue 22, item 4): the same values as zarr gives,
the same checks (size, crc32c, presence), and zarr still reads what the file path cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import featurestore.rawread
from featurestore import FeatureStore, StoreError
from featurestore.layout import VIDEOS
from tests.featurestore.factories import assert_same, make_video, small_schema


def _store(url: Path, compression: str = "none", n_videos: int = 3) -> dict:
    store = FeatureStore.create(
        url, small_schema(), provenance={}, expected_videos=[f"v{i}" for i in range(n_videos)],
        chunk_target_bytes=200, compression=compression,  # several rows/chunks per array
    )  # fmt: skip
    videos = {f"v{i}": make_video(store.schema, n_keyframes=9, seed=i) for i in range(n_videos)}
    for video_id, feats in videos.items():
        store.write_video(video_id, feats)
    store.finalize()
    return videos


def _zarr_rows(url: Path, video_id: str, name: str, start: int, stop: int) -> np.ndarray:
    return zarr.open_array(url / VIDEOS / video_id / name, mode="r")[start:stop]


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_reads_equal_zarr(tmp_path: Path, compression: str, monkeypatch) -> None:
    """Plain chunks go the file path, zstd ones through zarr; both give what was written,
    for whole videos, windows and shuffled batches (with and without the thread pool)."""
    url = tmp_path / "s.zarr"
    videos = _store(url, compression)
    reader = FeatureStore.open(url)
    assert (reader._raw("v0", "context") is not None) == (compression == "none")
    for video_id, feats in videos.items():
        assert_same(reader.read_video(video_id), feats)
        window = reader.read_window(video_id, 903, 906)
        assert window.timestamps.tolist() == [903, 904, 905, 906]
        np.testing.assert_array_equal(window.roi, _zarr_rows(url, video_id, "roi", *[
            int(feats.actor_offset[1]), int(feats.actor_offset[5])]))  # fmt: skip
    items = [(v, 902 + k) for v in videos for k in range(9)]
    order = np.random.default_rng(0).permutation(len(items))
    for pool_from in (10**9, 1):  # serial, then every batch through the thread pool
        monkeypatch.setattr(featurestore.rawread, "_POOL_MIN_CHUNKS", pool_from)
        monkeypatch.setattr(featurestore.rawread, "_POOL_MIN_BYTES", 0)
        batch = reader.read_keyframes([items[i] for i in order])
        for kf, i in zip(batch, order, strict=True):
            video_id, t = items[i]
            want = videos[video_id].keyframe(video_id, t - 902)
            assert (kf.video_id, kf.timestamp) == (video_id, t)
            for name in ("context", "pooled", "roi", "boxes", "track"):
                got = getattr(kf, name)
                assert got.dtype == getattr(want, name).dtype, name
                np.testing.assert_array_equal(got, getattr(want, name), err_msg=name)
            kf.context += 1  # a caller may work in place on what it was given
    assert reader.read_keyframes([items[0]], arrays={"pooled"})[0].roi is None


def _chunk_file(url: Path, video_id: str, name: str, index: int) -> Path:
    ndim = len(zarr.open_array(url / VIDEOS / video_id / name, mode="r").shape)
    return url / VIDEOS / video_id / name / "c" / str(index) / Path(*["0"] * (ndim - 1))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:-1] + bytes([b[-1] ^ 0x10]), "crc32c checksum mismatch"),
        (lambda b: b[: len(b) // 2], "cannot be decoded"),
        (lambda b: b + b"\0", "cannot be decoded"),
        (None, "missing"),
    ],
)
def test_bad_chunk_names_store_video_array_chunk(tmp_path: Path, damage, reason) -> None:
    """A flipped byte, a short or long chunk file and a deleted one each raise StoreError
    naming the store, video, array and chunk key; chunks of other arrays still read."""
    url = tmp_path / "s.zarr"
    videos = _store(url)
    path = _chunk_file(url, "v1", "roi", 1)
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))
    reader = FeatureStore.open(url)
    key = f"{VIDEOS}/v1/roi/c/1/0/0/0"
    with pytest.raises(StoreError) as err:
        reader.read_video("v1")
    message = str(err.value)
    assert message.startswith(f"store {reader.url!r}, video 'v1', array 'roi', chunk {key!r}")
    assert reason in message and "bankflow store verify" in message, message
    items = [("v1", 902 + k) for k in range(9)]
    with pytest.raises(StoreError, match=f"chunk '{key}': corrupt"):
        reader.read_keyframes(items)
    got = reader.read_keyframes(items, arrays={"context"})  # roi not read: no error
    np.testing.assert_array_equal(np.stack([k.context for k in got]), videos["v1"].context)


def test_forked_child_reads_through_its_own_pool(tmp_path: Path, monkeypatch) -> None:
    """A child forked after the parent used the reader pool reads (it would hang on the
    parent's pool, whose threads it does not have)."""
    import multiprocessing

    url = tmp_path / "s.zarr"
    videos = _store(url)
    monkeypatch.setattr(featurestore.rawread, "_POOL_MIN_CHUNKS", 1)
    monkeypatch.setattr(featurestore.rawread, "_POOL_MIN_BYTES", 0)
    reader = FeatureStore.open(url)
    assert_same(reader.read_video("v0"), videos["v0"])  # the parent's pool now exists
    child = multiprocessing.get_context("fork").Process(target=reader.read_video, args=("v1",))
    child.start()
    child.join(30)
    if child.exitcode is None:  # hung
        child.kill()
        child.join()
    assert child.exitcode == 0, child.exitcode


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_read_keyframes_by_video_equals_read_keyframes(tmp_path: Path, compression: str) -> None:
    """Preloading reads each video's keyframe range at once: the same keyframes, values and
    dtypes, in the order asked, as one read per keyframe; a keyframe's arrays are its own."""
    url = tmp_path / "s.zarr"
    videos = _store(url, compression)
    reader = FeatureStore.open(url)
    items = [(v, 902 + k) for v in videos for k in range(9) if (k + len(v)) % 3]  # gaps
    order = np.random.default_rng(1).permutation(len(items))
    asked = [items[i] for i in order]
    for arrays in (None, {"pooled"}, {"context", "roi"}):
        want = reader.read_keyframes(asked, arrays=arrays)
        got = reader.read_keyframes_by_video(asked, arrays=arrays)
        assert [(k.video_id, k.timestamp) for k in got] == asked
        for g, w in zip(got, want, strict=True):
            for name in ("context", "pooled", "roi", "roi_t", "boxes", "scores", "track"):
                a, b = getattr(g, name), getattr(w, name)
                assert (a is None) == (b is None), name
                if a is not None:
                    assert a.dtype == b.dtype and a.shape == b.shape, name
                    np.testing.assert_array_equal(a, b, err_msg=name)
    got = reader.read_keyframes_by_video(asked[:2])
    before = got[1].pooled.copy()
    got[0].pooled += 1
    np.testing.assert_array_equal(got[1].pooled, before)
    with pytest.raises(StoreError, match="no keyframe at timestamp 999"):
        reader.read_keyframes_by_video([("v0", 999)])
