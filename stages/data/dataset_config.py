"""A dataset directory's configuration: where its files are and how to read them.

Layout (every name can be changed in the config)::

    <root>/dataset.yaml            optional: config values (written by the demo world)
    <root>/videos/<video_id>.mp4   (or .mkv, .webm, .avi, .mov)
    <root>/annotations/action_list.pbtxt
    <root>/annotations/train.csv, excluded_timestamps_train.csv, person_boxes_train.csv
    <root>/annotations/val.csv, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import yaml

from stages.framework.keys import InKey, NotInKey

from .errors import DataError
from .tube_dataset import TubeFiles

DATASET_YAML = "dataset.yaml"


class SplitFiles(pydantic.BaseModel):
    """Annotation files of one split, relative to ``annotations_dir`` (or absolute).

    ``gt`` must exist when set. ``excluded`` and ``proposals`` must exist when a config
    names them (:meth:`named_files`); the default names (``excluded_timestamps_<split>.csv``,
    ``person_boxes_<split>.csv``) may be missing.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    gt: NotInKey[str | None] = None
    excluded: NotInKey[str | None] = None
    proposals: NotInKey[str | None] = None

    def named_files(self) -> dict[str, str]:
        """Field -> file name of the files that must exist: ``gt`` and every file a
        config set explicitly (the defaults of :func:`_default_splits` are not)."""
        fields = {"gt"} | (self.model_fields_set & {"excluded", "proposals"})
        return {
            f: getattr(self, f)
            for f in ("gt", "excluded", "proposals")
            if f in fields and getattr(self, f)
        }


def _default_splits() -> dict[str, SplitFiles]:
    # Constructed as if only ``gt`` was given: a dataset without the default excluded or
    # proposal files is fine; a file a config names must exist.
    return {
        split: SplitFiles.model_construct(
            _fields_set={"gt"},
            gt=f"{split}.csv",
            excluded=f"excluded_timestamps_{split}.csv",
            proposals=f"person_boxes_{split}.csv",
        )
        for split in ("train", "val")
    }


class DatasetConfig(pydantic.BaseModel):
    """Where a dataset's files are and how to read them.

    Values set explicitly win over ``<root>/dataset.yaml``, which wins over the defaults
    (see :meth:`resolved`).

    Attributes:
        root: the dataset directory.
        videos_dir, annotations_dir: sub-directories of ``root`` (or absolute paths).
        splits: split name -> its files.
        labelmap: the label map file in ``annotations_dir``.
        timestamp_offset: seconds to subtract from a CSV timestamp to get the time in the
            video file; None infers 0 or 900 from the video lengths.
        evaluated_classes: label ids that are evaluated (None: all in the label map).
        exclusive_classes: mutually exclusive (softmax) label ids; None: those with
            label_type PERSON_MOVEMENT (none when the label map has no types).
        tubes: set for a tube dataset (MultiSports, UCF101-24, JHMDB): its GT file and
            keyframe sampling, see :mod:`stages.data.tube_dataset`; then ``splits``
            name only the proposal files (CSV rows with frame numbers as timestamps)
            and ``labelmap`` is not read (the classes are the GT file's labels).
        timestamp_offsets: per-video offsets (AVA-Kinetics), a CSV
            ``video_id,offset[,source]`` in ``annotations_dir``; Kinetics clips named
            ``<youtube_id>_<start>_<end>`` need no row (see :mod:`stages.data.kinetics`).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    root: NotInKey[Path]
    videos_dir: NotInKey[str] = "videos"
    annotations_dir: NotInKey[str] = "annotations"
    splits: NotInKey[dict[str, SplitFiles]] = pydantic.Field(default_factory=_default_splits)
    labelmap: NotInKey[str] = "action_list.pbtxt"
    timestamp_offset: InKey[float | None] = None
    evaluated_classes: InKey[list[int] | None] = None
    exclusive_classes: InKey[list[int] | None] = None
    tubes: InKey[TubeFiles | None] = None
    # A CSV of per-video timestamp offsets in annotations_dir (AVA-Kinetics); its content
    # enters the key through the dataset fingerprint.
    timestamp_offsets: InKey[str | None] = None

    @classmethod
    def from_yaml(cls, path: str | Path, *, root: str | Path | None = None) -> DatasetConfig:
        """Load a config file. ``root`` (if given) overrides the file's; a relative root
        in the file is relative to the file's directory."""
        data = _load_yaml_mapping(Path(path))
        if root is not None:
            data["root"] = Path(root)
        elif "root" in data:
            data["root"] = Path(path).parent / str(data["root"])
        else:
            raise DataError(path, None, "no 'root' (the dataset directory) given")
        return _validate(cls, data, path)

    def resolved(self) -> DatasetConfig:
        """This config with ``<root>/dataset.yaml`` merged under the explicitly set values."""
        base_path = self.root / DATASET_YAML
        if not base_path.is_file():
            return self
        base = _load_yaml_mapping(base_path)
        if "root" in base:
            raise DataError(base_path, None, "must not set 'root' (it is the directory it is in)")
        base.update(self.model_dump(exclude_unset=True))
        return _validate(type(self), base, base_path)

    def annotation_path(self, name: str) -> Path:
        return self.root / self.annotations_dir / name

    @property
    def videos_path(self) -> Path:
        return self.root / self.videos_dir


def _load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(path, None, f"cannot read: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise DataError(path, line, f"invalid YAML: {getattr(err, 'problem', err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(path, None, f"expected a mapping of config keys, got {type(data).__name__}")
    return data


def _validate(cls: type[DatasetConfig], data: dict[str, Any], path: str | Path) -> DatasetConfig:
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as err:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise DataError(path, None, f"invalid dataset config: {details}") from err
