"""The framework's error type, apart so that its helpers (disk space) raise it without
importing the framework package (no import cycle: docs/design.md §9)."""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage could not run or its output is unusable (message names stage and path)."""
