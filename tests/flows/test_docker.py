"""The worker image installs the same pinned versions the project declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINNED = ("torch", "torchvision", "decord", "zarr", "prefect", "fastapi")


def _requirement(name: str, requirements: list[str]) -> str:
    for req in requirements:
        if re.match(rf"^{re.escape(name)}\s*[=<>!~]", req):
            return req.replace(" ", "")
    raise AssertionError(f"{name} is not pinned in {requirements}")


def test_worker_image_pins_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    dockerfile = (ROOT / "docker" / "Dockerfile.worker").read_text()
    in_image = re.findall(r'"([A-Za-z0-9_.-]+\s*[=<>!~][^"]*)"', dockerfile)
    for name in PINNED:
        assert _requirement(name, in_image) == _requirement(name, deps), name
    base = re.search(r"^FROM pytorch/pytorch:(\d+\.\d+\.\d+)-", dockerfile, re.M)
    assert base and f"torch=={base.group(1)}" == _requirement("torch", deps)
