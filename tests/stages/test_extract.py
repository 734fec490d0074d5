"""The extract stage on the tiny world with a very small SlowFast (tests/flows/tiny.yaml).

Covers resuming a SIGKILLed extraction (bitwise equal to an uninterrupted run), two
processes sharing one extraction, bad inputs (undecodable video, foreign staging store,
a directory that is not a store, low disk), ragged keyframes (no actor, 100 actors, boxes
at the image border) and the per-video provenance (seconds, decoded frames).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from featurestore import FeatureStore, StoreSchema
from featurestore.backend import LockFiles
from stages.data import Dataset
from stages.detect.track import ACTORS_FILE, read_actors
from stages.extract import stage as extract
from stages.extract import video as extract_video
from stages.extract import workers as extract_workers
from stages.framework import (
    COMPLETE_MARKER,
    STAGING_DIR,
    StageError,
    StageRef,
    read_output,
    run_stage,
    stage_key,
)
from stages.video import ClipSpec, VideoReader, center_frame
from tests.stages.extract_worker import stage_configs, track_input

REPO = Path(__file__).resolve().parents[2]
ARRAYS = ("timestamps", "actor_offset", "context", "boxes", "scores", "track", "pooled")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Pin torch to one thread, as the worker processes are: CPU convolutions are bitwise
    reproducible for a fixed thread count, not across thread counts."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tracks(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> StageRef:
    """The track stage's output on the tiny world (extract's input)."""
    return track_input(tiny_world, tmp_path_factory.mktemp("extract_inputs"))


@pytest.fixture(scope="module")
def reference(tiny_world: Path, tracks: StageRef, tmp_path_factory) -> StageRef:
    """An uninterrupted single-process extraction of train and val, one torch thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, _, cfg = stage_configs(tiny_world)
        return run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path_factory.mktemp("ref"))
    finally:
        torch.set_num_threads(before)


def _staging_store(work_root: Path, key: str, split: str) -> Path:
    return extract.store_path(work_root / "extract" / STAGING_DIR / key, split)


def _assert_same_store(got: Path, want: Path) -> None:
    """Same videos, every array bitwise equal (attributes with timings may differ)."""
    a, b = FeatureStore.open(got), FeatureStore.open(want)
    assert a.videos() == b.videos() == sorted(b.expected_videos or [])
    assert a.schema == b.schema
    for video_id in b.videos():
        fa, fb = a.read_video(video_id).arrays(), b.read_video(video_id).arrays()
        assert sorted(fa) == sorted(fb)
        for name in fb:
            assert fa[name].dtype == fb[name].dtype, (video_id, name)
            assert np.array_equal(fa[name], fb[name]), (video_id, name)
        want_attrs = b.video_attrs(video_id)
        got_attrs = a.video_attrs(video_id)
        for key in ("complete", "n_keyframes", "n_actors"):
            assert got_attrs[key] == want_attrs[key]
    assert a.verify().ok


def _worker(world: Path, work_root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stages.extract_worker", str(world), str(work_root), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


# ---------------------------------------------------------------- progress and provenance


def test_progress_provenance_and_projected_size(
    tiny_world: Path, tracks: StageRef, tmp_path: Path, caplog, one_thread
) -> None:
    _, _, cfg = stage_configs(tiny_world, splits=["train"])
    with caplog.at_level(logging.INFO, logger="bankflow"):
        ref = run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path)
    store = FeatureStore.open(extract.store_path(ref.uri, "train"))
    actors = read_actors(tracks.uri, "train")
    video_of = np.asarray(actors["video"].to_pylist())
    time_of = actors["timestamp"].to_numpy()
    videos = sorted(set(video_of.tolist()))
    assert store.videos() == videos
    assert ref.summary["train"]["extracted"] == len(videos)
    assert ref.summary["train"]["resumed"] == 0
    assert "projected store size" in caplog.text
    for i, video_id in enumerate(videos, 1):
        assert f"extract train: {video_id} ({i}/{len(videos)})" in caplog.text

    ex = cfg.extract
    spec = ClipSpec(num_frames=ex.num_frames, stride=ex.frame_stride, short_side=ex.short_side)
    dataset = Dataset.open(cfg.dataset)
    for video_id in videos:
        prov = store.video_attrs(video_id)["provenance"]
        assert prov["seconds"] > 0
        times = np.unique(time_of[video_of == video_id])
        with VideoReader(dataset.video_path(video_id), short_side=ex.short_side) as reader:
            frames = set()
            for t in times:
                c = center_frame(float(t), dataset.timestamp_offset, reader.fps)
                frames.update(spec.frame_indices(c, reader.num_frames, reader.fps).tolist())
        assert prov["decoded_frames"] == len(frames)
        assert store.read_video(video_id).timestamps.tolist() == times.tolist()
    assert not any(Path(store.url, "locks").glob("*.json"))  # every claim released
    # Nothing of the published key stays in .staging: not its dir, not its publish lock.
    assert list((tmp_path / "extract" / STAGING_DIR).iterdir()) == []


# ---------------------------------------------------------------- killed and restarted


@pytest.mark.slow
def test_killed_extraction_resumes_bitwise_equal(
    tiny_world: Path, tracks: StageRef, reference: StageRef, tmp_path: Path, one_thread
) -> None:
    work = tmp_path / "work"
    _, _, cfg = stage_configs(tiny_world)
    key = stage_key(extract.STAGE, cfg, {"track": tracks})
    staging = _staging_store(work, key, "train")
    proc = _worker(tiny_world, work)
    done: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not done and proc.poll() is None and time.monotonic() < deadline:
            if (staging / "zarr.json").is_file():
                probe = FeatureStore.open(staging, mode="r", allow_incomplete=True)
                done = probe.videos()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert done, f"the worker never completed a video: {err[-2000:]}"
    killed = FeatureStore.open(staging, mode="r", allow_incomplete=True)
    assert not killed.complete
    assert read_output(work, "extract", key) is None

    ref = run_stage(extract.STAGE, cfg, {"track": tracks}, work)
    assert ref.key == reference.key == key
    resumed = sum(s["resumed"] for s in ref.summary.values())
    extracted = sum(s["extracted"] for s in ref.summary.values())
    assert ref.summary["train"]["resumed"] >= 1  # the videos complete at the kill
    assert extracted >= 1 and resumed + extracted == 4
    for split in ("train", "val"):
        _assert_same_store(
            extract.store_path(ref.uri, split), extract.store_path(reference.uri, split)
        )
        assert not any(Path(extract.store_path(ref.uri, split), "locks").glob("*.json"))


# ---------------------------------------------------------------- two processes at once


@pytest.mark.slow
def test_two_processes_extract_each_video_once(
    tiny_world: Path, tracks: StageRef, reference: StageRef, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    track_input(tiny_world, work)  # so both workers find detect/track cached
    barrier = tmp_path / "barrier"
    procs = [_worker(tiny_world, work, "--barrier", str(barrier)) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    refs = [StageRef.model_validate_json(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert refs[0].uri == refs[1].uri and refs[0].digest == refs[1].digest
    for _, err in outputs:  # both really computed (neither found a published output)
        assert f"stage extract: computing key {refs[0].key}" in err
    logs = "".join(err for _, err in outputs)
    for split in ("train", "val"):
        store = FeatureStore.open(extract.store_path(refs[0].uri, split))
        for video_id in store.videos():
            assert logs.count(f"extract {split}: {video_id} (") == 1, video_id
        _assert_same_store(store.url, extract.store_path(reference.uri, split))
    published = read_output(work, "extract", refs[0].key)  # manifest still matches
    assert published is not None and published.digest == refs[0].digest
    assert not (work / "extract" / STAGING_DIR / refs[0].key).exists()


def test_lock_of_a_dead_local_process_is_broken(tmp_path: Path) -> None:
    locks = LockFiles(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = extract.socket.gethostname()
    for name, pid in [("dead.json", int(dead.stdout)), ("alive.json", os.getppid())]:
        locks.create_exclusive(name, json.dumps({"host": host, "pid": pid}).encode())
    locks.create_exclusive("remote.json", json.dumps({"host": "elsewhere", "pid": 1}).encode())
    assert extract_workers._break_lock_if_dead(locks, "dead.json") is not None
    assert locks.read("dead.json") is None
    for name in ("alive.json", "remote.json"):
        extract_workers._break_lock_if_dead(locks, name)
        assert locks.read(name) is not None, name


def test_a_lock_file_is_never_seen_half_written(tmp_path: Path) -> None:
    """A reader racing the creation of a lock sees nothing or all of it: a partial lock is
    neither parseable nor breakable, and would hold its key until a timeout."""
    locks = LockFiles(tmp_path)
    payload = json.dumps({"pid": os.getpid(), "pad": "x" * (1 << 22)}).encode()  # 4 MiB
    partial: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = locks.read("k.json")
            if data is not None and data != payload:
                partial.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(30):
            assert locks.create_exclusive("k.json", payload)
            assert not locks.create_exclusive("k.json", b"{}")  # still exclusive
            locks.delete("k.json")
    finally:
        stop.set()
        reader.join()
    assert partial == []
    assert locks.names() == []  # no temporary file left


# ---------------------------------------------------------------- bad input


def test_undecodable_video_is_named(tiny_world: Path, tmp_path: Path, one_thread) -> None:
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    bad = world / "videos" / "w0_train_01.mp4"
    bad.write_bytes(b"this is not an mp4 file " * 100)
    work = tmp_path / "work"
    tracks = track_input(world, work)
    _, _, cfg = stage_configs(
        world,
        splits=["train"],
    )
    with pytest.raises(StageError) as info:
        run_stage(extract.STAGE, cfg, {"track": tracks}, work)
    message = str(info.value)
    assert "w0_train_01" in message and str(bad) in message
    assert "not a readable video" in message
    # The good video before it stays complete in the staging store for a rerun.
    key = stage_key(extract.STAGE, cfg, {"track": tracks})
    partial = FeatureStore.open(_staging_store(work, key, "train"), allow_incomplete=True)
    assert partial.videos() == ["w0_train_00"]
    assert not any(Path(partial.url, "locks").glob("*.json"))  # no claim left behind


def test_a_failed_backbone_releases_the_claim_decoded_ahead(
    tiny_world: Path, tracks: StageRef, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """The decode thread claims and decodes the next video while the backbone runs; when
    the backbone fails, that claim is released too (a rerun must not wait for it)."""
    _, _, cfg = stage_configs(tiny_world, splits=["train"])

    def fail(self, x):
        raise ValueError("the backbone failed")

    monkeypatch.setattr(extract_video.FeatureCollector, "add", fail)
    with pytest.raises(StageError, match=r"w0_train_00.*the backbone failed"):
        run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path)
    key = stage_key(extract.STAGE, cfg, {"track": tracks})
    staging = _staging_store(tmp_path, key, "train")
    assert FeatureStore.open(staging, allow_incomplete=True).videos() == []
    assert not any(Path(staging, "locks").glob("*.json"))  # both claims released


def test_staging_store_with_another_schema_is_refused(
    tiny_world: Path, tracks: StageRef, tmp_path: Path
) -> None:
    _, _, cfg = stage_configs(tiny_world, splits=["train"])
    key = stage_key(extract.STAGE, cfg, {"track": tracks})
    foreign = StoreSchema(
        backbone="slowfast_r50", weights_sha256="0" * 64, detector_key=None,
        clip={"frames": 32, "stride": 2, "fps": 30.0, "short_side": 256},
        context_shape=(2304, 16, 22), pooled_dim=2304,
    )  # fmt: skip
    path = _staging_store(tmp_path, key, "train")
    FeatureStore.create(path, foreign, provenance={})
    with pytest.raises(StageError, match="different schema") as info:
        run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "backbone: 'slowfast_tiny' != 'slowfast_r50'" in message
    assert "weights_sha256" in message and "pooled_dim" in message


def test_directory_that_is_not_a_store_is_refused(
    tiny_world: Path, tracks: StageRef, tmp_path: Path
) -> None:
    _, _, cfg = stage_configs(tiny_world, splits=["train"])
    key = stage_key(extract.STAGE, cfg, {"track": tracks})
    path = _staging_store(tmp_path, key, "train")
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("not a zarr store")
    with pytest.raises(StageError, match="is not a zarr store") as info:
        run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path)
    assert str(path) in str(info.value)


def test_low_disk_is_refused_unless_allowed(
    tiny_world: Path, tracks: StageRef, tmp_path: Path, monkeypatch, caplog
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda _path: usage(10**6, 10**6, 1000))
    _, _, cfg = stage_configs(tiny_world, splits=["train"])
    with pytest.raises(StageError, match="allow_low_disk") as info:
        run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path)
    assert "has 1.0 kB free" in str(info.value)
    with caplog.at_level(logging.INFO, logger="bankflow.extract"):
        extract._check_disk(tmp_path / "target", 5 * 10**6, allow=True)
    assert "projected store size 5.0 MB, free 1.0 kB" in caplog.text


# ---------------------------------------------------------------- ragged keyframes


def _custom_tracks(tracks: StageRef, table: pa.Table, out: Path, key: str) -> StageRef:
    """A published-looking track output holding ``table`` (extract reads only the parquet)."""
    out.mkdir(parents=True)
    pq.write_table(table, out / ACTORS_FILE)
    data = (out / ACTORS_FILE).read_bytes()  # readers check the manifest's sha256
    entry = [ACTORS_FILE, len(data), hashlib.sha256(data).hexdigest()]
    (out / COMPLETE_MARKER).write_text(json.dumps({"manifest": [entry]}))
    return StageRef(stage="track", key=key, uri=str(out), digest=key)


def test_keyframes_without_with_many_and_with_border_actors(
    tiny_world: Path, tracks: StageRef, reference: StageRef, tmp_path: Path, one_thread
) -> None:
    video = "w0_train_00"
    table = read_actors(tracks.uri, "train")
    table = table.filter(pa.compute.equal(table["video"], video))
    times = sorted(set(table["timestamp"].to_pylist()))
    empty, crowded, border = times[1], times[3], times[5]
    rows = [r for r in table.to_pylist() if r["timestamp"] not in (empty, crowded, border)]
    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1, size=(100, 2, 2)), axis=1)  # (100, lo/hi, x/y)
    for i, ((x1, y1), (x2, y2)) in enumerate(corners.tolist()):
        rows.append(dict(split="train", video=video, timestamp=crowded, x1=x1, y1=y1, x2=x2,
                         y2=y2, score=1.0 - i / 200, track=1000 + i, source="det"))  # fmt: skip
    border_boxes = [
        (0, 0, 1, 1),
        (0.99, 0, 1, 1),
        (0, 0.99, 1, 1),
        (0.99, 0.99, 1, 1),
        (1, 1, 1, 1),
    ]
    for i, (x1, y1, x2, y2) in enumerate(border_boxes):
        rows.append(dict(split="train", video=video, timestamp=border, x1=x1, y1=y1, x2=x2,
                         y2=y2, score=0.5, track=2000 + i, source="det"))  # fmt: skip
    rows.sort(key=lambda r: r["timestamp"])
    custom = _custom_tracks(
        tracks, pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "tracks", "edge0"
    )
    _, _, cfg = stage_configs(tiny_world, splits=["train"])
    ref = run_stage(extract.STAGE, cfg, {"track": custom}, tmp_path / "work")
    feats = FeatureStore.open(extract.store_path(ref.uri, "train")).read_video(video)

    # No actor: the keyframe is deliberately absent.
    assert feats.timestamps.tolist() == [t for t in times if t != empty]
    counts = dict(zip(feats.timestamps.tolist(), np.diff(feats.actor_offset).tolist(), strict=True))
    assert counts[crowded] == 100 and counts[border] == len(border_boxes)
    assert feats.actor_offset[-1] == len(rows) == feats.pooled.shape[0]
    k = feats.timestamps.tolist().index(crowded)
    a0, a1 = feats.actor_offset[k], feats.actor_offset[k + 1]
    np.testing.assert_array_equal(feats.boxes[a0:a1], corners.reshape(100, 4).astype(np.float32))
    np.testing.assert_array_equal(feats.track[a0:a1], np.arange(1000, 1100))
    assert np.isfinite(feats.pooled.astype(np.float32)).all()
    assert np.isfinite(feats.context.astype(np.float32)).all()
    k = feats.timestamps.tolist().index(border)
    whole = feats.pooled[feats.actor_offset[k]].astype(np.float32)  # the (0, 0, 1, 1) box
    assert np.abs(whole).max() > 0

    # Keyframes left alone keep their features (batches differ: equal up to f16 rounding).
    want = FeatureStore.open(extract.store_path(reference.uri, "train")).read_video(video)
    for t in times:
        if t in (empty, crowded, border):
            continue
        i, j = feats.timestamps.tolist().index(t), want.timestamps.tolist().index(t)
        np.testing.assert_allclose(
            feats.context[i].astype(np.float32), want.context[j].astype(np.float32),
            rtol=1e-2, atol=1e-2,
        )  # fmt: skip
        got = feats.pooled[feats.actor_offset[i] : feats.actor_offset[i + 1]]
        ref_pooled = want.pooled[want.actor_offset[j] : want.actor_offset[j + 1]]
        np.testing.assert_allclose(got.astype(np.float32), ref_pooled.astype(np.float32),
                                   rtol=1e-2, atol=1e-2)  # fmt: skip


def test_bf16_extraction_stays_fp16_and_close_to_fp32(
    tiny_world: Path, tracks: StageRef, reference: StageRef, tmp_path: Path, one_thread
) -> None:
    """bf16 autocast of the backbone: another key, fp16 arrays, features close to fp32's."""
    _, _, cfg = stage_configs(tiny_world)
    cfg = cfg.model_copy(update={"extract": cfg.extract.model_copy(update={"precision": "bf16"})})
    assert stage_key(extract.STAGE, cfg, {"track": tracks}) != reference.key
    ref = run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path)
    a = FeatureStore.open(extract.store_path(ref.uri, "val"))
    b = FeatureStore.open(extract.store_path(reference.uri, "val"))
    worst = 0.0
    for video_id in b.videos():
        fa, fb = a.read_video(video_id).arrays(), b.read_video(video_id).arrays()
        for name in ("pooled", "context"):
            assert fa[name].dtype == fb[name].dtype == np.float16
            x, y = fa[name].astype(np.float32), fb[name].astype(np.float32)
            worst = max(worst, float(np.abs(x - y).max() / (np.abs(y).max() + 1e-6)))
        np.testing.assert_array_equal(fa["boxes"], fb["boxes"])
    print(f"bf16 vs fp32 extraction: max |diff| / max |fp32| = {worst:.3g}")
    # bf16 keeps 8 mantissa bits (relative error 2^-9 per rounding) through a few layers.
    assert 0 < worst < 0.05


def test_pool_thread_gives_the_same_store_and_names_the_video_on_failure(
    tiny_world: Path, tracks: StageRef, reference: StageRef, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """RoIAlign and the casts on the collector's pool thread (as on an accelerator) write
    the same stores bit for bit; an error there fails the stage naming the video."""
    _, _, cfg = stage_configs(tiny_world)
    monkeypatch.setattr(extract_video.FeatureCollector, "POOL_THREAD", True)
    monkeypatch.setattr(extract_video.FeatureCollector, "IN_FLIGHT", 1)
    got = run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path / "pooled")
    for split in ("train", "val"):
        _assert_same_store(
            Path(extract.store_path(got.uri, split)), Path(extract.store_path(reference.uri, split))
        )

    def fail(self, maps, size, boxes):
        raise ValueError("RoIAlign failed")

    monkeypatch.setattr(extract_video.VideoExtractor, "_pool", fail)
    _, _, cfg = stage_configs(tiny_world, splits=["train"])
    with pytest.raises(StageError, match=r"w0_train_00.*RoIAlign failed"):
        run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path / "failing")


def test_staging_published_by_another_process_before_compute_starts(
    tiny_world: Path, tracks: StageRef, tmp_path: Path
) -> None:
    """Several workers on one key (the server's load test): the framework creates the
    staging dir, and another process may publish (rename) it before this one's compute
    looks at it. Compute then returns at once and the framework returns that output; a
    staging dir gone with nothing published is an error, not an empty output."""
    from stages.framework import StageContext

    _, _, cfg = stage_configs(tiny_world, splits=["train"])
    published = run_stage(extract.STAGE, cfg, {"track": tracks}, tmp_path)
    staging = tmp_path / "extract" / STAGING_DIR / published.key
    assert not staging.exists()  # renamed into place
    ctx = StageContext(
        stage="extract", key=published.key, config=cfg, inputs={"track": tracks},
        staging=staging, work_root=tmp_path,
    )  # fmt: skip
    assert extract.compute(ctx) == {}
    assert staging.is_dir()  # for the framework's provenance, then dropped
    shutil.rmtree(staging)
    lost = StageContext(
        stage="extract", key="0" * 16, config=cfg, inputs={"track": tracks},
        staging=tmp_path / "extract" / STAGING_DIR / ("0" * 16), work_root=tmp_path,
    )  # fmt: skip
    with pytest.raises(StageError, match="is gone and no output"):
        extract.compute(lost)
