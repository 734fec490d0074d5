"""How every stage after extraction scales with the dataset: F = 1/16, 1/4 (and 1) of AVA.

Each F builds a features-only scale world (``bankflow world --features-only``,
``stages.world.scale``), then runs each step in its own process
(``tests.benchmarks.scale_step``): ``bankflow status`` (every key), stage-1 linear (RAM-fed
and store-fed) and ACAR (store-fed) for one epoch, the LFB and ACFB dumps, stage-2 LFB
with 60-s windows, cRT, evaluation of the 4 models, an ensemble of 3 and the report.
Per step: wall time, peak RSS (``os.wait4`` of that process), bytes written, a rate, and
across F the fitted exponents of time and of peak RSS (log-log least squares).
Targets (issue 22): time exponent <= 1.1; RSS(F=1)/RSS(F=1/4) <= 1.2 unless preloading.

    make bench  (or)  pytest -m bench tests/benchmarks/test_bench_scale.py -s
    BANKFLOW_BENCH_SCALE_FULL=1   adds F = 1 (~25 GB of store, ~1 h on 2 cores)
    BANKFLOW_BENCH_SCALE_DIR=DIR  where the worlds go (default: pytest's tmp dir); the
                                  PNG and a JSON of the table are written there too.
    BANKFLOW_BENCH_SCALES=1/64,1/16  other scales
    BANKFLOW_BENCH_SCALE_MAX_STEPS=N  cap each training epoch at N steps: its rate and RSS
                                  are measured, the whole epoch's time is projected from
                                  them (marked *; setup, indexing and preload run in full)
    BANKFLOW_BENCH_SCALE_STEPS=a,b  only these steps (world is always built); "all" adds
                                  the ACAR steps (default: every step but those)
    python -m tests.benchmarks.test_bench_scale DIR   table + plot of the F*-results.json
                                  in DIR (each F's steps, written as they finish)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
STEPS = (
    "status", "train:linear", "train:linear_store", "train:acar", "dump:lfb", "dump:acfb",
    "train_bank", "rebalance", "evaluate", "ensemble", "report",
)  # fmt: skip
# By default without the ACAR steps (train:acar, dump:acfb: an epoch of ACAR at F = 1/4 takes
# hours on 2 shared cores); BANKFLOW_BENCH_SCALE_STEPS=all adds them.
DEFAULT_STEPS = tuple(s for s in STEPS if "acar" not in s and "acfb" not in s)
BATCH = 16  # keyframes per step (scale.yaml)


def run_measured(cmd: list[str], log: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of that process, stdout) of one child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO)
        out = proc.stdout.read().decode()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"{cmd} failed, see {log}"
    return wall, usage.ru_maxrss * 1024, out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def max_steps() -> int | None:
    cap = os.environ.get("BANKFLOW_BENCH_SCALE_MAX_STEPS")
    return int(cap) if cap else None


def full_units(step: str, world: dict) -> float | None:
    """A capped training step's units over a whole epoch (None: the step is not capped)."""
    train = world["store"]["train"]["keyframes"]
    if max_steps() is None:
        return None
    if step.startswith("train:"):
        return math.ceil(train / BATCH)
    return train if step == "train_bank" else None


def step_units(step: str, world: dict, records: dict) -> tuple[float, str]:
    """How much work a step did, in its unit (train steps, keyframes, windows, rows)."""
    train = world["store"]["train"]["keyframes"]
    val = world["store"]["val"]["keyframes"]
    cap = max_steps() or math.inf
    if step.startswith("train:"):
        return min(math.ceil(train / BATCH), cap), "steps"
    if step.startswith("dump:"):
        return train + val, "keyframes"
    if step == "train_bank":
        return min(train, cap * BATCH), "windows"
    if step in ("evaluate", "ensemble"):
        rows = sum(r["summary"].get("rows", 0) or 0 for r in records.values())
        return rows or world["store"]["val"]["actors"] * len(records), "rows"
    return train + val, "keyframes"


def epoch_seconds(row: dict) -> float:
    """A step's seconds; for a capped training epoch, the whole epoch's (see measure_scale)."""
    return row.get("epoch_seconds", row["seconds"])


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2 or min(ys) <= 0:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def measure_scale(root: Path, scale: float, steps: tuple[str, ...]) -> dict[str, dict]:
    out = root / f"F{scale:g}"
    shutil.rmtree(out, ignore_errors=True)
    py = sys.executable
    wall, rss, text = run_measured(
        [py, "-m", "flows.cli", "world", "--features-only", "--scale", str(scale), str(out)],
        root / f"F{scale:g}-world.log",
    )
    world = json.loads(text)
    rows: dict[str, dict] = {
        "world": {"seconds": wall, "rss": rss, "bytes": du(out), "units": 0, "unit": "-"}
    }
    rows["world"].update(units=world["store"]["train"]["keyframes"] + world["store"]["val"]["keyframes"], unit="keyframes")  # fmt: skip
    for step in steps:
        log = root / f"F{scale:g}-{step.replace(':', '-')}.log"
        wall, rss, text = run_measured(
            [py, "-m", "tests.benchmarks.scale_step", world["config"], world["work_root"], step],
            log,
        )
        result = json.loads(text.strip().splitlines()[-1])
        computed = {n: r for n, r in result["records"].items() if not r["cached"]}
        seconds = wall if step == "status" else sum(r["seconds"] for r in computed.values())
        units, unit = step_units(step, world, computed)
        rows[step] = {
            "seconds": seconds, "wall": wall, "rss": rss, "units": units, "unit": unit,
            "bytes": sum(r["bytes"] for r in computed.values()),
        }  # fmt: skip
        full = full_units(step, world)
        if full is not None and full > units:  # a capped epoch: the whole one at its rate
            loop = sum(r.get("loop_seconds", 0.0) for r in computed.values())
            rows[step].update(loop=loop, epoch_seconds=seconds - loop + loop * full / units)
        rows["_world"] = world
        # After each step: a long run stopped midway keeps what it measured (see main()).
        (root / f"F{scale:g}-results.json").write_text(json.dumps(rows, indent=1))
    rows["_world"] = world
    return rows


def table(results: dict[float, dict[str, dict]]) -> str:
    scales = sorted(results)
    steps = [s for s in results[scales[0]] if not s.startswith("_")]
    head = f"{'step':<20}" + "".join(
        f" {'F=' + format(f, 'g'):>8} {'s':>3} {'rate':>9} {'RSS MB':>7} {'MB out':>7}"
        for f in scales
    )
    lines = [head + f" {'t-exp':>6} {'RSS×':>5}"]
    for step in steps:
        cells = ""
        for f in scales:
            r = results[f][step]
            rate = r["units"] / r["seconds"] if r["seconds"] > 0 and r["units"] else float("nan")
            shown = f"{epoch_seconds(r):.1f}" + ("*" if "epoch_seconds" in r else " ")
            cells += f" {shown:>13} {rate:>9.1f} {r['rss'] / 1e6:>7.0f} {r['bytes'] / 1e6:>7.0f}"
        xs = [f for f in scales if results[f][step]["seconds"] > 0]
        t_exp = fit_exponent(xs, [epoch_seconds(results[f][step]) for f in xs])
        big = [f for f in scales if f >= 0.25]
        ratio = (
            results[big[-1]][step]["rss"] / results[big[0]][step]["rss"]
            if len(big) > 1
            else float("nan")
        )
        lines.append(f"{step:<20}{cells} {t_exp:>6.2f} {ratio:>5.2f}")
    units = {s: results[scales[0]][s]["unit"] for s in steps}
    lines.append("rate units: " + ", ".join(f"{s} {u}/s" for s, u in units.items()))
    lines.append(
        "* a capped epoch (BANKFLOW_BENCH_SCALE_MAX_STEPS): its setup as measured plus its "
        "loop time at the measured step rate over the whole epoch"
    )
    return "\n".join(lines)


def plot(results: dict[float, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted(results)
    steps = [s for s in results[scales[0]] if not s.startswith("_")]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5))
    for step in steps:
        xs = [f for f in scales if results[f][step]["seconds"] > 0]
        ts = [epoch_seconds(results[f][step]) for f in xs]
        ax_t.loglog(xs, ts, "o-", label=f"{step} (exp {fit_exponent(xs, ts):.2f})")
        ms = [results[f][step]["rss"] / 1e6 for f in scales]
        ax_m.loglog(scales, ms, "o-", label=f"{step} (exp {fit_exponent(scales, ms):.2f})")
    ax_t.set(xlabel="F (fraction of AVA v2.2)", ylabel="seconds", title="time")
    ax_m.set(xlabel="F (fraction of AVA v2.2)", ylabel="peak RSS (MB)", title="peak RSS")
    for ax in (ax_t, ax_m):
        ax.legend(fontsize=6)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def test_bench_scale(tmp_path: Path) -> None:
    root = Path(os.environ.get("BANKFLOW_BENCH_SCALE_DIR") or tmp_path)
    root.mkdir(parents=True, exist_ok=True)
    scales = [1 / 16, 1 / 4] + ([1.0] if os.environ.get("BANKFLOW_BENCH_SCALE_FULL") == "1" else [])
    if os.environ.get("BANKFLOW_BENCH_SCALES"):  # e.g. "1/64,1/16"
        scales = [float(Fraction(f)) for f in os.environ["BANKFLOW_BENCH_SCALES"].split(",")]
    chosen = os.environ.get("BANKFLOW_BENCH_SCALE_STEPS")
    steps = DEFAULT_STEPS if not chosen or chosen == "default" else STEPS
    if chosen and chosen not in ("default", "all"):
        steps = tuple(s for s in STEPS if s in chosen.split(","))
    results: dict[float, dict[str, dict]] = {}
    for scale in scales:
        results[scale] = measure_scale(root, scale, steps)
        shutil.rmtree(root / f"F{scale:g}", ignore_errors=True)  # the next F needs the disk
        print(f"\nF={scale:g} done", flush=True)
    text = table(results)
    print("\n" + text)
    (root / "scale_table.txt").write_text(text + "\n")
    (root / "scale_results.json").write_text(
        json.dumps({str(k): v for k, v in results.items()}, indent=1)
    )
    plot(results, root / "scale.png")
    print(f"plot: {root / 'scale.png'}")
    for scale, rows in results.items():
        assert rows["status"]["seconds"] > 0 and rows["world"]["bytes"] > 0, scale


def main(argv: list[str]) -> int:
    """``python -m tests.benchmarks.test_bench_scale DIR``: the table and plot of every
    ``F*-results.json`` in DIR (the steps each F completed)."""
    root = Path(argv[0])
    results: dict[float, dict[str, dict]] = {}
    for path in sorted(root.glob("F*-results.json")):
        results[float(path.name[1:].split("-")[0])] = json.loads(path.read_text())
    common = set.intersection(*(set(r) for r in results.values()))
    results = {f: {s: r[s] for s in r if s in common} for f, r in results.items()}
    print(table(results))
    plot(results, root / "scale.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
