"""The one error type of the feature store: always says which store, video and array."""

from __future__ import annotations


class StoreError(ValueError):
    """A feature store is missing, malformed, incomplete or used against its schema.

    The message names the store URL and, where relevant, the video id and array, so that a
    user reading a log line knows which file to look at without a traceback.
    """


def where(url: str, video_id: str | None = None, array: str | None = None) -> str:
    """Format a location prefix for error messages: ``store 'x.zarr', video 'v', array 'a'``."""
    parts = [f"store {url!r}"]
    if video_id is not None:
        parts.append(f"video {video_id!r}")
    if array is not None:
        parts.append(f"array {array!r}")
    return ", ".join(parts)
