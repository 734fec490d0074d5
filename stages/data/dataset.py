"""An AVA-format dataset directory: its configuration and lazy access to its files.

Layout (every name can be changed in the config)::

    <root>/dataset.yaml            optional: config values (written by the demo world)
    <root>/videos/<video_id>.mp4   (or .mkv, .webm, .avi, .mov)
    <root>/annotations/action_list.pbtxt
    <root>/annotations/train.csv, excluded_timestamps_train.csv, person_boxes_train.csv
    <root>/annotations/val.csv, ...

The config (:class:`DatasetConfig`, ``dataset_config.py``) and the timestamp helpers
(``timestamps.py``) live in their own modules; their names are re-exported here.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from .ava import read_detections_csv, read_excluded_csv, read_gt_csv
from .dataset_config import DATASET_YAML, DatasetConfig, SplitFiles
from .errors import DataError
from .kinetics import clip_offset, find_clip, read_offsets_csv
from .labelmap import read_labelmap
from .timestamps import AVA_OFFSET, infer_timestamp_offset, unique_keyframes
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

__all__ = [
    "AVA_OFFSET",
    "DATASET_YAML",
    "POSE_LABEL_TYPE",
    "Dataset",
    "DatasetConfig",
    "SplitFiles",
    "infer_timestamp_offset",
    "unique_keyframes",
]

POSE_LABEL_TYPE = "PERSON_MOVEMENT"


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
                self.tube_gt,
                self.tube_videos(split),
                files.stride(split),
                annotated=files.annotated_only(split),
            )
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
