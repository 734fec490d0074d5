"""The project's own machinery: Makefile targets, CI script, packaging metadata."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_data_pattern_matches_a_file():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    for package, patterns in package_data.items():
        for pattern in patterns:
            matches = list((ROOT / package).glob(pattern))
            assert matches, f"pyproject package-data {package}: {pattern!r} matches no file"


def test_make_clean_keeps_the_work_root_and_clean_work_removes_it(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "work" / "detect").mkdir(parents=True)
    (tmp_path / ".pytest_cache").mkdir()
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, timeout=30)
    assert (tmp_path / "work" / "detect").is_dir()
    assert not (tmp_path / ".pytest_cache").exists()
    subprocess.run(["make", "-s", "clean-work"], cwd=tmp_path, check=True, timeout=30)
    assert not (tmp_path / "work").exists()


def test_make_lint_checks_code_and_format_and_ci_lints_before_testing(tmp_path):
    # -n prints the recipe without running it; the install prerequisite is stamped away.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed").touch()
    out = subprocess.run(
        ["make", "-s", "-n", "-o", f"{venv}/.installed", "lint", f"VENV={venv}"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert f"{venv}/bin/ruff check ." in out
    assert f"{venv}/bin/ruff format --check ." in out
    steps = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make ")
    ]
    assert steps == ["make lint", "make test"]
