"""Ground truth of tube datasets (MultiSports, UCF101-24, JHMDB) from their pickles.

The datasets ship one pickle (often written by Python 2) with the keys ``labels``,
``train_videos``, ``test_videos``, ``nframes``, ``resolution`` and
``gttubes{video: {label_index: [ndarray (n, 5): frame, x1, y1, x2, y2]}}``: pixel
boxes, 1-based frame numbers, one list of videos per split.

Unpickling runs code chosen by whoever wrote the file. These are the datasets' own
GT files, but :func:`read_tube_gt` still refuses to open one unless the caller says
``trust_pickle=True``, so a path from a config or a download never reaches
``pickle.load`` by accident.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.data.errors import DataError

REQUIRED_KEYS = ("labels", "test_videos", "nframes", "resolution", "gttubes")


@dataclass(frozen=True)
class TubeGT:
    """GT tubes of a tube dataset.

    Attributes:
        labels: class names; a class is referred to by its index in this tuple.
        train_videos: one tuple of video names per split (empty if the file has none).
        test_videos: one tuple of video names per split.
        nframes: frames per video.
        resolution: (height, width) in pixels per video.
        tubes: ``{video: {label_index: [float64 (n, 5) frame, x1, y1, x2, y2]}}``,
            pixel boxes, 1-based frames, frames increasing within a tube.
        source: the file it was read from.
    """

    labels: tuple[str, ...]
    train_videos: tuple[tuple[str, ...], ...]
    test_videos: tuple[tuple[str, ...], ...]
    nframes: dict[str, int]
    resolution: dict[str, tuple[int, int]]
    tubes: dict[str, dict[int, list[np.ndarray]]]
    source: str = ""


def read_tube_gt(path: str | Path, *, trust_pickle: bool = False) -> TubeGT:
    """Read a MultiSports/UCF101-24/JHMDB GT pickle (Python 2 or 3).

    Args:
        path: the dataset's GT pickle.
        trust_pickle: must be True: unpickling runs code from the file.

    Raises:
        ValueError: when ``trust_pickle`` is not set.
        DataError: naming the file and what was expected, on a malformed file.
    """
    if not trust_pickle:
        raise ValueError(
            f"{path}: reading a pickle runs code from the file; pass trust_pickle=True "
            "only for a GT file you trust (the dataset's own)"
        )
    try:
        with open(path, "rb") as f:
            # Python-2 pickles store str as bytes; latin-1 maps every byte to one char.
            raw = pickle.load(f, encoding="iso-8859-1")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DataError(path, None, f"cannot unpickle the tube GT ({err})") from err
    return tube_gt_from_dict(raw, source=str(path))


def tube_gt_from_dict(raw: Any, *, source: str = "") -> TubeGT:
    """Normalise an already-loaded GT dict (see :func:`read_tube_gt`) to a :class:`TubeGT`."""
    if not isinstance(raw, dict):
        raise DataError(source, None, f"expected a dict with keys {REQUIRED_KEYS}, got {type(raw)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DataError(source, None, f"missing keys {missing} (expected {REQUIRED_KEYS})")
    labels = tuple(str(x) for x in raw["labels"])
    tubes: dict[str, dict[int, list[np.ndarray]]] = {}
    for video, per_label in raw["gttubes"].items():
        tubes[str(video)] = {}
        for label, tube_list in per_label.items():
            if not 0 <= int(label) < len(labels):
                raise DataError(
                    source, None, f"video {video}: label index {label} outside 0..{len(labels) - 1}"
                )
            arrays = []
            for k, tube in enumerate(tube_list):
                arr = np.asarray(tube, dtype=np.float64)
                if arr.ndim != 2 or arr.shape[1] != 5 or arr.shape[0] == 0:
                    raise DataError(
                        source,
                        None,
                        f"video {video}, label {labels[int(label)]}, tube {k}: shape "
                        f"{arr.shape} (expected (n>0, 5): frame, x1, y1, x2, y2)",
                    )
                if np.any(np.diff(arr[:, 0]) <= 0):
                    raise DataError(
                        source,
                        None,
                        f"video {video}, label {labels[int(label)]}, tube {k}: frames not "
                        "strictly increasing",
                    )
                arrays.append(arr)
            tubes[str(video)][int(label)] = arrays
    return TubeGT(
        labels=labels,
        train_videos=_splits(raw.get("train_videos", [])),
        test_videos=_splits(raw["test_videos"]),
        nframes={str(v): int(n) for v, n in raw["nframes"].items()},
        resolution={str(v): (int(hw[0]), int(hw[1])) for v, hw in raw["resolution"].items()},
        tubes=tubes,
        source=source,
    )


def _splits(value: Any) -> tuple[tuple[str, ...], ...]:
    # Files hold either a list of splits (lists of names) or a single flat list.
    items = list(value)
    if items and isinstance(items[0], str):
        return (tuple(items),)
    return tuple(tuple(str(v) for v in split) for split in items)
