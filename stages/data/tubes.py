"""Ground truth of tube datasets (MultiSports, UCF101-24, JHMDB) from their pickles.

The datasets ship one pickle (often written by Python 2) with the keys ``labels``,
``train_videos``, ``test_videos``, ``nframes``, ``resolution`` and
``gttubes{video: {label_index: [ndarray (n, 5): frame, x1, y1, x2, y2]}}``: pixel
boxes, 1-based frame numbers, one list of videos per split.

Unpickling runs code chosen by whoever wrote the file. These are the datasets' own
GT files, but :func:`read_tube_gt` still refuses to open one unless the caller says
``trust_pickle=True``, so a path from a config or a download never reaches
``pickle.load`` by accident.

The same content as JSON needs no such trust (:func:`read_tube_json`,
:func:`write_tube_json`): the same keys, ``gttubes`` label keys as strings, tubes as
lists of ``[frame, x1, y1, x2, y2]`` rows, ``resolution`` as ``[height, width]``.
:func:`read_tube_file` picks the reader by suffix (``.json`` or ``.pkl``/``.pickle``).
"""

from __future__ import annotations

import json
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


def read_tube_json(path: str | Path) -> TubeGT:
    """Read the JSON form of a tube GT file (module docstring); no code runs.

    Raises:
        DataError: naming the file (and line for bad JSON) and what was expected.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(path, None, f"cannot read the tube GT: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, f"invalid JSON: {err.msg}") from err
    return tube_gt_from_dict(raw, source=str(path))


def read_tube_file(path: str | Path, *, trust_pickle: bool = False) -> TubeGT:
    """The tube GT at ``path``: JSON by default, a pickle (``.pkl``/``.pickle``) only with
    ``trust_pickle``."""
    suffix = Path(path).suffix.lower()
    if suffix in (".pkl", ".pickle"):
        if not trust_pickle:
            raise DataError(
                path,
                None,
                "is a pickle, and reading one runs code from the file: set trust_pickle: true "
                "in the dataset's tubes config for a file you trust, or convert it to JSON",
            )
        return read_tube_gt(path, trust_pickle=True)
    return read_tube_json(path)


def tube_gt_to_dict(gt: TubeGT) -> dict[str, Any]:
    """The JSON-able dict of ``gt`` (the layout :func:`read_tube_json` reads)."""
    return {
        "labels": list(gt.labels),
        "train_videos": [list(s) for s in gt.train_videos],
        "test_videos": [list(s) for s in gt.test_videos],
        "nframes": dict(gt.nframes),
        "resolution": {v: list(hw) for v, hw in gt.resolution.items()},
        "gttubes": {
            v: {str(lb): [np.round(t, 3).tolist() for t in ts] for lb, ts in per.items()}
            for v, per in gt.tubes.items()
        },
    }


def write_tube_json(path: str | Path, gt: TubeGT) -> None:
    """Write ``gt`` as JSON via a temporary file and a rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(tube_gt_to_dict(gt), separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)


def tube_gt_from_dict(raw: Any, *, source: str = "") -> TubeGT:
    """Normalise an already-loaded GT dict (see :func:`read_tube_gt`) to a :class:`TubeGT`."""
    if not isinstance(raw, dict):
        raise DataError(source, None, f"expected a dict with keys {REQUIRED_KEYS}, got {type(raw)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DataError(source, None, f"missing keys {missing} (expected {REQUIRED_KEYS})")
    for key in ("gttubes", "nframes", "resolution"):
        if not isinstance(raw[key], dict):
            raise DataError(source, None, f"{key!r} must map video names to values")
    labels = tuple(str(x) for x in raw["labels"])
    tubes: dict[str, dict[int, list[np.ndarray]]] = {}
    for video, per_label in raw["gttubes"].items():
        tubes[str(video)] = {}
        if not isinstance(per_label, dict):
            raise DataError(source, None, f"video {video}: gttubes entry must map labels to tubes")
        for label, tube_list in per_label.items():
            if not str(label).lstrip("-").isdigit() or not 0 <= int(label) < len(labels):
                raise DataError(
                    source, None, f"video {video}: label index {label} outside 0..{len(labels) - 1}"
                )
            arrays = []
            for k, tube in enumerate(tube_list):
                try:
                    arr = np.asarray(tube, dtype=np.float64)
                except (TypeError, ValueError):
                    arr = np.empty((0,))
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
