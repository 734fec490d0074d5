"""Names that become parts of paths: video ids, run, bank and split names.

A video id picks ``<videos_dir>/<id>.mp4``; a split names ``features/<split>.zarr``; run
and bank names label outputs. Each is checked once, where it is read, so that none can
point outside its directory: no path separator, no ``..``, no leading dot, only
printable characters, not empty. Real ids pass (YouTube's ``-5KQ66BBWC4``,
``_145Aa_xkuE``; ``w0_train_00``).
"""

from __future__ import annotations

_SEPARATORS = ("/", "\\")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one path component, or None when it can."""
    if not name:
        return "is empty"
    if ".." in name:
        return "contains '..'"
    if any(sep in name for sep in _SEPARATORS):
        return "contains a path separator"
    if name.startswith("."):
        return "starts with a dot"
    if not name.isprintable() or name != name.strip():
        return "has non-printable characters or surrounding spaces"
    return None


def check_name(name: str, what: str) -> str:
    """``name`` unchanged, or ValueError saying which ``what`` (e.g. "run name") is bad."""
    problem = name_problem(str(name))
    if problem is not None:
        raise ValueError(
            f"{what} {name!r} {problem} (expected one file-name part: no '/' or '\\\\', "
            "no '..', no leading dot, printable)"
        )
    return name
