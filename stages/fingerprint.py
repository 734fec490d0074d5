"""A content fingerprint of a dataset directory, part of every dataset-reading stage's key.

Annotation files are small and hashed whole; videos are large and identified by name and
size (re-encoding a video changes its size; copying a dataset to another machine does not
change its fingerprint, so teammates sharing outputs get the same keys).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from stages.data import DatasetConfig


def dataset_fingerprint(config: DatasetConfig) -> str:
    root = Path(config.root)
    h = hashlib.sha256()
    annotations = root / config.annotations_dir
    videos = root / config.videos_dir
    for path in sorted(p for p in annotations.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    if videos.is_dir():
        for path in sorted(p for p in videos.iterdir() if p.is_file()):
            h.update(f"{path.name}:{path.stat().st_size}".encode())
    yaml_file = root / "dataset.yaml"
    if yaml_file.is_file():
        h.update(yaml_file.read_bytes())
    return h.hexdigest()[:16]
