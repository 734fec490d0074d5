"""Prediction writers: AVA CSV (for the official tools) and Parquet (for everything else)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .csvparse import shared_strings
from .errors import DataError
from .types import NO_ACTION, BoxTable

CSV_BLOCK_ROWS = 1 << 18  # rows per write (CSV) or row group (Parquet) of the writers below
_PARQUET_COLUMNS = ("video", "timestamp", "x1", "y1", "x2", "y2", "action", "person", "score")


def write_predictions_csv(
    path: str | Path,
    table: BoxTable,
    *,
    float_format: str = "%.3f",
    score_format: str = "%.6g",
) -> None:
    """Write ``table`` as an 8-column AVA CSV: ``video_id, %04d timestamp, x1, y1, x2, y2,
    action_id, score`` (no header), atomically.

    Boxes use ``float_format`` (AVA's 3 decimals); scores use ``score_format``, 6
    significant digits by default so that close scores keep their order (``%.3f`` would
    turn 0.0004 and 0.0001 into a tie). ``NO_ACTION`` is written as an empty field.
    """
    row_format = "%s,%04d," + ",".join([float_format] * 4) + ",%s," + score_format
    with atomic_path(path) as tmp, tmp.open("wb") as out:
        # A block of rows at a time: the Python objects of a whole AVA-scale table (8 M
        # rows) held several GB (issue 22). Same bytes as one join over every row.
        for lo in range(0, len(table), CSV_BLOCK_ROWS):
            block = slice(lo, lo + CSV_BLOCK_ROWS)
            actions = ["" if a == NO_ACTION else str(a) for a in table.action[block].tolist()]
            # Column lists zipped into row tuples: about twice as fast as row by row.
            columns = (
                table.video[block].tolist(),
                table.timestamp[block].tolist(),
                *(table.boxes[block, k].tolist() for k in range(4)),
                actions,
                table.score[block].tolist(),
            )
            text = "\n".join(map(row_format.__mod__, zip(*columns, strict=True))) + "\n"
            out.write(text.encode("utf-8"))


def write_predictions_parquet(path: str | Path, table: BoxTable) -> None:
    """Write ``table`` as Parquet (columns video, timestamp, x1, y1, x2, y2, action,
    person, score; full float64 precision), atomically."""
    import pyarrow as pa  # here: importing the readers of a dataset needs no Arrow
    import pyarrow.parquet as pq

    def block(rows: slice) -> pa.Table:
        boxes = table.boxes[rows]
        return pa.table(
            {
                "video": pa.array(table.video[rows], type=pa.string()),
                "timestamp": pa.array(table.timestamp[rows], type=pa.int64()),
                **{
                    name: pa.array(boxes[:, k], type=pa.float64())
                    for k, name in enumerate(("x1", "y1", "x2", "y2"))
                },
                "action": pa.array(table.action[rows], type=pa.int64()),
                "person": pa.array(table.person[rows], type=pa.int64()),
                "score": pa.array(table.score[rows], type=pa.float64()),
            }
        )

    # A block of rows (one row group) at a time: Arrow copies of a whole AVA-scale table
    # (9 M rows) held GBs (issue 22).
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, block(slice(0, 0)).schema) as writer:
        for lo in range(0, len(table), CSV_BLOCK_ROWS):
            writer.write_table(block(slice(lo, lo + CSV_BLOCK_ROWS)))


def read_predictions_parquet(path: str | Path) -> BoxTable:
    """Read a file written by :func:`write_predictions_parquet`; ``line`` is the 1-based
    row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(path, None, f"cannot read Parquet predictions: {err}") from err
    missing = [c for c in _PARQUET_COLUMNS if c not in arrow.column_names]
    if missing:
        raise DataError(
            path, None, f"missing columns {missing} (expected {', '.join(_PARQUET_COLUMNS)})"
        )

    def col(name: str, dtype: type) -> np.ndarray:
        column = arrow.column(name)
        if column.null_count:
            raise DataError(path, None, f"column {name!r} has {column.null_count} null values")
        return column.to_numpy().astype(dtype, copy=False)

    n = arrow.num_rows
    return BoxTable(
        video=shared_strings(arrow.column("video")),
        timestamp=col("timestamp", np.int64),
        boxes=np.stack([col(c, np.float64) for c in ("x1", "y1", "x2", "y2")], axis=1).reshape(
            n, 4
        ),
        action=col("action", np.int64),
        person=col("person", np.int64),
        score=col("score", np.float64),
        line=np.arange(1, n + 1, dtype=np.int64),
        source=str(path),
    )
