"""Disk space: one check per stage before writing, one clear line when a write runs out.

A stage that knows its output size sets ``ctx.expected_bytes`` (the extract stage: the
projected size of every split's store, checked against the free space once for the whole
stage). Whatever a stage writes, an ``OSError`` ENOSPC/EDQUOT raised while it computes
becomes a StageError naming the stage, the file, the bytes free and the bytes needed; the
staging directory stays unpublished and the rerun resumes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from stages.framework.errors import StageError


class _Running(Protocol):
    """What a disk-full message names: the stage's context (stages.framework.StageContext)."""

    stage: str
    staging: Path
    expected_bytes: int | None


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def bytes_under(path: Path) -> int:
    """Bytes of the regular files below ``path`` (0 if it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in ``exc``'s chain (zarr and threads re-raise or wrap it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return current
        current = current.__cause__ or current.__context__
    return None


def disk_full_message(stage: str, staging: Path, error: OSError, expected: int | None) -> str:
    """One line: stage, file, bytes free, bytes needed (or written so far), what to do."""
    from featurestore import format_bytes  # zarr, h5py: not imported until a disk fills

    path = Path(error.filename) if error.filename else staging
    free = shutil.disk_usage(_existing_parent(path)).free
    written = bytes_under(staging)
    if expected is not None:
        need = f"the stage needs about {format_bytes(expected)}, {format_bytes(written)} written"
    else:
        need = f"{format_bytes(written)} written so far, more needed"
    return (
        f"stage {stage}: out of disk space writing {path}: {format_bytes(free)} free, {need}; "
        "free some space (or move the work root) and rerun: finished work is kept"
    )


@contextlib.contextmanager
def disk_full_as_stage_error(ctx: _Running) -> Iterator[None]:
    """Turn a disk-full error raised inside the block into one StageError line."""
    try:
        yield
    except Exception as exc:
        error = _disk_full(exc)
        if error is None:
            raise
        message = disk_full_message(ctx.stage, ctx.staging, error, ctx.expected_bytes)
        raise StageError(message) from exc
