"""Worlds shared by the tests in tests/world (built once per session)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stages.world import WorldConfig, build_world


@pytest.fixture(scope="session")
def default_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo-size world for seed 0 (about 15-30 s to build on 2 busy cores)."""
    out = tmp_path_factory.mktemp("world") / "default"
    build_world(out, WorldConfig.default(seed=0))
    return out


@dataclass(frozen=True)
class Gt:
    """GT rows of one split as arrays."""

    video: np.ndarray  # str [N]
    ts: np.ndarray  # int [N]
    boxes: np.ndarray  # float [N, 4]
    action: np.ndarray  # int [N]
    person: np.ndarray  # int [N]


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def read_gt(path: Path) -> Gt:
    rows = read_rows(path)
    return Gt(
        video=np.array([r[0] for r in rows], dtype=object),
        ts=np.array([int(r[1]) for r in rows], dtype=np.int64),
        boxes=np.array([[float(v) for v in r[2:6]] for r in rows]).reshape(-1, 4),
        action=np.array([int(r[6]) for r in rows], dtype=np.int64),
        person=np.array([int(r[7]) for r in rows], dtype=np.int64),
    )


def read_world(root: Path) -> dict:
    return json.loads((root / "world.json").read_text())
