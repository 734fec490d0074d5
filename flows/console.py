"""What ``bankflow run`` prints: bankflow's lines on the terminal, Prefect's in a log file.

Prefect logs its state changes and, on a failure, the full traceback of the flow and of
every task run to the console, above bankflow's one-line error. ``prefect_output_to``
moves Prefect's console handlers onto a file (``<PREFECT_HOME>/prefect.log``), so that the
terminal shows one line per error and the traceback is still at hand.
"""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunFormatter(logging.Formatter):
    """:data:`FORMAT`, with the flow or task run a Prefect record belongs to named as
    Prefect's console does (``Task run 'track-7c1' - Finished in state Cached(...)``)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for kind, attr in (("Task run", "task_run_name"), ("Flow run", "flow_run_name")):
            name = getattr(record, attr, None)
            if name:
                head, sep, message = line.partition(f"{record.name}: ")
                return f"{head}{sep}{kind} {name!r} - {message}"
        return line


def _is_console(handler: logging.Handler) -> bool:
    """Prefect's console handlers (not a user's or pytest's handlers on the root logger)."""
    return type(handler).__name__ in ("PrefectConsoleHandler", "_SafeStreamHandler")


def prefect_output_to(path: Path) -> logging.Handler:
    """Replace every console handler of the ``prefect*`` loggers by one file handler."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(RunFormatter(FORMAT))
    # Prefect's config puts its console handler on the root logger (and may on its own).
    names = [
        "",
        "prefect",
        *(n for n in logging.root.manager.loggerDict if n.startswith("prefect")),
    ]
    for name in names:
        logger = logging.getLogger(name)
        consoles = [h for h in logger.handlers if _is_console(h)]
        for handler in consoles:
            logger.removeHandler(handler)
        if consoles:
            logger.addHandler(to_file)
    return to_file
