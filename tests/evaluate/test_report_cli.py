"""Report files and the ``bankflow eval`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stages.data.labelmap import read_labelmap
from stages.evaluate.ava import evaluate_ava_files
from stages.evaluate.cli import eval_main
from stages.evaluate.report import write_ava_outputs

ROOT = Path(__file__).resolve().parents[2]


def test_write_ava_outputs(peer_detection, tmp_path):
    gt, pred, labels = peer_detection
    result = evaluate_ava_files(gt, pred, labels)
    paths = write_ava_outputs(result, read_labelmap(labels), tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["mAP"] == pytest.approx(0.09385521885521886)
    assert data["per_class"] == {"1": result.per_class[1], "2": 0.0, "3": result.per_class[3]}
    assert data["num_gt"] == {"1": 4, "2": 3, "3": 5} and "groups" in data and "counts" in data
    md = paths["md"].read_text()
    assert "| 1 | action1 | 17.05 | 4 |" in md and "9.39" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_to_table_rows(peer_detection):
    gt, pred, labels = peer_detection
    rows = evaluate_ava_files(gt, pred, labels).to_table(read_labelmap(labels))
    assert [r["class_id"] for r in rows] == [1, 2, 3]
    assert rows[0] | {"AP": 0} == {
        "class_id": 1,
        "name": "action1",
        "group": "",
        "AP": 0,
        "num_gt": 4,
        "num_detections": 12,
    }


def test_eval_main_writes_outputs(peer_detection, tmp_path, capsys):
    gt, pred, labels = peer_detection
    code = eval_main(
        [
            str(gt),
            str(pred),
            "--labelmap",
            str(labels),
            "--json",
            str(tmp_path / "m.json"),
            "--out-dir",
            str(tmp_path / "out"),
            "--protocol",
            "2018",
            "--iou",
            "0.5",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "mAP@0.5 = 0.093855" in out and "| 3 | action3 | 11.11 |" in out
    assert json.loads((tmp_path / "m.json").read_text())["protocol"] == "2018"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "metrics.json",
        "metrics.md",
        "per_class_ap.png",
    ]


def test_eval_main_bad_input_exits_2(peer_detection, tmp_path, capsys):
    gt, pred, labels = peer_detection
    assert eval_main([str(tmp_path / "nope.csv"), str(pred), "--labelmap", str(labels)]) == 2
    assert "nope.csv: GT file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("v1,902,0.1,0.1,0.4,0.4,1,0.5\nv1,abc,0.1,0.1,0.4,0.4,1,0.5\n")
    assert eval_main([str(gt), str(bad), "--labelmap", str(labels)]) == 2
    assert "bad.csv:2" in capsys.readouterr().err
    assert eval_main([str(gt), str(pred), "--labelmap", str(labels), "--iou", "2"]) == 2
    assert eval_main([str(gt), str(pred)]) == 2  # argparse: --labelmap is required


def test_module_runs_as_script(peer_detection):
    gt, pred, labels = peer_detection
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.evaluate.cli",
            str(gt),
            str(pred),
            "--labelmap",
            str(labels),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "mAP@0.5 = 0.093855" in run.stdout


def test_eval_ties_option_and_stage_config(tmp_path, capsys):
    from stages.evaluate.stage import EvaluateConfig

    (tmp_path / "gt.csv").write_text("v1,0902,0.1,0.1,0.4,0.4,1\n")
    # Equal scores: the official argsort[::-1] ranks the second row (the FP) first.
    (tmp_path / "det.csv").write_text(
        "v1,902,0.1,0.1,0.4,0.4,1,0.5\nv1,902,0.6,0.6,0.9,0.9,1,0.5\n"
    )
    (tmp_path / "l.pbtxt").write_text('item {\n  name: "a"\n  id: 1\n}\n')
    base = [
        str(tmp_path / "gt.csv"),
        str(tmp_path / "det.csv"),
        "--labelmap",
        str(tmp_path / "l.pbtxt"),
    ]
    results = {}
    for ties in ("official", "stable"):
        out = tmp_path / f"{ties}.json"
        assert eval_main([*base, "--ties", ties, "--json", str(out)]) == 0
        results[ties] = json.loads(out.read_text())["mAP"]
    assert results == {"official": 0.5, "stable": 1.0}
    assert eval_main([*base, "--json", str(tmp_path / "default.json")]) == 0
    assert json.loads((tmp_path / "default.json").read_text())["mAP"] == 0.5
    capsys.readouterr()
    assert eval_main([*base, "--ties", "file"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert EvaluateConfig().ties == "official" and EvaluateConfig(ties="stable").ties == "stable"
    with pytest.raises(ValueError, match="ties"):
        EvaluateConfig(ties="file")  # type: ignore[arg-type]
