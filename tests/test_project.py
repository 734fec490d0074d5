"""The project's own machinery: Makefile targets, CI script, packaging metadata."""

from __future__ import annotations

import re
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


def test_design_citations_name_sections_that_exist():
    design = (ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", design, flags=re.MULTILINE))
    cited: dict[str, list[str]] = {}
    for path in ROOT.rglob("*"):
        if (path.suffix not in (".py", ".toml", ".yaml", ".md") or not path.is_file()
                or {".venv", ".git", "work"} & set(path.relative_to(ROOT).parts)):  # fmt: skip
            continue
        text = path.read_text(errors="replace")
        # The founding brief is not in the repository: nothing may cite it.
        assert not re.search(r"\bDESIGN(\.md)? §", text), f"{path} cites DESIGN, not docs/design.md"
        for number in re.findall(r"design\.md §(\d+)", text):
            cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    assert cited, "nothing cites docs/design.md"
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert not missing, f"docs/design.md has no section for {missing}"
