"""An AVA-format dataset directory: its configuration and lazy access to its files.

Layout (every name can be changed in the config)::

    <root>/dataset.yaml            optional: config values (written by the demo world)
    <root>/videos/<video_id>.mp4   (or .mkv, .webm, .avi, .mov)
    <root>/annotations/action_list.pbtxt
    <root>/annotations/train.csv, excluded_timestamps_train.csv, person_boxes_train.csv
    <root>/annotations/val.csv, ...
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import yaml

from stages.framework.keys import InKey, NotInKey

from .ava import read_detections_csv, read_excluded_csv, read_gt_csv
from .errors import DataError
from .kinetics import clip_offset, find_clip, read_offsets_csv
from .labelmap import read_labelmap
from .tube_dataset import (
    TubeFiles,
    load_tube_gt,
    on_keyframes,
    split_videos,
    tube_box_table,
    tube_keyframes,
    tube_labelmap,
)
from .tubes import TubeGT
from .types import BoxTable, ExcludedKeyframes, LabelMap
from .videos import VIDEO_EXTENSIONS, VideoInfo, find_video, probe_video

DATASET_YAML = "dataset.yaml"
AVA_OFFSET = 900.0  # AVA clips start 900 s into the movie; timestamps are movie seconds
POSE_LABEL_TYPE = "PERSON_MOVEMENT"


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


def unique_keyframes(video: np.ndarray, timestamp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (video, timestamp) pairs sorted by video id then timestamp.

    Returns: video ``str`` object array [K], timestamp int64 [K].
    """
    if video.shape[0] == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    names, video_index = np.unique(video.astype(str), return_inverse=True)
    pairs = np.unique(np.stack([video_index.astype(np.int64), timestamp], axis=1), axis=0)
    return names[pairs[:, 0]].astype(object), pairs[:, 1].copy()


def infer_timestamp_offset(tables: list[BoxTable], durations: dict[str, float]) -> float:
    """0 if every timestamp t lies in [0, duration] of its video, else 900 (AVA) if every
    t - 900 does. Rows of videos without a known duration are ignored.

    Raises:
        DataError: naming the first row that fits neither (or, when every row fits one
            of them but not all the same one, the first row that misses the offset most
            rows fit).
    """
    rows: list[tuple[BoxTable, np.ndarray, np.ndarray]] = []
    for table in tables:
        dur = np.array([durations.get(str(v), np.nan) for v in table.video], dtype=np.float64)
        known = ~np.isnan(dur)

        def fits(offset: float, table: BoxTable = table, dur: np.ndarray = dur) -> np.ndarray:
            seconds = table.timestamp - offset
            return (seconds >= 0) & (seconds <= dur)

        fit0, fit900 = fits(0.0) | ~known, fits(AVA_OFFSET) | ~known
        rows.append((table, fit0, fit900))
    if all(fit0.all() for _, fit0, _ in rows):
        return 0.0
    if all(fit900.all() for _, _, fit900 in rows):
        return AVA_OFFSET
    neither = [(t, np.flatnonzero(~a & ~b)) for t, a, b in rows]
    culprits = [(t, int(idx[0])) for t, idx in neither if idx.size]
    if culprits:
        table, row = culprits[0]
        d = durations[str(table.video[row])]
        what = (
            f"fits neither offset 0 (0 <= t <= {d:.2f}) nor the AVA offset {AVA_OFFSET:g} "
            f"({AVA_OFFSET:g} <= t <= {AVA_OFFSET + d:.2f})"
        )
    else:
        # Every row fits one offset, but not all the same one: blame the minority.
        n0 = sum(int(fit0.sum()) for _, fit0, _ in rows)
        n900 = sum(int(fit900.sum()) for _, _, fit900 in rows)
        best, other, k = (0.0, AVA_OFFSET, 1) if n0 >= n900 else (AVA_OFFSET, 0.0, 2)
        table, row = next((r[0], int(np.flatnonzero(~r[k])[0])) for r in rows if not r[k].all())
        d = durations[str(table.video[row])]
        what = (
            f"fits offset {other:g} but the other rows fit offset {best:g} "
            f"({best:g} <= t <= {best + d:.2f})"
        )
    raise DataError(
        table.source,
        int(table.line[row]),
        f"timestamp {int(table.timestamp[row])} of video {str(table.video[row])!r} "
        f"({d:.2f} s long) {what}; set timestamp_offset in the dataset config",
    )


class Dataset:
    """Lazy access to one AVA-format dataset; files are read on first use and cached.

    Open with :meth:`open`; the config is resolved (``dataset.yaml`` merged) there.
    """

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config
        self._gt: dict[str, BoxTable] = {}
        self._videos: dict[str, VideoInfo] = {}

    @classmethod
    def open(cls, config: DatasetConfig | str | Path) -> Dataset:
        """Open a dataset from a config, or from its directory with default names."""
        if not isinstance(config, DatasetConfig):
            config = DatasetConfig(root=Path(config))
        if not config.root.is_dir():
            raise DataError(config.root, None, "dataset directory does not exist")
        return cls(config.resolved())

    @property
    def root(self) -> Path:
        return self.config.root

    @property
    def splits(self) -> list[str]:
        return list(self.config.splits)

    def _split(self, split: str) -> SplitFiles:
        if split not in self.config.splits:
            raise KeyError(f"unknown split {split!r} (this dataset has {', '.join(self.splits)})")
        return self.config.splits[split]

    @property
    def is_tubes(self) -> bool:
        """A tube dataset: timestamps are 1-based frame numbers (module tube_dataset)."""
        return self.config.tubes is not None

    @property
    def frames_per_timestamp(self) -> float | None:
        """Video frames per timestamp unit: 1 for tube datasets (frame numbers), None for
        AVA (seconds: the video's own fps)."""
        return 1.0 if self.is_tubes else None

    @cached_property
    def tube_gt(self) -> TubeGT:
        """The GT file of a tube dataset."""
        files = self._tube_files()
        return load_tube_gt(self.config.annotation_path(files.annotation), files)

    def _tube_files(self) -> TubeFiles:
        if self.config.tubes is None:
            raise DataError(self.root, None, "not a tube dataset (no 'tubes' in its config)")
        return self.config.tubes

    def tube_videos(self, split: str) -> tuple[str, ...]:
        """Videos of ``split`` in a tube dataset."""
        return split_videos(self.tube_gt, self._tube_files(), split)

    @cached_property
    def labelmap(self) -> LabelMap:
        if self.is_tubes:
            return tube_labelmap(self.tube_gt)
        return read_labelmap(self.config.annotation_path(self.config.labelmap))

    def gt(self, split: str) -> BoxTable:
        """The split's GT boxes (strict: checked against the label map)."""
        if split not in self._gt and self.is_tubes:
            stride = self._tube_files().stride(split)
            self._gt[split] = tube_box_table(self.tube_gt, self.tube_videos(split), stride)
        if split not in self._gt:
            name = self._split(split).gt
            if name is None:
                raise DataError(self.root, None, f"split {split!r} has no GT file configured")
            path = self.config.annotation_path(name)
            if not path.is_file():
                raise DataError(
                    path, None, f"GT file of split {split!r} not found (set splits.{split}.gt)"
                )
            self._gt[split] = read_gt_csv(path, labelmap=self.labelmap)
        return self._gt[split]

    def excluded(self, split: str) -> ExcludedKeyframes:
        """Excluded keyframes; none when the split has no such file."""
        name = self._split(split).excluded
        path = None if name is None else self.config.annotation_path(name)
        if path is None or not path.is_file():
            return ExcludedKeyframes(
                video=np.empty(0, dtype=object), timestamp=np.empty(0, dtype=np.int64)
            )
        return read_excluded_csv(path)

    def proposals(self, split: str) -> BoxTable | None:
        """Person proposals (detections CSV), or None when the split has none."""
        name = self._split(split).proposals
        path = None if name is None else self.config.annotation_path(name)
        if path is None or not path.is_file():
            return None
        table = read_detections_csv(path, labelmap=self.labelmap)
        if self.is_tubes:
            files = self._tube_files()
            table = on_keyframes(
                table, files.stride(split), gt=self.tube_gt, annotated=files.annotated_only(split)
            )
        return table

    def _split_table(self, split: str) -> BoxTable:
        if self.is_tubes:
            return self.gt(split)
        if self._split(split).gt is not None:
            return self.gt(split)
        proposals = self.proposals(split)
        return BoxTable.empty() if proposals is None else proposals

    def video_ids(self, split: str) -> list[str]:
        """Sorted video ids of the split's GT (its proposals if it has no GT)."""
        if self.is_tubes:
            return sorted(self.tube_videos(split))
        return sorted({str(v) for v in self._split_table(split).video})

    def keyframes(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Unique keyframes of the split's GT (or proposals), sorted by video then time.

        Excluded keyframes are kept; see :meth:`excluded`.

        Returns: video ``str`` object array [K], timestamp int64 [K] (CSV seconds).
        A tube dataset's are every ``keyframe_stride``-th frame of each split video
        (with ``sampling: annotated``, those inside a GT tube).
        """
        if self.is_tubes:
            files = self._tube_files()
            return tube_keyframes(
                self.tube_gt, self.tube_videos(split), files.stride(split),
                annotated=files.annotated_only(split),
            )  # fmt: skip
        table = self._split_table(split)
        return unique_keyframes(table.video, table.timestamp)

    def video_path(self, video_id: str) -> Path:
        """The file of ``video_id`` in ``videos_dir``.

        Raises:
            DataError: no ``<video_id>.<ext>`` file exists.
        """
        path = find_video(self.config.videos_path, video_id)
        if path is None:
            path = find_clip(self.config.videos_path, video_id)
        if path is None:
            exts = "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
            raise DataError(
                self.config.videos_path, None, f"no video file {video_id}.<{exts}> for {video_id!r}"
            )
        return path

    def video_info(self, video_id: str) -> VideoInfo:
        """Frame count, fps and size of ``video_id`` (probed once with decord)."""
        if video_id not in self._videos:
            self._videos[video_id] = probe_video(self.video_path(video_id))
        return self._videos[video_id]

    @cached_property
    def video_offsets(self) -> dict[str, tuple[float, str]]:
        """``{video: (offset, source)}`` of the videos with their own time base: rows of
        the ``timestamp_offsets`` table and Kinetics clips (``<id>_<start>_<end>``)."""
        out: dict[str, tuple[float, str]] = {}
        if self.is_tubes:
            return out
        if self.config.timestamp_offsets is not None:
            out.update(read_offsets_csv(self.config.annotation_path(self.config.timestamp_offsets)))
        tables = [self.gt(s) for s in self.splits if self._split(s).gt is not None]
        tables += [p for p in map(self.proposals, self.splits) if p is not None]
        for video in sorted({str(v) for t in tables for v in np.unique(t.video.astype(str))}):
            if video in out or find_video(self.config.videos_path, video) is not None:
                continue
            start = clip_offset(find_clip(self.config.videos_path, video))
            if start is not None:
                out[video] = (start, "kinetics")
        return out

    def offset_of(self, video_id: str) -> float:
        """Seconds to subtract from ``video_id``'s CSV timestamps: its own time base if
        it has one (:attr:`video_offsets`), else the dataset's :attr:`timestamp_offset`."""
        own = self.video_offsets.get(str(video_id))
        return self.timestamp_offset if own is None else own[0]

    def source_of(self, video_id: str) -> str:
        """``"kinetics"`` for Kinetics clips (by name or the offsets table), else ``"ava"``."""
        own = self.video_offsets.get(str(video_id))
        return "ava" if own is None else own[1]

    @cached_property
    def timestamp_offset(self) -> float:
        """Seconds to subtract from CSV timestamps to get seconds into the video file
        (videos with their own time base, :attr:`video_offsets`, left out)."""
        if self.is_tubes:
            return 1.0  # frame numbers are 1-based
        if self.config.timestamp_offset is not None:
            return float(self.config.timestamp_offset)
        tables = [self.gt(s) for s in self.splits if self._split(s).gt is not None]
        tables += [p for p in map(self.proposals, self.splits) if p is not None]
        own = self.video_offsets
        if own:
            tables = [t.take(~np.isin(t.video.astype(str), list(own))) for t in tables]
        videos = {str(v) for t in tables for v in np.unique(t.video.astype(str))}
        durations = {v: self.video_info(v).duration for v in sorted(videos)}
        return infer_timestamp_offset(tables, durations)

    @cached_property
    def exclusive_ids(self) -> np.ndarray:
        """int64 [E]: mutually exclusive label ids (pose classes by default)."""
        if self.config.exclusive_classes is not None:
            return self._known_ids(self.config.exclusive_classes, "exclusive_classes")
        labelmap = self.labelmap
        return np.asarray(
            [
                i
                for i, t in zip(labelmap.ids.tolist(), labelmap.label_types, strict=True)
                if t == POSE_LABEL_TYPE
            ],
            dtype=np.int64,
        )

    @cached_property
    def evaluated_ids(self) -> np.ndarray:
        """int64 [C]: evaluated label ids (all of the label map by default)."""
        if self.config.evaluated_classes is not None:
            return self._known_ids(self.config.evaluated_classes, "evaluated_classes")
        return self.labelmap.ids.astype(np.int64)

    def _known_ids(self, ids: list[int], field: str) -> np.ndarray:
        unknown = [i for i in ids if i not in self.labelmap]
        if unknown:
            raise DataError(
                self.labelmap.source, None, f"{field} {unknown} are not ids of this label map"
            )
        return np.asarray(ids, dtype=np.int64)
