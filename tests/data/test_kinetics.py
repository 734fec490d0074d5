"""AVA-Kinetics: per-video time bases (offsets table, Kinetics clip names), data check,
and evaluation of the AVA and Kinetics parts with the 2020 protocol."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from stages.data import Dataset, check_dataset, read_detections_csv
from stages.data.errors import DataError
from stages.data.kinetics import kinetics_clip, read_offsets_csv
from stages.data.predictions import write_predictions_csv
from stages.data.types import BoxTable
from stages.evaluate.ava import evaluate_ava

YID = "kZ9-x_Ab12c"  # an 11-character YouTube id (with '_' and '-')


@pytest.fixture
def mixed(tiny_world, tmp_path):
    """The tiny AVA world plus one 'Kinetics' clip: a world video copied to
    <youtube_id>_000100_000120.mp4, its GT rows renamed to the YouTube id with
    timestamps in the YouTube video's seconds (100 + seconds into the clip)."""
    root = tmp_path / "mixed"
    shutil.copytree(tiny_world, root)
    cfg = yaml.safe_load((root / "dataset.yaml").read_text())
    del cfg["timestamp_offset"]  # inferred (900) from the AVA videos alone
    (root / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    val = root / "annotations" / "val.csv"
    rows = val.read_text().splitlines()
    source = rows[0].split(",")[0]
    shutil.copy(root / "videos" / f"{source}.mp4", root / "videos" / f"{YID}_000100_000120.mp4")
    extra = []
    for row in rows:
        cols = row.split(",")
        if cols[0] == source:
            cols[0], cols[1] = YID, f"{int(cols[1]) - 900 + 100:04d}"
            extra.append(",".join(cols))
    val.write_text("\n".join([*rows, *extra]) + "\n")
    return root, source, len(extra)


def test_kinetics_names():
    assert kinetics_clip(f"{YID}_000100_000120") == (YID, 100, 120)
    assert kinetics_clip("1j20qq1JyX4") is None


def test_mixed_dataset_reads_with_per_video_offsets(mixed):
    root, source, n = mixed
    ds = Dataset.open(root)
    assert ds.offset_of(YID) == 100.0 and ds.source_of(YID) == "kinetics"
    assert ds.timestamp_offset == 900.0 and ds.offset_of(source) == 900.0
    assert ds.source_of(source) == "ava"
    assert ds.video_path(YID).name == f"{YID}_000100_000120.mp4"
    assert (ds.gt("val").video == YID).sum() == n
    assert check_dataset(root).ok, check_dataset(root).format_problems()


def test_offsets_table_wins_and_bad_rows_are_named(mixed):
    root, source, _ = mixed
    table = root / "annotations" / "offsets.csv"
    table.write_text(f"{YID},101,kinetics\n")
    cfg = yaml.safe_load((root / "dataset.yaml").read_text())
    cfg["timestamp_offsets"] = "offsets.csv"
    (root / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    assert Dataset.open(root).offset_of(YID) == 101.0
    table.write_text(f"{YID},101\n{source},x\n")
    with pytest.raises(DataError, match=r"offsets.csv:2: offset 'x' is not a number"):
        read_offsets_csv(table)


def test_data_check_names_rows_outside_their_clip(mixed):
    root, _, _ = mixed
    val = root / "annotations" / "val.csv"
    lines = val.read_text().splitlines()
    cols = next(r for r in lines if r.startswith(YID)).split(",")
    cols[1] = "0135"  # the clip holds seconds 100..120 of the YouTube video
    val.write_text("\n".join([*lines, ",".join(cols)]) + "\n")
    report = check_dataset(root)
    bad = [str(p) for p in report.problems]
    assert len(bad) == 1, bad
    assert f"val.csv:{len(lines) + 1}: timestamp 135 is outside video '{YID}'" in bad[0]
    assert "offset 100" in bad[0]


def test_evaluation_reports_ava_and_kinetics_parts(mixed, tmp_path):
    from pydantic import BaseModel

    from stages.evaluate import stage as evaluate_stage
    from stages.framework import Stage, run_stage

    root, _, _ = mixed
    ds = Dataset.open(root)
    gt = ds.gt("val")
    rng = np.random.default_rng(0)
    ids = ds.labelmap.ids
    # a model's rows: every GT box scored for 3 classes, the true one among them sometimes
    rows = np.repeat(np.arange(len(gt)), 3)
    preds = gt.take(rows)
    action = np.where(rng.random(len(rows)) < 0.4, preds.action, rng.choice(ids, len(rows)))
    preds = BoxTable(
        video=preds.video, timestamp=preds.timestamp, boxes=preds.boxes, action=action,
        person=preds.person, score=rng.random(len(rows)), line=preds.line,
    )  # fmt: skip
    csv = tmp_path / "val.csv"
    write_predictions_csv(csv, preds)

    class Written(BaseModel):
        table: str

    def publish(ctx) -> dict:
        (ctx.staging / "predictions").mkdir()
        shutil.copy(ctx.config.table, ctx.staging / "predictions" / "val.csv")
        return {}

    model = run_stage(Stage("model", "1", Written, publish), Written(table=str(csv)), {}, tmp_path)
    config = evaluate_stage.EvaluateStageConfig(
        dataset=ds.config, dataset_fingerprint="t",
        evaluate=evaluate_stage.EvaluateConfig(split="val", protocol="2020"),
    )  # fmt: skip
    out = run_stage(evaluate_stage.STAGE, config, {"predictions": model}, tmp_path)
    parts = out.summary["parts"]
    assert set(parts) == {"ava", "kinetics"}

    table = read_detections_csv(csv, strict=False)
    for source, videos in (("kinetics", [YID]), ("ava", sorted(set(gt.video) - {YID}))):
        expect = evaluate_ava(
            gt.take(np.isin(gt.video, videos)), table.take(np.isin(table.video, videos)),
            ds.labelmap, ds.excluded("val"), protocol="2020",
        )  # fmt: skip
        assert parts[source]["mAP"] == pytest.approx(expect.mAP, abs=1e-12)
    overall = evaluate_ava(gt, table, ds.labelmap, ds.excluded("val"), protocol="2020")
    assert out.summary["mAP"] == pytest.approx(overall.mAP, abs=1e-12)
    assert json.loads((out.path / "parts.json").read_text()) == parts
