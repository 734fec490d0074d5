"""AVA-val-sized evaluation time (run: pytest tests/benchmarks -m bench -s).

~57k keyframes, 60 classes, 2-3 GT persons per keyframe with 1-3 actions each, and
~1M detection rows (3-4 boxes per keyframe, ~5 classes each). Prints the read time
and the evaluation time separately; the target is < 10 s for the evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from stages.data.ava import read_detections_csv, read_gt_csv
from stages.data.types import LabelMap
from stages.evaluate.ava import evaluate_ava

N_VIDEOS = 64
KEYFRAMES_PER_VIDEO = 897  # 902..1798
CLASSES = np.arange(1, 61)


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    pacsv.write_csv(pa.table(columns), path, write_options=options)


def _make_case(
    out: Path, rng: np.random.Generator, n_videos: int = N_VIDEOS
) -> tuple[Path, Path, LabelMap]:
    """GT and detection CSVs of ``n_videos`` × 897 keyframes (~18 detection rows each)."""
    n_kf = n_videos * KEYFRAMES_PER_VIDEO
    kf_video = np.repeat(np.array([f"vid{v:08d}xyz" for v in range(n_videos)]), KEYFRAMES_PER_VIDEO)
    kf_time = np.tile(np.arange(902, 902 + KEYFRAMES_PER_VIDEO), n_videos)
    # GT persons: 2-3 per keyframe, each with 1-3 actions from a long-tailed distribution.
    persons = rng.integers(2, 4, n_kf)
    p_kf = np.repeat(np.arange(n_kf), persons)
    xy = rng.uniform(0, 0.6, (p_kf.size, 2))
    wh = rng.uniform(0.1, 0.4, (p_kf.size, 2))
    p_box = np.column_stack([xy, xy + wh])
    freq = 1.0 / np.arange(1, 61) ** 1.2
    acts = rng.integers(1, 4, p_kf.size)
    g_p = np.repeat(np.arange(p_kf.size), acts)
    g_cls = rng.choice(CLASSES, size=g_p.size, p=freq / freq.sum())
    gt_path = out / "gt.csv"
    _write_csv(
        gt_path,
        {
            "v": kf_video[p_kf[g_p]],
            "t": kf_time[p_kf[g_p]],
            "x1": p_box[g_p, 0].round(3),
            "y1": p_box[g_p, 1].round(3),
            "x2": p_box[g_p, 2].round(3),
            "y2": p_box[g_p, 3].round(3),
            "a": g_cls,
            "p": g_p % 3,
        },
    )
    # Detections: every GT person jittered plus one spurious box, ~5 classes per box.
    d_kf = np.concatenate([p_kf, np.arange(n_kf)])
    d_box = np.concatenate(
        [p_box + rng.normal(0, 0.03, p_box.shape), rng.uniform(0.3, 0.6, (n_kf, 4))]
    )
    d_box[:, 2:] = np.maximum(d_box[:, 2:], d_box[:, :2] + 0.05)
    per_box = 5
    r_box = np.repeat(np.arange(d_kf.size), per_box)
    r_cls = rng.choice(CLASSES, size=r_box.size, p=freq / freq.sum())
    det_path = out / "det.csv"
    _write_csv(
        det_path,
        {
            "v": kf_video[d_kf[r_box]],
            "t": kf_time[d_kf[r_box]],
            "x1": d_box[r_box, 0].clip(0, 1).round(3),
            "y1": d_box[r_box, 1].clip(0, 1).round(3),
            "x2": d_box[r_box, 2].clip(0, 1).round(3),
            "y2": d_box[r_box, 3].clip(0, 1).round(3),
            "a": r_cls,
            "s": rng.random(r_box.size).round(4),
        },
    )
    labelmap = LabelMap(
        ids=CLASSES.copy(),
        names=tuple(f"c{i}" for i in CLASSES),
        label_types=(None,) * CLASSES.size,
    )
    return gt_path, det_path, labelmap


@pytest.mark.bench
def test_bench_ava_val_sized(tmp_path):
    gt_path, det_path, labelmap = _make_case(tmp_path, np.random.default_rng(0))
    start = time.perf_counter()
    gt = read_gt_csv(gt_path, strict=False)
    det = read_detections_csv(det_path, strict=False)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate_ava(gt, det, labelmap)
    eval_s = time.perf_counter() - start
    print(
        f"\nAVA-val-sized: {result.counts['gt_keyframes']} keyframes, {len(gt)} GT rows, "
        f"{len(det)} detection rows, {len(result.per_class)} classes"
    )
    print(f"read {read_s:.2f} s, evaluate {eval_s:.2f} s, mAP {result.mAP:.4f}")
    assert len(det) > 900_000 and len(result.per_class) == 60
    assert eval_s < 10.0


def _prediction_tables(n_keyframes: int, rng: np.random.Generator, tied: bool) -> tuple:
    """GT and a predictions table laid out as the training stages make it (every actor
    of every keyframe × 60 classes, grouped by actor), 2.7 actors per keyframe."""
    from stages.data.types import BoxTable

    n_act = int(n_keyframes * 2.7)
    kf = np.sort(rng.integers(0, n_keyframes, n_act))
    videos = np.array([f"vid{v:08d}xyz" for v in range(n_keyframes // 897 + 1)], dtype=object)
    video, time_s = videos[kf // 897], (902 + kf % 897).astype(np.int64)
    xy = rng.uniform(0, 0.6, (n_act, 2))
    boxes = np.column_stack([xy, xy + 0.3])
    acts = rng.integers(1, 4, n_act)
    g = np.repeat(np.arange(n_act), acts)
    gt = BoxTable(video[g], time_s[g], boxes[g], rng.choice(CLASSES, g.size),
                  np.full(g.size, -1), np.ones(g.size), np.arange(1, g.size + 1))  # fmt: skip
    # tied: the prior-only baseline (every actor the same score per class).
    c = CLASSES.size
    scores = (
        np.tile(rng.random(c, dtype=np.float32), (n_act, 1))
        if tied
        else rng.random((n_act, c), dtype=np.float32)
    )
    actor, cls = np.repeat(np.arange(n_act), c), np.tile(np.arange(c), n_act)
    det = BoxTable(video[actor], time_s[actor], boxes[actor], CLASSES[cls],
                   np.full(actor.size, -1), scores.reshape(-1).astype(np.float64),
                   np.arange(1, actor.size + 1))  # fmt: skip
    return gt, det


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) * 1024


@pytest.mark.bench
def test_bench_eval_memory_per_row():
    """Peak RSS that ``evaluate_ava`` adds above its inputs, per detection row, at 1/4 and
    all of AVA v2.2 val's size (57 k keyframes × 2.7 actors × 60 classes = 9.2 M rows):
    the evaluation's own intermediates should grow no faster than the rows (issue 22),
    and stay a fraction of the input table (80 bytes per row)."""
    import threading

    labelmap = LabelMap(ids=CLASSES.copy(), names=tuple(f"c{i}" for i in CLASSES),
                        label_types=(None,) * CLASSES.size)  # fmt: skip
    per_row = {}
    for fraction in (0.25, 1.0):
        for tied in (False, True):
            gt, det = _prediction_tables(int(57_000 * fraction), np.random.default_rng(0), tied)
            base, peak, done = _rss_bytes(), [0], threading.Event()

            def sample(peak: list[int] = peak, done: threading.Event = done) -> None:
                while not done.wait(0.01):
                    peak[0] = max(peak[0], _rss_bytes())

            sampler = threading.Thread(target=sample)
            sampler.start()
            start = time.perf_counter()
            evaluate_ava(gt, det, labelmap)
            seconds = time.perf_counter() - start
            done.set()
            sampler.join()
            extra = max(peak[0] - base, 0)
            per_row[fraction, tied] = extra / len(det)
            print(
                f"\n{len(det) / 1e6:.1f} M rows ({'prior-only, all tied' if tied else 'random'}"
                f"): input {base / 1e9:.2f} GB RSS, evaluation adds {extra / 1e9:.2f} GB = "
                f"{extra / len(det):.0f} bytes/row, {seconds:.1f} s"
            )
            del gt, det
    for tied in (False, True):
        growth = per_row[1.0, tied] * 4 / max(per_row[0.25, tied], 1e-9)
        print(f"{'tied' if tied else 'random'}: added peak at 4× the rows = {growth:.2f}×")
    assert all(v < 80 for v in per_row.values()), per_row


@pytest.mark.bench
def test_bench_eval_from_file_memory(tmp_path: Path) -> None:
    """Peak RSS above the GT that evaluating a predictions file adds, per file row, read a
    part at a time (``stream_detections_csv`` / ``stream_predictions_parquet``, what the
    evaluate stage, ``bankflow eval`` and the ensemble do) against read whole first, at AVA
    v2.2 val's size (9.2 M rows, issue 22). Each in its own process. Same mAP both ways."""
    import json
    import subprocess
    import sys

    from stages.data import write_predictions_csv, write_predictions_parquet

    gt, det = _prediction_tables(57_000, np.random.default_rng(0), tied=False)
    rows = len(det)
    write_predictions_csv(tmp_path / "gt.csv", gt)  # 8th column "1": every person id 1
    write_predictions_csv(tmp_path / "p.csv", det)
    write_predictions_parquet(tmp_path / "p.parquet", det)
    del gt, det
    repo = Path(__file__).resolve().parents[2]
    figures = {}
    for kind in ("csv-stream", "parquet-stream", "csv-whole", "parquet-whole"):
        out = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.test_bench_eval", kind, str(tmp_path)],
            capture_output=True, text=True, check=True, cwd=repo,
        ).stdout  # fmt: skip
        figures[kind] = json.loads(out.strip().splitlines()[-1])
    print(f"\n{rows / 1e6:.1f} M rows, peak RSS added while evaluating a file (own process):")
    for kind, f in figures.items():
        print(f"  {kind:16s} {f['added'] / rows:6.0f} bytes/row  {f['added'] / 1e9:5.2f} GB  "
              f"{f['seconds']:5.1f} s  mAP {f['mAP']:.6f}")  # fmt: skip
    for fmt in ("csv", "parquet"):
        assert figures[f"{fmt}-stream"]["mAP"] == figures[f"{fmt}-whole"]["mAP"], figures
        assert figures[f"{fmt}-stream"]["added"] < figures[f"{fmt}-whole"]["added"], figures


def _measure_file(kind: str, root: Path) -> dict:
    """One evaluation of ``root``'s predictions file (``kind``: csv|parquet-stream|whole):
    peak RSS above the process with its GT read, seconds, mAP."""
    import threading

    from stages.data import (
        read_predictions_parquet,
        stream_detections_csv,
        stream_predictions_parquet,
    )

    labelmap = LabelMap(ids=CLASSES.copy(), names=tuple(f"c{i}" for i in CLASSES),
                        label_types=(None,) * CLASSES.size)  # fmt: skip
    gt = read_gt_csv(root / "gt.csv", strict=False)
    read = {
        "csv-stream": lambda: stream_detections_csv(root / "p.csv"),
        "parquet-stream": lambda: stream_predictions_parquet(root / "p.parquet"),
        "csv-whole": lambda: read_detections_csv(root / "p.csv", strict=False),
        "parquet-whole": lambda: read_predictions_parquet(root / "p.parquet"),
    }[kind]
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    result = evaluate_ava(gt, read(), labelmap)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"added": max(peak[0] - base, 0), "seconds": seconds, "mAP": result.mAP}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(_measure_file(sys.argv[1], Path(sys.argv[2]))))
