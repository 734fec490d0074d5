"""Tube datasets end to end: per-frame detections -> linked tubes -> frame- and video-mAP.

The pipeline's models write AVA-style prediction CSVs: one row per (box, class) with a
score, the timestamp column holding the 1-based frame number and boxes normalised (see
:mod:`stages.data.tube_dataset`). The MultiSports metric (as in mmaction2's) keeps one
label per box: the class with the highest score, scored by it. :func:`frame_detections`
makes those rows (float [N, 8]: video_index, frame, label_index, score, x1, y1, x2, y2 in
pixels); :func:`evaluate_tube_detections` links them into tubes
(:func:`stages.evaluate.linking.link_tubes`, parameters :class:`LinkingConfig`) and
computes frame-mAP and video-mAP at 0.2, 0.5 and the mean over 0.1:0.9. The
``evaluate`` stage and ``bankflow eval --tubes`` both call it, so they agree by
construction on the same detections.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stages.data.tubes import TubeGT
from stages.data.types import BoxTable
from stages.evaluate.linking import LinkedTubes, link_tubes
from stages.evaluate.tubes import frame_map, video_map_summary
from stages.framework.keys import InKey


class LinkingConfig(BaseModel):
    """Parameters of :func:`stages.evaluate.linking.link_tubes` (MOC's defaults)."""

    model_config = ConfigDict(extra="forbid")

    min_length: InKey[int] = Field(15, ge=1)  # shortest tube kept, frames
    link_iou: InKey[float] = Field(0.5, ge=0.0, le=1.0)
    nms_threshold: InKey[float] = Field(0.6, ge=0.0, le=1.0)
    top_k: InKey[int] = Field(10, ge=1)
    min_score: InKey[float] = Field(0.005, ge=0.0)
    # mmaction2's MultiSportsMetric links with every box scored by the last detection's
    # score (a stale loop variable); true reproduces its published video-mAPs.
    mmaction2_scores: InKey[bool] = False


@dataclasses.dataclass(frozen=True)
class TubeResult:
    """Frame- and video-mAP of one set of detections (APs in [0, 1])."""

    frame_map: float
    frame_ap: dict[int, float]
    video: dict[str, float]  # v_map@0.2, v_map@0.5, v_map_0.10:0.90
    n_frame_detections: int
    n_tubes: int

    def to_json(self, labels: tuple[str, ...]) -> dict[str, Any]:
        return {
            # "mAP" and "per_class" (by label id = index + 1) as the AVA metrics name them,
            # so the report reads either kind
            "mAP": self.frame_map,
            "per_class": {str(k + 1): v for k, v in sorted(self.frame_ap.items())},
            "frame_map": self.frame_map,
            "frame_ap": {labels[k]: v for k, v in sorted(self.frame_ap.items())},
            **self.video,
            "frame_detections": self.n_frame_detections,
            "tubes": self.n_tubes,
        }

    def to_markdown(self, labels: tuple[str, ...]) -> str:
        lines = [
            "| metric | value |",
            "|---|---:|",
            f"| frame-mAP@0.5 | {self.frame_map:.4f} |",
            *(f"| {k} | {v:.4f} |" for k, v in self.video.items()),
            "",
            "| class | frame AP |",
            "|---|---:|",
            *(f"| {labels[k]} | {v:.4f} |" for k, v in sorted(self.frame_ap.items())),
        ]
        return "\n".join(lines) + "\n"


def restrict_to(gt: TubeGT, videos: tuple[str, ...]) -> TubeGT:
    """``gt`` whose test split (number 0) is ``videos``: the metrics read that split."""
    return dataclasses.replace(gt, test_videos=(tuple(videos),))


def frame_detections(table: BoxTable, gt: TubeGT, videos: tuple[str, ...]) -> np.ndarray:
    """One detection per predicted box: float64 [N, 8] ``video_index, frame, label_index,
    score, x1, y1, x2, y2`` (pixels), label = the box's best class (id - 1).

    ``table`` rows are (box, class) pairs; rows of one box share video, frame and box.
    Rows of videos outside ``videos`` are dropped. Boxes are ordered by video, frame,
    then first appearance in ``table``.
    """
    index = {v: i for i, v in enumerate(videos)}
    vid = np.array([index.get(str(v), -1) for v in table.video], dtype=np.int64)
    keep = vid >= 0
    if not keep.any():
        return np.empty((0, 8))
    vid, frame = vid[keep], table.timestamp[keep].astype(np.int64)
    boxes, score, action = table.boxes[keep], table.score[keep], table.action[keep]
    key = np.column_stack([vid, frame, np.round(boxes, 4) * 1e4]).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    # best row per box: highest score, ties to the lower class id
    order = np.lexsort((action, -score, inverse))
    best = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]
    best = best[np.argsort(first[inverse[best]], kind="stable")]
    best = best[np.lexsort((frame[best], vid[best]))]
    hw = np.array([gt.resolution[videos[i]] for i in vid[best]], dtype=np.float64)
    scale = np.column_stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]])
    return np.column_stack(
        [
            vid[best],
            frame[best],
            action[best] - 1,
            score[best],
            boxes[best] * scale,
        ]
    ).astype(np.float64)


def link_detections(
    gt: TubeGT,
    frame_dets: np.ndarray,
    videos: tuple[str, ...],
    linking: LinkingConfig | None = None,
) -> LinkedTubes:
    """The tubes linked from ``frame_dets`` (float [N, 8] as :func:`frame_detections`
    returns; ``frame_dets[:, 0]`` indexes ``videos``), by ``linking``'s parameters."""
    link = linking or LinkingConfig()
    link_dets = np.array(frame_dets, dtype=np.float64).reshape(-1, 8)
    if link.mmaction2_scores and len(link_dets):
        link_dets[:, 3] = link_dets[-1, 3]
    return link_tubes(
        link_dets,
        videos,
        gt.nframes,
        num_labels=len(gt.labels),
        min_length=link.min_length,
        link_iou=link.link_iou,
        nms_threshold=link.nms_threshold,
        top_k=link.top_k,
        min_score=link.min_score,
    )


def score_tubes(
    gt: TubeGT,
    frame_dets: np.ndarray,
    tubes: LinkedTubes,
    videos: tuple[str, ...],
    *,
    convention: Literal["multisports", "act"] = "multisports",
) -> TubeResult:
    """Frame-mAP of ``frame_dets`` and video-mAP of ``tubes`` (linked from them) on the
    GT of ``videos``."""
    gt = restrict_to(gt, videos)
    fmap, per_class = frame_map(gt, frame_dets, convention=convention)
    video = video_map_summary(gt, tubes, convention=convention)
    return TubeResult(
        frame_map=fmap,
        frame_ap=per_class,
        video=video,
        n_frame_detections=len(frame_dets),
        n_tubes=sum(len(t) for t in tubes.values()),
    )


def evaluate_tube_detections(
    gt: TubeGT,
    frame_dets: np.ndarray,
    videos: tuple[str, ...],
    *,
    linking: LinkingConfig | None = None,
    convention: Literal["multisports", "act"] = "multisports",
) -> tuple[TubeResult, LinkedTubes]:
    """Frame-mAP of ``frame_dets`` and video-mAP of the tubes linked from them
    (:func:`link_detections` then :func:`score_tubes`, as the ``link`` and ``evaluate``
    stages do them one after the other).

    Args:
        gt: the dataset GT (its test split is replaced by ``videos``).
        frame_dets: float [N, 8] as :func:`frame_detections` returns.
        videos: the evaluated videos (``frame_dets[:, 0]`` indexes them).
    """
    tubes = link_detections(gt, frame_dets, videos, linking)
    return score_tubes(gt, frame_dets, tubes, videos, convention=convention), tubes


def save_tubes(path: Path, tubes: LinkedTubes) -> None:
    """``tubes`` in an ``.npz`` (no pickle), exactly: per tube its label, video, score
    and rows (:func:`load_tubes` reads them back in the same order)."""
    items = [(lb, v, s, t) for lb, group in tubes.items() for v, s, t in group]
    rows = [np.asarray(t) for *_, t in items]
    np.savez(
        path,
        labels=np.array(sorted(tubes), dtype=np.int64),
        label=np.array([lb for lb, *_ in items], dtype=np.int64),
        video=np.array([v for _, v, _, _ in items], dtype=str),
        score=np.array([s for _, _, s, _ in items], dtype=np.float64),
        length=np.array([len(r) for r in rows], dtype=np.int64),
        rows=np.concatenate(rows) if rows else np.empty((0, 6), dtype=np.float32),
    )


def load_tubes(path: Path) -> LinkedTubes:
    """The tubes :func:`save_tubes` wrote (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        labels, label, video, score = z["labels"], z["label"], z["video"], z["score"]
        length, rows = z["length"], z["rows"]
    tubes: LinkedTubes = {int(lb): [] for lb in labels}
    ends = np.cumsum(length)
    for i, end in enumerate(ends):
        tube = rows[end - length[i] : end]
        tubes[int(label[i])].append((str(video[i]), float(score[i]), tube))
    return tubes


def write_tube_outputs(
    result: TubeResult, tubes: LinkedTubes, labels: tuple[str, ...], out_dir: Path
) -> dict[str, Path]:
    """``metrics.json``, ``metrics.md`` and ``tubes.json`` (the linked tubes:
    ``{label name: [{video, score, tube: [[frame, x1, y1, x2, y2, score], ...]}]}``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out_dir / "metrics.json",
        "markdown": out_dir / "metrics.md",
        "tubes": out_dir / "tubes.json",
    }
    paths["metrics"].write_text(json.dumps(result.to_json(labels), indent=2))
    paths["markdown"].write_text(result.to_markdown(labels))
    doc = {
        labels[lb]: [
            {"video": v, "score": float(s), "tube": np.round(t.astype(np.float64), 3).tolist()}
            for v, s, t in items
        ]
        for lb, items in tubes.items()
    }
    paths["tubes"].write_text(json.dumps(doc))
    return paths


def prior_table(boxes: BoxTable, train_actions: np.ndarray, class_ids: np.ndarray) -> BoxTable:
    """The prior-only baseline on the boxes of ``boxes``: every box scored for every class
    by the fraction of training GT rows of that class (one row per box and class)."""
    counts = np.array([(train_actions == c).sum() for c in class_ids], dtype=np.float64)
    prior = counts / max(counts.sum(), 1.0)
    key = np.column_stack([boxes.timestamp, np.round(boxes.boxes, 4) * 1e4]).astype(np.int64)
    names = boxes.video.astype(str)
    seen: dict[tuple, int] = {}
    for i, (v, k) in enumerate(zip(names, map(tuple, key), strict=True)):
        seen.setdefault((v, *k), i)
    rows = np.array(sorted(seen.values()), dtype=np.int64)
    n, c = len(rows), len(class_ids)
    return BoxTable(
        video=np.repeat(boxes.video[rows], c),
        timestamp=np.repeat(boxes.timestamp[rows], c),
        boxes=np.repeat(boxes.boxes[rows], c, axis=0),
        action=np.tile(class_ids.astype(np.int64), n),
        person=np.full(n * c, -1, dtype=np.int64),
        score=np.tile(prior, n),
        line=np.arange(1, n * c + 1, dtype=np.int64),
        source="prior",
    )
