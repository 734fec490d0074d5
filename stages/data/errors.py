"""Errors raised for bad user data: each names the file, the line and what was expected."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class DataError(ValueError):
    """One problem in one input file.

    ``str(err)`` is ``"{path}:{line}: {message}"`` (``"{path}: {message}"`` when the
    problem is not tied to a line), the form editors and CI logs turn into links.

    Attributes:
        path: the offending file (as given by the caller).
        line: 1-based line number, or ``None`` for whole-file problems.
        message: what is wrong and what was expected.
    """

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = None if line is None else int(line)
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"

    def __reduce__(self) -> tuple[type[DataError], tuple[str, int | None, str]]:
        # Keeps the three-argument constructor working across pickling (Prefect, workers).
        return (type(self), (self.path, self.line, self.message))


class DataErrors(ValueError):
    """Every problem a check found, for checks that do not stop at the first one.

    ``str()`` lists the problems one per line, in the order they were found.
    """

    def __init__(self, errors: Iterable[DataError]) -> None:
        self.errors: list[DataError] = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def __len__(self) -> int:
        return len(self.errors)

    def __reduce__(self) -> tuple[type[DataErrors], tuple[list[DataError]]]:
        return (type(self), (self.errors,))
