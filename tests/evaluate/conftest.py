"""Fixtures for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def peer_detection(peer_ava: Path) -> tuple[Path, Path, Path]:
    """(gt.csv, pred.csv, action_list.txt) of the mmaction2 AVA peer."""
    d = peer_ava / "mmaction2_eval_detection"
    return d / "gt.csv", d / "pred.csv", d / "action_list.txt"
