"""A content fingerprint of a dataset, part of every dataset-reading stage's key.

It stands for everything of :class:`DatasetConfig` that is left out of keys (``root``,
``videos_dir``, ``annotations_dir``, ``splits``, ``labelmap``: where files are and what
they are called) by what those files hold:

* every file under the annotations directory, by its path relative to that directory
  and the sha256 of its bytes;
* which file plays which part: the label map and each split's GT, excluded and proposal
  files by the sha256 of their bytes (``absent`` for an optional file that is missing),
  wherever they are (a split file may be an absolute path outside the dataset);
* videos by name and size (re-encoding a video changes its size);
* ``dataset.yaml``, whose values are merged under the config's.

Copying a dataset to another path or machine does not change its fingerprint, so
teammates sharing outputs get the same keys.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from stages.data import DatasetConfig
from stages.framework.keys import file_sha256


def _role_digest(path: Path) -> str:
    return file_sha256(path, field=str(path)) if path.is_file() else "absent"


def dataset_fingerprint(config: DatasetConfig) -> str:
    config = config.resolved()  # dataset.yaml merged: the splits and files actually read
    root = Path(config.root)
    h = hashlib.sha256()
    annotations = root / config.annotations_dir
    if annotations.is_dir():
        for path in sorted(p for p in annotations.rglob("*") if p.is_file()):
            h.update(path.relative_to(annotations).as_posix().encode())
            h.update(bytes.fromhex(file_sha256(path)))
    roles: dict[str, object] = {
        "labelmap": _role_digest(config.annotation_path(config.labelmap)),
        "splits": {
            split: {
                part: None if name is None else _role_digest(config.annotation_path(name))
                for part, name in files.model_dump().items()
            }
            for split, files in sorted(config.splits.items())
        },
    }
    h.update(json.dumps(roles, sort_keys=True).encode())
    videos = config.videos_path
    if videos.is_dir():
        for path in sorted(p for p in videos.iterdir() if p.is_file()):
            h.update(f"{path.name}:{path.stat().st_size}".encode())
    yaml_file = root / "dataset.yaml"
    if yaml_file.is_file():
        h.update(yaml_file.read_bytes())
    return h.hexdigest()[:16]
