"""Fast, typed parsing of headerless AVA-style CSV files.

The fast path is ``pyarrow.csv`` with explicit column types (a million rows in well under
a second). pyarrow's own errors name neither the line nor the file, so when it rejects a
file we re-scan the text in Python, which is slow but only runs on bad files, to find
every offending line and say what was expected there.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

# Column kinds: "str" (never null), "int" (integer, empty allowed when nullable),
# "float" (any float notation, including nan/inf; empty allowed when nullable).


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str" | "int" | "float"
    nullable: bool = False


@dataclass(frozen=True)
class ParsedCsv:
    """Columns of a parsed file: numpy arrays, one entry per non-empty line.

    ``columns[name]`` is an object array of ``str`` for "str" columns, int64 for "int"
    columns (nulls replaced by ``null_int``) and float64 for "float" columns (nulls are
    NaN). ``lines`` holds the 1-based line number of every row.
    """

    columns: dict[str, np.ndarray]
    lines: np.ndarray
    ncols: int


def _first_row_width(data: bytes) -> int | None:
    """Column count of the first non-empty line, or None when there is none."""
    for raw in io.BytesIO(data):
        if raw.strip(b"\r\n"):
            return len(next(csv.reader([raw.decode("utf-8", errors="replace")])))
    return None


def _line_numbers(data: bytes, nrows: int) -> np.ndarray:
    """1-based line numbers of the non-empty lines (pyarrow skips empty lines)."""
    # As many rows as lines means no line was skipped (bytes.count is a fast scan).
    nlines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if nrows == nlines:
        return np.arange(1, nrows + 1, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate([[0], ends + 1])
    ends = np.concatenate([ends, [len(buf)]])
    length = ends - starts
    # A "\r\n" line holding only "\r" is empty too.
    cr_only = (length == 1) & (buf[np.minimum(starts, len(buf) - 1)] == ord("\r"))
    nonempty = np.flatnonzero((length > 0) & ~cr_only) + 1
    return nonempty[:nrows].astype(np.int64)


def scan_rows(
    path: str | Path,
    data: bytes,
    layouts: dict[int, list[Column]],
    *,
    limit: int | None = None,
    first_line: int = 1,
    expected: int | None = None,
) -> list[DataError]:
    """Every structural problem in the file, line by line (the slow path).

    Args:
        layouts: allowed column counts, each with its column list. All rows must have the
            count of the first row.
        limit: stop after this many problems (None: find them all).
        first_line: the line number of ``data``'s first line (a part of a file).
        expected: the column count of the file's first row, when ``data`` is a later part.
    """
    problems: list[DataError] = []
    text = data.decode("utf-8", errors="replace")
    allowed = " or ".join(str(n) for n in sorted(layouts))
    for number, raw in enumerate(io.StringIO(text), start=first_line):
        if limit is not None and len(problems) >= limit:
            break
        if not raw.strip("\r\n"):
            continue
        fields = next(csv.reader([raw]))
        if expected is None and len(fields) in layouts:
            expected = len(fields)
        if len(fields) not in layouts or len(fields) != expected:
            want = allowed if expected is None else f"{expected} (like the first row)"
            names = ", ".join(c.name for c in layouts[max(layouts)])
            problems.append(
                DataError(
                    path,
                    number,
                    f"expected {want} columns ({names}), got {len(fields)}: {raw.strip()!r}",
                )
            )
            continue
        for column, value in zip(layouts[expected], fields, strict=True):
            message = _field_problem(column, value)
            if message:
                problems.append(DataError(path, number, message))
                break
    return problems


def _field_problem(column: Column, value: str) -> str | None:
    if column.kind == "str":
        return None
    if value == "":
        return None if column.nullable else f"{column.name} is empty (expected a number)"
    try:
        if column.kind == "int":
            int(value)
        else:
            float(value)
    except ValueError:
        what = "an integer" if column.kind == "int" else "a number"
        return f"{column.name} {value!r} is not {what}"
    return None


def parse_csv(
    path: str | Path, layouts: dict[int, list[Column]], *, null_int: int
) -> ParsedCsv | None:
    """Parse a headerless CSV whose rows have one of the column layouts in ``layouts``.

    Returns None for a file with no rows (empty or only blank lines). Raises
    :class:`DataError` naming the first bad line when the structure or a number is wrong.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(path, None, f"cannot read file: {err.strerror or err}") from err
    ncols = _first_row_width(data)
    if ncols is None:
        return None
    if ncols not in layouts:
        raise scan_rows(path, data, layouts, limit=1)[0]
    return _parse_part(path, data, layouts, ncols, null_int=null_int, first_line=1)


def iter_csv(
    path: str | Path,
    layouts: dict[int, list[Column]],
    *,
    null_int: int,
    block_bytes: int = 1 << 24,
) -> Iterator[ParsedCsv]:
    """:func:`parse_csv` a part of the file at a time: about ``block_bytes`` of whole lines
    per part, so a file of millions of rows is never held whole (issue 22). Parts come in
    file order with their own line numbers; a file without rows yields none. The same
    errors as :func:`parse_csv`, raised when the pass reaches the bad line (quoted fields
    spanning lines are not supported here)."""
    ncols: int | None = None
    line = 1  # number of the part's first line
    try:
        with Path(path).open("rb") as f:
            rest = b""
            while True:
                chunk = f.read(block_bytes)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                if chunk and cut == 0:  # no whole line yet: read on
                    rest = data
                    continue
                part, rest = data[:cut], data[cut:]
                width = _first_row_width(part) if part else None
                if width is not None:  # a part with rows (not only blank lines)
                    if ncols is None:  # the file's first row
                        ncols = width
                        if ncols not in layouts:
                            raise scan_rows(path, part, layouts, limit=1, first_line=line)[0]
                    yield _parse_part(
                        path, part, layouts, ncols, null_int=null_int, first_line=line
                    )
                line += part.count(b"\n")
                if not chunk:
                    return
    except OSError as err:
        raise DataError(path, None, f"cannot read file: {err.strerror or err}") from err


def _parse_part(
    path: str | Path,
    data: bytes,
    layouts: dict[int, list[Column]],
    ncols: int,
    *,
    null_int: int,
    first_line: int,
) -> ParsedCsv:
    """Parse ``data`` (whole lines of the file from line ``first_line``, every row of
    ``ncols`` columns)."""
    columns = layouts[ncols]
    # Imported here: reading a config (stages.data.dataset) needs no CSV parser.
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def first_problem(otherwise: str) -> DataError:
        problems = scan_rows(path, data, layouts, limit=1, first_line=first_line, expected=ncols)
        return problems[0] if problems else DataError(path, None, otherwise)

    arrow_types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    convert = pacsv.ConvertOptions(
        column_types={c.name: arrow_types[c.kind] for c in columns},
        null_values=[""],  # "nan"/"NA" stay values (NaN, a video id), not nulls
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    read = pacsv.ReadOptions(column_names=[c.name for c in columns], block_size=1 << 24)
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=read, convert_options=convert)
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise first_problem(f"cannot parse as CSV: {err}") from err
    out: dict[str, np.ndarray] = {}
    for column in columns:
        values = table.column(column.name)
        if column.kind == "str":
            out[column.name] = shared_strings(values)
            continue
        if values.null_count and not column.nullable:
            # Only reachable for empty required numbers: locate and name them.
            raise first_problem(f"column {column.name} has empty values")
        if column.kind == "int":
            out[column.name] = values.fill_null(null_int).to_numpy().astype(np.int64, copy=False)
        else:
            out[column.name] = values.to_numpy(zero_copy_only=False).astype(np.float64)
    lines = _line_numbers(data, table.num_rows) + (first_line - 1)
    return ParsedCsv(columns=out, lines=lines, ncols=ncols)


def shared_strings(values: Any) -> np.ndarray:
    """A string column as an object array [N] holding one Python ``str`` per distinct
    value, shared by its rows: an AVA-scale predictions table repeats a few hundred video
    ids over millions of rows, and a string object per row took ~60 bytes each (issue 22).
    ``values``: a pyarrow string Array or ChunkedArray."""
    import pyarrow as pa  # here: importing the readers needs no Arrow

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.empty(0, dtype=object)
    encoded = values.dictionary_encode()
    distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=object).reshape(-1)
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)]
