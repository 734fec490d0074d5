"""Iterate in a background thread, a bounded number of items ahead.

Decoding video (decord releases the GIL), reading the feature store (zarr's I/O) and
collating batches overlap the consumer's work this way. Errors raised while producing are
re-raised in the consumer; leaving the loop early stops the thread after its current item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def in_background(
    items: Iterable[T], *, depth: int = 2, name: str = "bankflow-prefetch"
) -> Generator[T, None, None]:
    """Yield ``items`` in order, produced by a daemon thread up to ``depth`` ahead."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        # Poll so that a consumer that went away (stop set) never leaves us blocked forever.
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, who re-raises it
            put(_Failure(error))

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
