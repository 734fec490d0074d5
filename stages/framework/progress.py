"""A progress bar on stderr for long loops (training epochs), for people at a terminal.

Shown only when stderr is a terminal: CI, Prefect workers and log files get nothing extra
(the per-epoch log lines are their record; a redrawn bar would only clutter a file).
``BANKFLOW_PROGRESS=1`` shows it anyway (when stderr is not a terminal rich writes each bar
once, as it ends; a transient one not at all), ``BANKFLOW_PROGRESS=0`` hides it everywhere.

The bar only displays what it is given: it draws no random numbers and changes nothing in
the loop; rich redraws it from its own thread at most 10 times a second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

ENV = "BANKFLOW_PROGRESS"


def enabled() -> bool:
    """``BANKFLOW_PROGRESS`` ("1" on, "0" off), else whether stderr is a terminal."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr is not None and sys.stderr.isatty()


class NoBar:
    """What :func:`progress_bar` gives when the bar is off: ``advance`` does nothing."""

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass


class Bar:
    """A running rich bar; ``advance(n, loss=…)`` moves it and shows the fields after it."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: Any) -> None:
        shown = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, fields=" ".join(shown))


@contextmanager
def progress_bar(
    total: int, description: str, *, unit: str = "step", transient: bool = False
) -> Iterator[Bar | NoBar]:
    """A bar ``description ━━━━ unit i/total fields elapsed`` on stderr while the block runs,
    or a :class:`NoBar` when disabled (see :func:`enabled`). ``transient``: erase it at the end.
    """
    if not enabled():
        yield NoBar()
        return
    # A console of its own (resolving sys.stderr when it writes): bars of concurrent stages
    # never share one live display.
    console = Console(stderr=True)
    if transient and not console.is_interactive:  # a file would only get an empty line
        yield NoBar()
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(unit),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fields]}"),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
    )
    with progress:
        yield Bar(progress, progress.add_task(description, total=total, fields=""))
