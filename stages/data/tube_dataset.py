"""Tube datasets (MultiSports, UCF101-24, JHMDB, the tube world) seen as AVA-style tables.

A tube dataset is a directory of videos plus one GT file (:mod:`stages.data.tubes`:
JSON, or the datasets' own pickle when ``trust_pickle`` is set). The pipeline works on
keyframes and box tables, so the dataset is shown to it as one:

- a keyframe is a 1-based **frame number** (the ``timestamp`` column holds it), every
  ``keyframe_stride``-th frame of a split video from frame 1: 1, 1 + k, 1 + 2k, ...
  (``sampling: video``), or only those of them inside a GT tube (``sampling:
  annotated``, the training samples of the PCCA report, see :class:`TubeFiles`);
  so ``Dataset.timestamp_offset`` is 1 and one timestamp unit is one frame
  (``Dataset.frames_per_timestamp`` = 1): timestamp t is frame index t - 1 of the file,
  whatever its fps;
- a GT row is one tube on one keyframe: box normalised by the video's ``resolution``,
  action id = label index + 1 (ids 1..C in label order), person id = the tube's ordinal
  in its video (tubes are person instances; each has one label);
- classes are mutually exclusive by default (one label per person per frame, softmax);
  a person box on a keyframe without a GT tube there (a proposal or a detection) is
  background: it matches no GT row, so its targets are all zero.

Which GT split a pipeline split reads is ``split_of`` (default ``train`` -> the file's
``train_videos``, ``val`` -> ``test_videos``), split number ``split_index`` (UCF101-24
and JHMDB ship several).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pydantic

from stages.framework.keys import InKey, NotInKey

from .errors import DataError
from .tubes import TubeGT, read_tube_file
from .types import NO_PERSON, BoxTable, LabelMap

TUBE_LABEL_TYPE = "PERSON_MOVEMENT"  # single-label: every class in the softmax group


def _default_split_of() -> dict[str, Literal["train", "test"]]:
    return {"train": "train", "val": "test"}


class TubeFiles(pydantic.BaseModel):
    """The ``tubes:`` block of a dataset config (its presence makes the dataset a tube one).

    Attributes:
        annotation: the GT file in ``annotations_dir`` (``.json``, or ``.pkl``/``.pickle``).
        trust_pickle: allow reading a pickle GT file (unpickling runs code from it).
        split_index: which of the file's train/test splits (UCF101-24, JHMDB: 0..2).
        split_of: pipeline split -> ``"train"`` or ``"test"`` videos of the file.
        keyframe_stride: frames between keyframes per pipeline split (1 when not listed):
            1 for MultiSports' frame-mAP (every frame), more for cheaper training.
        sampling: which grid frames of a split are keyframes (``video`` when not listed):
            ``video``, every ``keyframe_stride``-th frame of the whole video (persons on
            frames outside every tube are background); ``annotated``, only those inside
            at least one GT tube, the frames the PCCA report trains on (Ning et al.,
            "Person-Context Cross Attention for Spatio-Temporal Action Detection",
            MultiSports 2021 report, sec. 2.3: a first phase on "standard randomly sampled
            data" (the annotated frames, shuffled: instance-balanced) with per-class BCE,
            sec. 3.1; its second, class-balanced phase is the ``rebalance`` stage). The
            report gives no frame stride. See docs/tubes.md.
        convention: evaluation rules, ``"multisports"`` or ``"act"`` (UCF101-24, JHMDB).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    annotation: InKey[str] = "gt.json"
    trust_pickle: NotInKey[bool] = False  # a permission, not a setting
    split_index: InKey[int] = pydantic.Field(0, ge=0)
    split_of: InKey[dict[str, Literal["train", "test"]]] = pydantic.Field(
        default_factory=_default_split_of
    )
    keyframe_stride: InKey[dict[str, pydantic.PositiveInt]] = pydantic.Field(default_factory=dict)
    sampling: InKey[dict[str, Literal["video", "annotated"]]] = pydantic.Field(default_factory=dict)
    convention: InKey[Literal["multisports", "act"]] = "multisports"

    def stride(self, split: str) -> int:
        return int(self.keyframe_stride.get(split, 1))

    def annotated_only(self, split: str) -> bool:
        return self.sampling.get(split, "video") == "annotated"


def load_tube_gt(path: Path, files: TubeFiles) -> TubeGT:
    """Read the GT file (DataError naming it when missing or malformed)."""
    if not path.is_file():
        raise DataError(path, None, "tube GT file not found (set tubes.annotation)")
    return read_tube_file(path, trust_pickle=files.trust_pickle)


def split_videos(gt: TubeGT, files: TubeFiles, split: str) -> tuple[str, ...]:
    """Video names of a pipeline split (see the module docstring)."""
    side = files.split_of.get(split)
    if side is None:
        raise KeyError(f"unknown split {split!r} (tubes.split_of has {', '.join(files.split_of)})")
    lists = gt.train_videos if side == "train" else gt.test_videos
    if files.split_index >= len(lists):
        raise DataError(
            gt.source, None, f"has {len(lists)} {side} split(s); split_index {files.split_index}"
        )
    return lists[files.split_index]


def tube_labelmap(gt: TubeGT) -> LabelMap:
    """Label ids 1..C in the file's label order, all in the exclusive (softmax) group."""
    n = len(gt.labels)
    return LabelMap(
        ids=np.arange(1, n + 1, dtype=np.int64),
        names=gt.labels,
        label_types=(TUBE_LABEL_TYPE,) * n,
        source=gt.source,
    )


def tube_keyframes(
    gt: TubeGT, videos: tuple[str, ...], stride: int, *, annotated: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``stride``-th frame (1, 1 + stride, ...) of each video, sorted by video; with
    ``annotated`` only those inside at least one GT tube of the video.

    Returns: video ``str`` object array [K], frame int64 [K] (1-based).
    """
    names = sorted(videos)
    frames = [np.arange(1, gt.nframes[v] + 1, stride, dtype=np.int64) for v in names]
    if annotated:
        frames = [f[np.isin(f, _tube_frames(gt, v))] for v, f in zip(names, frames, strict=True)]
    video = np.array([v for v, f in zip(names, frames, strict=True) for _ in f], dtype=object)
    stamp = np.concatenate(frames) if frames else np.empty(0, dtype=np.int64)
    return video, stamp


def tube_box_table(gt: TubeGT, videos: tuple[str, ...], stride: int) -> BoxTable:
    """GT rows of ``videos`` on their keyframes (module docstring). ``line`` holds the
    tube's ordinal in its video (1-based), for messages."""
    rows_video, rows_frame, rows_box, rows_action, rows_person = [], [], [], [], []
    for video in sorted(videos):
        h, w = gt.resolution[video]
        scale = np.array([w, h, w, h], dtype=np.float64)
        person = 0
        for label in sorted(gt.tubes.get(video, {})):
            for tube in gt.tubes[video][label]:
                person += 1
                frames = tube[:, 0].astype(np.int64)
                keep = (frames - 1) % stride == 0
                n = int(keep.sum())
                rows_video += [video] * n
                rows_frame.append(frames[keep])
                rows_box.append(np.clip(tube[keep, 1:5] / scale, 0.0, 1.0))
                rows_action.append(np.full(n, label + 1, dtype=np.int64))
                rows_person.append(np.full(n, person, dtype=np.int64))
    if not rows_video:
        return BoxTable.empty(gt.source)
    persons = np.concatenate(rows_person)
    return BoxTable(
        video=np.array(rows_video, dtype=object),
        timestamp=np.concatenate(rows_frame),
        boxes=np.concatenate(rows_box),
        action=np.concatenate(rows_action),
        person=persons if persons.size else np.full(0, NO_PERSON, dtype=np.int64),
        score=np.ones(len(rows_video), dtype=np.float64),
        line=persons.copy(),
        source=gt.source,
    )


def _tube_frames(gt: TubeGT, video: str) -> np.ndarray:
    """int64 [F]: the frames of ``video`` inside at least one of its GT tubes."""
    tubes = [t[:, 0] for per in gt.tubes.get(video, {}).values() for t in per]
    if not tubes:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(tubes).astype(np.int64))


def on_keyframes(
    table: BoxTable, stride: int, *, gt: TubeGT | None = None, annotated: bool = False
) -> BoxTable:
    """Rows of ``table`` (timestamps = frames) on keyframes 1, 1 + stride, ...; with
    ``annotated`` only on those inside a tube of ``gt`` (as :func:`tube_keyframes`)."""
    keep = (table.timestamp - 1) % stride == 0
    if annotated:
        if gt is None:
            raise ValueError("on_keyframes(annotated=True) needs the GT tubes")
        video = table.video.astype(str)
        for v in np.unique(video):
            rows = video == v
            keep[rows] &= np.isin(table.timestamp[rows], _tube_frames(gt, v))
    return table.take(keep)
