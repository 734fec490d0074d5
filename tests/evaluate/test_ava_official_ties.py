"""``bankflow eval`` equals the official ActivityNet evaluator bit for bit, equal scores
included (exact duplicate detections, equal scores across keyframes and at the top-50
cut, degenerate boxes): the expected numbers in fixtures/official_ava/expected.json
were produced by the official code (see that folder's README.md).

The official ranking is ``np.argsort(scores)[::-1]``, whose order of equal scores
depends on the sort kernel numpy dispatches to on the CPU at hand. The fixture was
produced with the dispatch pinned to numpy's x86-64 baseline kernel
(``NPY_DISABLE_CPU_FEATURES``), and the CLI runs here in a subprocess pinned the same
way, so the comparison means the same on every x86-64 machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluate.official_cases import CASES, write_case

REPO = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((REPO / "tests/fixtures/official_ava/expected.json").read_text())

RUNNER = """
import sys
from stages.evaluate.cli import eval_main
for args in sys.argv[1:]:
    code = eval_main(args.split("|"))
    if code:
        sys.exit(code)
"""


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> dict[str, dict[str, Path]]:
    out = tmp_path_factory.mktemp("official_cases")
    files = {name: write_case(name, out) for name in CASES}
    for name, paths in files.items():
        for kind, path in paths.items():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == EXPECTED["cases"][name]["sha256"][kind], (
                f"{path.name} differs from the file the official numbers were computed on: "
                "tests/evaluate/official_cases.py changed; rerun "
                "tests/fixtures/official_ava/produce.py"
            )
    return files


def _run_cli(jobs: list[list[str]]) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NPY_DISABLE_CPU_FEATURES": EXPECTED["NPY_DISABLE_CPU_FEATURES"],
    }
    cmd = [sys.executable, "-c", RUNNER, *("|".join(job) for job in jobs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def cli_results(case_files, tmp_path_factory) -> dict[tuple[str, str, str], dict]:
    """``bankflow eval`` on every case x protocol, official and stable ties."""
    out = tmp_path_factory.mktemp("official_results")
    jobs, where = [], {}
    for name, f in case_files.items():
        for protocol in EXPECTED["cases"][name]["protocols"]:
            for ties in ("official", "stable"):
                target = out / f"{name}_{protocol}_{ties}.json"
                job = [str(f["gt"]), str(f["det"]), "--labelmap", str(f["labelmap"])]
                if protocol != "2020":  # the 2020 code has no exclusions file
                    job += ["--excluded", str(f["excluded"])]
                job += ["--protocol", protocol, "--ties", ties, "--json", str(target)]
                jobs.append(job)
                where[name, protocol, ties] = target
    _run_cli(jobs)
    return {key: json.loads(path.read_text()) for key, path in where.items()}


@pytest.mark.parametrize("protocol", ["2018", "2019", "2020"])
@pytest.mark.parametrize("name", CASES)
def test_eval_equals_the_official_code(cli_results, name, protocol):
    expected = EXPECTED["cases"][name]["protocols"][protocol]
    got = cli_results[name, protocol, "official"]
    assert got["per_class"].keys() == expected["per_class"].keys()
    for cid, ap in expected["per_class"].items():
        assert abs(got["per_class"][cid] - ap) <= 1e-12, (name, protocol, cid)
    assert got["mAP"] == expected["mAP"]  # the same mean of the same numbers


def test_the_cases_make_ties_matter(cli_results):
    """Without the official order the cases give other numbers: they test the order."""
    differ = [
        key[:2]
        for key in cli_results
        if key[2] == "official"
        and cli_results[key]["mAP"] != cli_results[(*key[:2], "stable")]["mAP"]
    ]
    assert len(differ) >= 10, differ
