"""A store or bank being created reads as incomplete, never as a crash (issue 20, defect 10).

``FeatureStore.create`` writes the root ``zarr.json`` and then the ``videos`` group; a
progress probe that opened the store in between raised ``KeyError``/``FileNotFoundError:
videos`` and made ``test_killed_extraction_resumes_bitwise_equal`` flaky.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore, StoreError
from featurestore.banks import BankStore
from featurestore.layout import VIDEOS
from tests.featurestore.factories import assert_same, make_video, small_schema

REPO = Path(__file__).resolve().parents[2]


def _store_in_creation(url: Path) -> None:
    """The state between the two metadata writes of ``create``: root only, no videos group."""
    FeatureStore.create(url, small_schema(), provenance={}, expected_videos=["a"])
    shutil.rmtree(url / VIDEOS)


def test_store_without_videos_group_reads_as_incomplete(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    _store_in_creation(url)
    probe = FeatureStore.open(url, mode="r", allow_incomplete=True)
    assert not probe.complete and probe.videos(complete_only=False) == []
    assert not probe.is_complete_video("a")
    with pytest.raises(StoreError, match=r"s\.zarr.*video 'a'.*no such video"):
        probe.read_video("a")
    with pytest.raises(StoreError, match=r"is incomplete .*0 complete videos of 1 expected"):
        FeatureStore.open(url)
    # A writer arriving now finishes the layout and writes; the old probe then sees it.
    writer = FeatureStore.open(url, mode="a")
    video = make_video(writer.schema, seed=3)
    writer.write_video("a", video)
    assert probe.videos() == ["a"]
    assert_same(probe.read_video("a"), video)
    writer.finalize()
    assert FeatureStore.open(url).verify().ok


def test_bank_without_videos_group_reads_as_incomplete(tmp_path: Path) -> None:
    url = tmp_path / "b.zarr"
    BankStore.create(url, kind="lfb", arrays={"features": (2,)}, provenance={})
    shutil.rmtree(url / VIDEOS)
    probe = BankStore.open(url, allow_incomplete=True)
    assert probe.videos() == [] and not probe.is_complete_video("a")
    with pytest.raises(StoreError, match=r"video 'a'.*no such video in the bank"):
        probe.video_attrs("a")
    with pytest.raises(StoreError, match="bank is incomplete"):
        BankStore.open(url)
    writer = BankStore.open(url, mode="a", allow_incomplete=True)
    writer.write_video("a", timestamps=np.arange(1), actor_offset=np.array([0, 1]),
                       track=np.zeros(1, np.int32), arrays={"features": np.ones((1, 2))},
                       video_key="k")  # fmt: skip
    assert probe.videos() == ["a"]


def test_video_directory_without_metadata_is_skipped_silently(tmp_path: Path) -> None:
    """A video group whose zarr.json is not renamed into place yet (only zarr's temporary
    ``*.partial`` file) is not a video; listing it warns nothing and raises nothing."""
    url = tmp_path / "s.zarr"
    store = FeatureStore.create(url, small_schema(), provenance={})
    store.write_video("a", make_video(store.schema, seed=1))
    (url / VIDEOS / "b").mkdir()
    (url / VIDEOS / "b" / "zarr.0123.partial").write_bytes(b'{"zarr_format": 3, "no')
    (url / VIDEOS / "zarr.4567.partial").write_bytes(b"{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = FeatureStore.open(url, allow_incomplete=True)
        assert probe.video_states() == {"a": True}


def test_reader_polling_stores_being_created_never_crashes(tmp_path: Path) -> None:
    """A real writer process creates stores and banks back to back while this process opens
    each as soon as its root zarr.json exists and reads whatever is complete (the probe of
    the extraction-resume test, repeated). STRESS_STORES raises the count (default 12)."""
    n = int(os.environ.get("STRESS_STORES", "12"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.featurestore.creator_worker", str(tmp_path), str(n)],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    opened = reads = 0
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "done").exists():
            assert proc.poll() in (None, 0), proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the creator did not finish in 300 s"
            for i in range(n):
                for url, cls in ((tmp_path / f"s{i}.zarr", FeatureStore),
                                 (tmp_path / f"b{i}.zarr", BankStore)):  # fmt: skip
                    if (url / "zarr.json").is_file() and not (url / "seen").exists():
                        probe = cls.open(url, mode="r", allow_incomplete=True)
                        for video_id in probe.videos():
                            probe.read_video(video_id)
                            reads += 1
                        opened += 1
                        if probe.complete:
                            (url / "seen").touch()  # finalized: stop polling it
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert opened >= 2 * n and reads >= 1
