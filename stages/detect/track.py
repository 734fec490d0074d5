"""track: the actors of every keyframe, linked across keyframes into identities.

For each split the actor boxes come from the GT (one box per annotated person, the
person id kept as identity) or from the detect stage's person boxes, as configured: the
papers train on GT boxes and test on detections. Detected boxes are linked across
consecutive keyframes of a video by optimal assignment on IoU (Hungarian), allowing a
track to go unseen for up to ``max_gap`` timestamp units beyond the keyframe spacing
(:class:`TrackConfig`). Where the split has GT, detections are
matched to GT boxes (IoU >= 0.5) and identity quality is reported:

- link precision: of consecutive links the tracker made between GT-matched boxes, the
  fraction joining the same GT person;
- link recall: of consecutive appearances of one GT person (both detected), the
  fraction the tracker linked.

Output ``actors.parquet``: ``split, video, timestamp, x1, y1, x2, y2, score, track,
source`` (``gt`` / ``det``), sorted by (split, video, timestamp, score desc). Track ids
are unique within a video.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment

from models.boxes import iou_matrix
from stages.data import Dataset
from stages.detect.config import TRACK as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.detect.config import (  # noqa: F401 (re-exported)
    TrackConfig,
    TrackStageConfig,
)
from stages.detect.stage import read_persons
from stages.framework import StageContext, StageError, verify_published_file

ACTORS_FILE = "actors.parquet"


def link_tracks(
    timestamps: np.ndarray, boxes: np.ndarray, *, min_iou: float, max_gap: int, step: int = 1
) -> np.ndarray:
    """Track ids for the boxes of one video.

    Args:
        timestamps: int [A], keyframe of each box (any order).
        boxes: float [A, 4], normalized x1, y1, x2, y2.
        min_iou: minimum IoU for a link.
        max_gap: timestamp units a track may go unseen beyond the keyframe spacing: a
            track last seen at t0 takes a box at t only if ``t - t0 <= step + max_gap``.
        step: timestamp units between consecutive keyframes (1 for AVA's seconds; the
            keyframe stride for a tube split, whose timestamps are frames).

    Returns:
        int64 [A], track id per box, 0..T-1 in order of first appearance.
    """
    track = np.full(len(timestamps), -1, dtype=np.int64)
    open_tracks: list[tuple[int, int, np.ndarray]] = []  # (track id, last time, last box)
    next_id = 0
    for t in np.unique(timestamps):
        rows = np.flatnonzero(timestamps == t)
        alive = [tr for tr in open_tracks if t - tr[1] <= step + max_gap]
        assigned: set[int] = set()
        if alive:
            iou = iou_matrix(boxes[rows], np.stack([tr[2] for tr in alive]))
            r, c = linear_sum_assignment(-iou)
            for i, j in zip(r, c, strict=True):
                if iou[i, j] >= min_iou:
                    track[rows[i]] = alive[j][0]
                    assigned.add(int(i))
        for i in range(len(rows)):
            if int(i) not in assigned:
                track[rows[i]] = next_id
                next_id += 1
        updated = {int(track[row]): (int(track[row]), int(t), boxes[row]) for row in rows}
        open_tracks = [updated.pop(tr[0], tr) for tr in alive] + list(updated.values())
    return track


def keyframe_step(dataset: Dataset, split: str) -> int:
    """Timestamp units between consecutive keyframes of ``split``: a tube dataset's
    keyframe stride (timestamps are frames), else 1 (AVA: one keyframe a second)."""
    return dataset.config.tubes.stride(split) if dataset.config.tubes is not None else 1


def _gt_persons(dataset: Dataset, split: str) -> dict[str, np.ndarray]:
    """One row per annotated person per keyframe (GT has one row per action)."""
    gt = dataset.gt(split)
    if gt is None or not len(gt):
        raise StageError(f"track: split {split!r} has no GT boxes to use as actors")
    video = gt.video.astype(str)
    key = np.rec.fromarrays(
        [video, gt.timestamp, gt.person, *np.round(gt.boxes, 4).T],
        formats=None,
        names="v,t,p,a,b,c,d",
    )
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    person = gt.person[first]
    # Rows without a person id get a fresh id per box (identity unknown).
    missing = person < 0
    person = person.copy()
    person[missing] = -1 - np.arange(int(missing.sum()))
    return {
        "video": video[first],
        "timestamp": gt.timestamp[first],
        "boxes": gt.boxes[first],
        "score": np.ones(len(first), dtype=np.float32),
        "person": person,
    }


def _consecutive_agreement(
    video: np.ndarray, timestamp: np.ndarray, ids: np.ndarray, other: np.ndarray
) -> tuple[int, int]:
    """Pairs of consecutive appearances of one id (>= 0) in a video, and how many of
    those pairs also share their ``other`` id (>= 0)."""
    o = np.lexsort((timestamp, ids, video))
    v, i, x = video[o], ids[o], other[o]
    consecutive = (v[1:] == v[:-1]) & (i[1:] == i[:-1]) & (i[1:] >= 0)
    agree = (x[1:] == x[:-1]) & (x[1:] >= 0)
    return int(consecutive.sum()), int((consecutive & agree).sum())


def _identity_metrics(
    video: np.ndarray, timestamp: np.ndarray, track: np.ndarray, gt_person: np.ndarray
) -> dict[str, float]:
    """Link precision and recall (see the module docstring) over GT-matched boxes."""
    matched = gt_person >= 0
    video = video.astype(str)[matched]
    timestamp, track, gt_person = timestamp[matched], track[matched], gt_person[matched]
    made, right = _consecutive_agreement(video, timestamp, track, gt_person)
    needed, linked = _consecutive_agreement(video, timestamp, gt_person, track)
    return {
        "link_precision": right / made if made else float("nan"),
        "link_recall": linked / needed if needed else float("nan"),
    }


def _match_to_gt(det: dict[str, np.ndarray], gt: dict[str, np.ndarray]) -> np.ndarray:
    """GT person id of each detection (IoU >= 0.5, one-to-one per keyframe), -1 if none."""
    person = np.full(len(det["timestamp"]), -1, dtype=np.int64)
    gt_key: dict[tuple[Any, Any], list[int]] = {}
    for i, kf in enumerate(zip(gt["video"], gt["timestamp"], strict=True)):
        gt_key.setdefault(kf, []).append(i)
    det_key: dict[tuple[Any, Any], list[int]] = {}
    for i, kf in enumerate(zip(det["video"], det["timestamp"], strict=True)):
        det_key.setdefault(kf, []).append(i)
    for kf, d_rows in det_key.items():
        g_rows = gt_key.get(kf)
        if not g_rows:
            continue
        iou = iou_matrix(det["boxes"][d_rows], gt["boxes"][g_rows])
        r, c = linear_sum_assignment(-iou)
        for i, j in zip(r, c, strict=True):
            if iou[i, j] >= 0.5:
                person[d_rows[i]] = gt["person"][g_rows[j]]
    return person


def compute(ctx: StageContext[TrackStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    dataset = Dataset.open(cfg.dataset)
    persons_uri = ctx.input("detect").uri
    tables, summary = [], {}
    for split, source in cfg.track.boxes.items():
        if source == "gt":
            actors = _gt_persons(dataset, split)
            track = np.zeros(len(actors["timestamp"]), dtype=np.int64)
            for v in np.unique(actors["video"]):
                rows = actors["video"] == v
                _, track[rows] = np.unique(actors["person"][rows], return_inverse=True)
            split_summary: dict[str, Any] = {"source": "gt", "actors": len(track)}
        else:
            persons = read_persons(persons_uri, split)
            actors = {
                "video": np.asarray(persons["video"].to_pylist(), dtype=object),
                "timestamp": persons["timestamp"].to_numpy(),
                "boxes": np.stack([persons[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], 1),
                "score": persons["score"].to_numpy(),
            }
            track = np.zeros(len(actors["timestamp"]), dtype=np.int64)
            step = keyframe_step(dataset, split)
            for v in np.unique(actors["video"]):
                rows = np.flatnonzero(actors["video"] == v)
                track[rows] = link_tracks(
                    actors["timestamp"][rows],
                    actors["boxes"][rows].astype(np.float64),
                    min_iou=cfg.track.min_iou,
                    max_gap=cfg.track.max_gap,
                    step=step,
                )
            split_summary = {"source": "detections", "actors": len(track)}
            if split in dataset.splits and len(dataset.gt(split)):
                gt_person = _match_to_gt(actors, _gt_persons(dataset, split))
                split_summary.update(
                    _identity_metrics(actors["video"], actors["timestamp"], track, gt_person)
                )
        split_summary["tracks"] = len(
            set(zip(actors["video"].tolist(), track.tolist(), strict=True))
        )
        summary[split] = split_summary
        boxes = np.asarray(actors["boxes"], dtype=np.float32)
        tables.append(
            pa.table(
                {
                    "split": [split] * len(track),
                    "video": pa.array(actors["video"].astype(str), pa.string()),
                    "timestamp": pa.array(actors["timestamp"], pa.int64()),
                    "x1": boxes[:, 0],
                    "y1": boxes[:, 1],
                    "x2": boxes[:, 2],
                    "y2": boxes[:, 3],
                    "score": np.asarray(actors["score"], dtype=np.float32),
                    "track": pa.array(track, pa.int32()),
                    "source": [source if source == "gt" else "det"] * len(track),
                }
            )
        )
    table = pa.concat_tables(tables)
    order = np.lexsort(
        (
            -table["score"].to_numpy(),
            table["timestamp"].to_numpy(),
            np.asarray(table["video"].to_pylist()),
            np.asarray(table["split"].to_pylist()),
        )
    )
    pq.write_table(table.take(order), ctx.staging / ACTORS_FILE)
    return summary


def read_actors(uri: str, split: str | None = None) -> pa.Table:
    import pyarrow.compute as pc

    table = pq.read_table(verify_published_file(uri, ACTORS_FILE))  # published, unchanged
    return table if split is None else table.filter(pc.equal(table["split"], split))
