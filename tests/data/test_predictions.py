"""Prediction writers (AVA CSV, Parquet) and the MMAction2 proposal pickle."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from stages.data import (
    NO_ACTION,
    NO_PERSON,
    BoxTable,
    DataError,
    PredictionRows,
    read_detections_csv,
    read_mmaction_proposals,
    read_predictions_parquet,
    write_predictions_csv,
    write_predictions_parquet,
)
from stages.data.atomic import atomic_path


def _predictions() -> BoxTable:
    return BoxTable(
        video=np.array(["-5KQ66BBWC4", "0042", "0042"], dtype=object),
        timestamp=np.array([902, 1798, 1798]),
        boxes=np.array([[0.1234, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.25, 0.3, 0.75, 0.9]]),
        action=np.array([12, 80, NO_ACTION]),
        person=np.array([NO_PERSON, 3, NO_PERSON]),
        score=np.array([0.912345678, 0.00041, 0.00012]),
        line=np.array([1, 2, 3]),
    )


def test_csv_is_ava_format_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "pred.csv"
    write_predictions_csv(path, _predictions())
    assert path.read_text().splitlines() == [
        "-5KQ66BBWC4,0902,0.123,0.200,0.500,0.600,12,0.912346",
        "0042,1798,0.000,0.000,1.000,1.000,80,0.00041",
        "0042,1798,0.250,0.300,0.750,0.900,,0.00012",
    ]
    back = read_detections_csv(path)
    assert back.video.tolist() == ["-5KQ66BBWC4", "0042", "0042"]
    assert back.timestamp.tolist() == [902, 1798, 1798]
    np.testing.assert_allclose(back.boxes, np.round(_predictions().boxes, 3))
    assert back.action.tolist() == [12, 80, NO_ACTION]
    # small scores keep their order (a %.3f score would tie them at 0.000)
    assert back.score[1] > back.score[2] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]
    write_predictions_csv(tmp_path / "empty.csv", BoxTable.empty())
    assert (tmp_path / "empty.csv").read_bytes() == b""


def test_csv_written_in_blocks_has_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.data import predictions

    write_predictions_csv(tmp_path / "one.csv", _predictions())
    monkeypatch.setattr(predictions, "CSV_BLOCK_ROWS", 2)  # blocks of 2 + 1 rows
    write_predictions_csv(tmp_path / "blocks.csv", _predictions())
    assert (tmp_path / "blocks.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert (tmp_path / "one.csv").read_text().count("\n") == 3


def test_csv_float_format_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "pred.csv"
    write_predictions_csv(path, _predictions(), float_format="%.5f", score_format="%.2f")
    assert (
        path.read_text().splitlines()[0]
        == "-5KQ66BBWC4,0902,0.12340,0.20000,0.50000,0.60000,12,0.91"
    )


def test_parquet_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "pred.parquet"
    original = _predictions()
    write_predictions_parquet(path, original)
    back = read_predictions_parquet(path)
    assert back.video.tolist() == original.video.tolist()
    for name in ("timestamp", "boxes", "action", "person", "score"):
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    assert back.line.tolist() == [1, 2, 3] and back.source == str(path)
    empty = tmp_path / "empty.parquet"
    write_predictions_parquet(empty, BoxTable.empty())
    assert len(read_predictions_parquet(empty)) == 0


def test_parquet_in_row_groups_reads_back_whole_with_shared_video_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written a block of rows (a row group) at a time, read back as one table whose
    rows share one string object per video id (bounded memory at AVA scale)."""
    import pyarrow.parquet as pq

    from stages.data import predictions

    monkeypatch.setattr(predictions, "CSV_BLOCK_ROWS", 2)  # row groups of 2 + 1 rows
    path = tmp_path / "pred.parquet"
    original = _predictions()
    write_predictions_parquet(path, original)
    assert pq.ParquetFile(path).metadata.num_row_groups == 2
    back = read_predictions_parquet(path)
    assert back.video.tolist() == original.video.tolist()
    for name in ("timestamp", "boxes", "action", "person", "score"):
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    assert back.video[1] is back.video[2]  # "0042" twice, one object
    csv = tmp_path / "pred.csv"
    write_predictions_csv(csv, original)
    read = read_detections_csv(csv, strict=False)
    assert read.video.tolist() == original.video.tolist() and read.video[1] is read.video[2]


def test_parquet_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read Parquet predictions"):
        read_predictions_parquet(bad)
    import pyarrow as pa
    import pyarrow.parquet as pq

    partial = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"video": ["a"], "timestamp": [1]}), partial)
    with pytest.raises(DataError, match=r"partial.parquet: missing columns \['x1'"):
        read_predictions_parquet(partial)


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "pred.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]


def _proposal_pickle(tmp_path: Path) -> Path:
    path = tmp_path / "proposals.pkl"
    data = {
        "-5KQ66BBWC4,0902": np.array(
            [[0.1, 0.2, 0.5, 0.6, 0.9], [0.2, 0.2, 0.4, 0.9, 0.3]], np.float32
        ),
        "0042,1798": np.array([[0.0, 0.0, 1.0, 1.0]]),  # N,4: score 1.0
        "0042,1799": np.zeros((0, 5)),  # a keyframe without proposals
    }
    path.write_bytes(pickle.dumps(data))
    return path


def test_mmaction_proposals_need_opt_in(tmp_path: Path) -> None:
    path = _proposal_pickle(tmp_path)
    with pytest.raises(
        DataError, match=r"proposals.pkl: refusing to unpickle: .*runs code.*trust_pickle=True"
    ):
        read_mmaction_proposals(path)


def test_mmaction_proposals_read_with_opt_in(tmp_path: Path) -> None:
    table = read_mmaction_proposals(_proposal_pickle(tmp_path), trust_pickle=True)
    assert table.video.tolist() == ["-5KQ66BBWC4", "-5KQ66BBWC4", "0042"]
    assert table.timestamp.tolist() == [902, 902, 1798]
    np.testing.assert_allclose(table.boxes[1], [0.2, 0.2, 0.4, 0.9], rtol=1e-6)
    np.testing.assert_allclose(table.score, [0.9, 0.3, 1.0], rtol=1e-6)
    assert (table.action == NO_ACTION).all() and (table.person == NO_PERSON).all()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], r"expected a dict of 'video_id,timestamp' keys, got list"),
        ({"nocomma": np.zeros((1, 5))}, r"key 'nocomma' is not 'video_id,timestamp'"),
        (
            {"v,0902": np.zeros((2, 3))},
            r"key 'v,0902': expected an array \[N, 4\] or \[N, 5\], got shape \(2, 3\)",
        ),
    ],
)
def test_mmaction_proposal_errors(tmp_path: Path, data: object, message: str) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=message):
        read_mmaction_proposals(path, trust_pickle=True)


def _rows(top_k: int | None) -> PredictionRows:
    """5 keyframes (one without boxes), 9 boxes, 4 classes, equal scores included."""
    rng = np.random.default_rng(5)
    offset = np.array([0, 2, 2, 5, 8, 9])
    return PredictionRows(
        video=np.array(["a", "a", "b", "b", "c"], dtype=object),
        timestamp=np.array([902, 903, 902, 1000, 7], dtype=np.int32),
        offset=offset,
        boxes=rng.random((9, 4), dtype=np.float32),
        scores=np.round(rng.random((9, 4), dtype=np.float32), 1),
        class_ids=np.array([3, 1, 12, 80]),
        top_k=top_k,
    )


@pytest.mark.parametrize("top_k", [None, 2, 9])
def test_prediction_rows_in_blocks_are_the_table(tmp_path: Path, top_k: int | None) -> None:
    """Blocks of whole keyframes, any size, concatenate to the whole table; the writers
    give the same CSV bytes and Parquet rows from either."""
    from stages.data import predictions

    rows = _rows(top_k)
    whole = rows.table()
    assert len(whole) == len(rows) == 9 * (2 if top_k == 2 else 4)
    for size in (1, 5, 1000):
        blocks = list(rows.blocks(size))
        for block in blocks:  # whole keyframes: no keyframe in two blocks
            assert not {(v, t) for v, t in zip(block.video, block.timestamp, strict=True)} & {
                (v, t)
                for other in blocks
                if other is not block
                for v, t in zip(other.video, other.timestamp, strict=True)
            }
        for name in ("video", "timestamp", "boxes", "action", "person", "score", "line"):
            got = np.concatenate([getattr(b, name) for b in blocks])
            np.testing.assert_array_equal(got, getattr(whole, name), err_msg=f"{size} {name}")
    write_predictions_csv(tmp_path / "table.csv", whole)
    for size in (1, 5):
        predictions.CSV_BLOCK_ROWS = size
        try:
            write_predictions_csv(tmp_path / "rows.csv", rows)
            write_predictions_parquet(tmp_path / "rows.parquet", rows)
        finally:
            predictions.CSV_BLOCK_ROWS = 1 << 18
        assert (tmp_path / "rows.csv").read_bytes() == (tmp_path / "table.csv").read_bytes()
        back = read_predictions_parquet(tmp_path / "rows.parquet")
        assert back.video.tolist() == whole.video.tolist()
        for name in ("timestamp", "boxes", "action", "person", "score"):
            np.testing.assert_array_equal(getattr(back, name), getattr(whole, name))


_CSV_ROWS = [
    "vid-a,0902,0.1,0.2,0.5,0.6,12,0.91",
    "vid-a,0902,0.1,0.2,0.5,0.6,80,0.5",
    "vid-b,1798,0.0,0.0,1.0,1.0,,0.25",
    "vid-b,1799,0.25,0.3,0.75,0.9,12,1e-05",
]


def _same_rows(a: BoxTable, b: BoxTable) -> None:
    assert a.video.tolist() == b.video.tolist()
    for name in ("timestamp", "boxes", "action", "person", "score", "line"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("part_bytes", [1, 20, 37, 80, 1 << 20])
def test_csv_read_a_part_at_a_time_is_the_whole_read(tmp_path: Path, part_bytes: int) -> None:
    """stream_detections_csv cuts the file at line ends, parts of about ``part_bytes``:
    rows, values and line numbers (blank lines, CRLF, no final newline, a line longer
    than a part) are those of the whole read."""
    from stages.data import stream_detections_csv
    from stages.data.types import concat_tables

    path = tmp_path / "det.csv"
    text = "\r\n".join([_CSV_ROWS[0], "", _CSV_ROWS[1], _CSV_ROWS[2], "", "", _CSV_ROWS[3]])
    path.write_bytes(text.encode())
    whole = read_detections_csv(path, strict=False)
    stream = stream_detections_csv(path, block_bytes=part_bytes)
    parts = list(stream)
    assert len(parts) > 1 or part_bytes > len(text)
    _same_rows(concat_tables(parts), whole)
    assert whole.line.tolist() == [1, 3, 4, 7]
    # A 7-column file (score 1.0) and a file without rows read the same way too.
    seven = tmp_path / "seven.csv"
    seven.write_text("\n".join(r.rsplit(",", 1)[0] for r in _CSV_ROWS) + "\n")
    _same_rows(
        concat_tables(list(stream_detections_csv(seven, block_bytes=part_bytes))),
        read_detections_csv(seven, strict=False),
    )
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    assert list(stream_detections_csv(blank, block_bytes=part_bytes)) == []


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("vid-c,0903,0.1,0.2,0.5,0.6,12", r"det\.csv:4: expected 8 \(like the first row\)"),
        ("vid-c,0903,0.1,0.2,0.5,oops,12,0.5", r"det\.csv:4: y2 'oops' is not a number"),
        ("vid-c,,0.1,0.2,0.5,0.6,12,0.5", r"det\.csv:4: timestamp is empty"),
    ],
)
def test_csv_read_a_part_at_a_time_names_the_bad_line(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    """A bad row in a later part is named with its line in the file, as the whole read
    names it."""
    from stages.data import stream_detections_csv

    path = tmp_path / "det.csv"
    path.write_text("\n".join([*_CSV_ROWS[:2], "", bad_line, _CSV_ROWS[3]]) + "\n")
    with pytest.raises(DataError, match=message):
        read_detections_csv(path, strict=False)
    with pytest.raises(DataError, match=message):
        list(stream_detections_csv(path, block_bytes=30))


def test_parquet_read_a_row_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stream_predictions_parquet yields one block per row group, rows numbered over
    the file, the same rows as the whole read; its errors are the whole read's."""
    from stages.data import predictions, stream_predictions_parquet
    from stages.data.types import concat_tables

    monkeypatch.setattr(predictions, "CSV_BLOCK_ROWS", 2)
    path = tmp_path / "pred.parquet"
    write_predictions_parquet(path, _predictions())
    parts = list(stream_predictions_parquet(path))
    assert [len(p) for p in parts] == [2, 1]
    _same_rows(concat_tables(parts), read_predictions_parquet(path))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read Parquet predictions"):
        list(stream_predictions_parquet(bad))
