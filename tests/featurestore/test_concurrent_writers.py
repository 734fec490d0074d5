"""Two real processes with overlapping video lists write each video exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

from featurestore import FeatureStore
from tests.featurestore.factories import assert_same, make_video, small_schema

REPO = Path(__file__).resolve().parents[2]


def _worker(url, owner: str, log: Path, ttl_s: float, videos: list[str], die=False, barrier=None):
    args = [str(url), owner, str(log), str(ttl_s), *(["--die"] if die else []), *videos]
    env = dict(os.environ, **({"WRITER_BARRIER": str(barrier)} if barrier else {}))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.featurestore.writer_worker", *args],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 9), err
    return proc.returncode


@pytest.mark.slow  # two Python start-ups: ~3 s idle, more on a loaded machine
def test_overlapping_writers_write_each_video_once(tmp_path: Path) -> None:
    url = tmp_path / "store.zarr"
    videos = [f"v{i:02d}" for i in range(12)]
    FeatureStore.create(url, small_schema(), provenance={}, expected_videos=videos)
    log = tmp_path / "writes.log"
    # Same videos, opposite orders (they meet in the middle) plus a shared prefix.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        _worker(url, "w1", log, 30, videos, barrier=barrier),
        _worker(url, "w2", log, 30, videos[:3] + videos[::-1], barrier=barrier),
    ]
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("*.ready"))) < 2 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a writer died during start-up"
        time.sleep(0.01)
    (barrier / "go").touch()  # both writers race from here
    for proc in procs:
        assert _wait(proc) == 0
    writes = Counter(line.split()[1] for line in log.read_text().splitlines())
    assert writes == Counter({v: 1 for v in videos})
    store = FeatureStore.open(url, mode="a")
    store.finalize()
    assert store.verify().ok
    for video_id in videos:
        expected = make_video(store.schema, n_keyframes=4, seed=zlib.crc32(video_id.encode()))
        assert_same(store.read_video(video_id), expected)
    assert not list((Path(url) / "locks").glob("*.json"))


@pytest.mark.slow
def test_killed_writer_is_taken_over_after_ttl(tmp_path: Path) -> None:
    ttl_s = 0.5
    url = tmp_path / "store.zarr"
    FeatureStore.create(url, small_schema(), provenance={}, expected_videos=["a", "b"])
    log = tmp_path / "writes.log"
    assert _wait(_worker(url, "doomed", log, ttl_s, ["a"], die=True)) == 9
    store = FeatureStore.open(url, mode="a")
    assert store.videos(complete_only=False) == ["a"]
    assert "incomplete" in " ".join(store.verify().problems)
    assert (Path(url) / "locks" / "a.json").exists()  # the killed writer's lock is left
    time.sleep(ttl_s + 0.1)
    assert _wait(_worker(url, "rescuer", log, ttl_s, ["a", "b"])) == 0
    assert log.read_text().split("\n")[:2] == ["rescuer a", "rescuer b"]
    store.finalize()
    assert store.verify().ok


def test_claim_left_on_a_complete_video_is_gone_after_finalize(tmp_path: Path) -> None:
    """A writer killed between marking its video complete and releasing the claim leaves a
    lock that no resumed writer touches (the video is done); it must not be published
    with the store (the flaky end of test_killed_extraction_resumes_bitwise_equal)."""
    url = tmp_path / "store.zarr"
    store = FeatureStore.create(url, small_schema(), provenance={}, expected_videos=["a", "b"])
    claim = store.try_claim("a", "doomed")
    assert claim is not None
    store.write_video("a", make_video(store.schema, seed=1))
    claim._stop.set()  # the heartbeat dies with its process; the lock stays
    with store.claim("b", "resumer") as held:
        assert held is not None
        store.write_video("b", make_video(store.schema, seed=2))
    assert [p.name for p in (url / "locks").glob("*.json")] == ["a.json"]
    store.finalize()
    assert not list((url / "locks").glob("*.json"))
    assert FeatureStore.open(url).verify().ok
