"""Prediction writers: AVA CSV (for the official tools) and Parquet (for everything else)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .csvparse import shared_strings
from .errors import DataError
from .types import NO_ACTION, BoxTable, PredictionRows, RowBlocks

CSV_BLOCK_ROWS = 1 << 18  # rows per write (CSV) or row group (Parquet) of the writers below
_PARQUET_COLUMNS = ("video", "timestamp", "x1", "y1", "x2", "y2", "action", "person", "score")


def row_blocks(table: BoxTable | PredictionRows, rows: int) -> Iterator[BoxTable]:
    """``table``'s rows in order, about ``rows`` at a time (views of a BoxTable; a
    PredictionRows makes each block as it goes, whole keyframes)."""
    if isinstance(table, PredictionRows):
        yield from table.blocks(rows)
        return
    for lo in range(0, len(table), rows):
        yield table.take(slice(lo, lo + rows))


def write_predictions_csv(
    path: str | Path,
    table: BoxTable | PredictionRows,
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
        for block in row_blocks(table, CSV_BLOCK_ROWS):
            if not len(block):
                continue
            actions = ["" if a == NO_ACTION else str(a) for a in block.action.tolist()]
            # Column lists zipped into row tuples: about twice as fast as row by row.
            columns = (
                block.video.tolist(),
                block.timestamp.tolist(),
                *(block.boxes[:, k].tolist() for k in range(4)),
                actions,
                block.score.tolist(),
            )
            text = "\n".join(map(row_format.__mod__, zip(*columns, strict=True))) + "\n"
            out.write(text.encode("utf-8"))


def write_predictions_parquet(path: str | Path, table: BoxTable | PredictionRows) -> None:
    """Write ``table`` as Parquet (columns video, timestamp, x1, y1, x2, y2, action,
    person, score; full float64 precision), atomically."""
    import pyarrow as pa  # here: importing the readers of a dataset needs no Arrow
    import pyarrow.parquet as pq

    def arrow(block: BoxTable) -> pa.Table:
        return pa.table(
            {
                "video": pa.array(block.video, type=pa.string()),
                "timestamp": pa.array(block.timestamp, type=pa.int64()),
                **{
                    name: pa.array(block.boxes[:, k], type=pa.float64())
                    for k, name in enumerate(("x1", "y1", "x2", "y2"))
                },
                "action": pa.array(block.action, type=pa.int64()),
                "person": pa.array(block.person, type=pa.int64()),
                "score": pa.array(block.score, type=pa.float64()),
            }
        )

    # A block of rows (one row group) at a time: Arrow copies of a whole AVA-scale table
    # (9 M rows) held GBs (issue 22).
    schema = arrow(BoxTable.empty()).schema
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for block in row_blocks(table, CSV_BLOCK_ROWS):
            writer.write_table(arrow(block))


def read_predictions_parquet(path: str | Path) -> BoxTable:
    """Read a file written by :func:`write_predictions_parquet`; ``line`` is the 1-based
    row number."""
    import pyarrow as pa  # here: importing the readers of a dataset needs no Arrow
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise _unreadable(path, err) from err
    _check_columns(path, arrow.column_names)
    return _parquet_rows(path, arrow, first_line=1)


def stream_predictions_parquet(path: str | Path) -> RowBlocks:
    """:func:`read_predictions_parquet` a row group at a time
    (:class:`~stages.data.types.RowBlocks`): an AVA-scale file (9.2 M rows) is never held
    whole (issue 22)."""
    return RowBlocks(lambda: _parquet_blocks(path), str(path))


def _parquet_blocks(path: str | Path) -> Iterator[BoxTable]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise _unreadable(path, err) from err
    _check_columns(path, file.schema_arrow.names)
    first = 1
    with file:
        for group in range(file.num_row_groups):
            try:
                arrow = file.read_row_group(group, columns=list(_PARQUET_COLUMNS))
            except (OSError, pa.ArrowInvalid) as err:
                raise _unreadable(path, err) from err
            if arrow.num_rows:
                yield _parquet_rows(path, arrow, first_line=first)
                first += arrow.num_rows


def _unreadable(path: str | Path, err: Exception) -> DataError:
    return DataError(path, None, f"cannot read Parquet predictions: {err}")


def _check_columns(path: str | Path, names: list[str]) -> None:
    missing = [c for c in _PARQUET_COLUMNS if c not in names]
    if missing:
        raise DataError(
            path, None, f"missing columns {missing} (expected {', '.join(_PARQUET_COLUMNS)})"
        )


def _parquet_rows(path: str | Path, arrow: Any, *, first_line: int) -> BoxTable:
    """The rows of an Arrow table of :data:`_PARQUET_COLUMNS` (the whole file or a row
    group starting at row ``first_line``)."""

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
        line=np.arange(first_line, first_line + n, dtype=np.int64),
        source=str(path),
    )
