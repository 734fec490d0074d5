"""The ``videos`` group of a store or bank, read while writers may be creating it.

A store is created in two metadata writes (the root ``zarr.json``, then ``videos/zarr.json``)
and each video group appears as a directory before its ``zarr.json`` is renamed into place.
A reader that looks in between (a progress probe, a second worker) must see "nothing yet",
not a ``KeyError``/``FileNotFoundError``: these helpers read the group metadata directly.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import zarr
import zarr.errors
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from featurestore.layout import VIDEOS


def open_videos_group(root: zarr.Group, *, create: bool = False) -> zarr.Group | None:
    """The ``videos`` group under ``root``; None while the store is still being created.

    With ``create`` (a writer), a missing group is created (idempotent: the same metadata
    document, written atomically, whoever writes it).
    """
    try:
        return root[VIDEOS]  # type: ignore[return-value]
    except (KeyError, FileNotFoundError, zarr.errors.BaseZarrError):
        if not create:
            return None
    return root.require_group(VIDEOS)


def video_group_states(zstore: Any) -> dict[str, bool]:
    """Every video group with metadata -> its ``complete`` attribute.

    Reads each ``videos/<id>/zarr.json`` concurrently. Directory entries without one (a
    group being created or deleted, a writer's temporary ``*.partial`` file) are skipped.
    """

    async def read_all() -> dict[str, bool]:
        names = [n async for n in zstore.list_dir(VIDEOS) if n != "zarr.json"]
        proto = default_buffer_prototype()
        docs = await asyncio.gather(
            *(zstore.get(f"{VIDEOS}/{n}/zarr.json", prototype=proto) for n in names),
            return_exceptions=True,
        )
        states = {}
        for name, doc in zip(names, docs, strict=True):
            if isinstance(doc, FileNotFoundError | NotADirectoryError) or doc is None:
                continue  # deleted between listing and reading
            if isinstance(doc, BaseException):
                raise doc
            try:
                meta = json.loads(doc.to_bytes())
            except ValueError:
                continue  # cannot happen with atomic writes; a foreign file is not a video
            if isinstance(meta, dict) and meta.get("node_type") == "group":
                states[name] = bool((meta.get("attributes") or {}).get("complete", False))
        return states

    return sync(read_all())
