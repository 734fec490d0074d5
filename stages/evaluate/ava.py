"""AVA frame-mAP, computed as the official ActivityNet evaluator does, vectorised.

The protocol (``get_ava_performance.py`` and its ``object_detection_evaluation``):

1. Rows (GT and detections) whose action is not in the label map are dropped.
2. Detections: at most ``max_per_keyframe`` per keyframe over all classes, the
   highest scores kept (on equal scores the earlier row in the file wins).
3. GT and detections on excluded keyframes are dropped.
4. Detection boxes with x1 >= x2 or y1 >= y2 are dropped (after the cap); GT boxes
   are not validated. Duplicate GT rows each count as GT.
5. Per (keyframe, class), greedy matching by score against the best-IoU GT box
   only (:mod:`stages.evaluate.matching`), IoU in float64 without +1. A detection
   on a keyframe without GT is a false positive.
6. Per class, all detections ranked by score (ties in file order, see
   :func:`stages.evaluate.ap.rank_by_score`), VOC all-points AP. A class with GT
   and no detection scores 0; a class without GT is left out of the mean.

Ties: the official code orders equal scores by its heap (within a keyframe) and by
``np.argsort(...)[::-1]`` (across the class), both accidents of implementation. Here
equal scores keep file order everywhere (cap, matching, ranking); the peer values in
``tests/fixtures/peer_ava`` come out exactly with this choice.

Protocols: ``"2019"`` caps at 50 detections per keyframe; ``"2018"`` has no cap;
``"2020"`` (AVA-Kinetics) keeps the cap of 50 but uses no exclusions file (an
``excluded`` argument is ignored) and ignores detections on keyframes absent from
the GT instead of counting them as false positives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from stages.data import (
    BoxTable,
    DataError,
    ExcludedKeyframes,
    LabelMap,
    read_detections_csv,
    read_excluded_csv,
    read_gt_csv,
    read_labelmap,
)
from stages.evaluate.ap import precision_recall, rank_by_score, voc_ap
from stages.evaluate.matching import match_to_best_gt
from stages.evaluate.result import GROUP_OF_LABEL_TYPE, AvaResult

Protocol = Literal["2018", "2019", "2020"]
PROTOCOLS: tuple[str, ...] = ("2018", "2019", "2020")
DEFAULT_CAP: dict[str, int | None] = {"2018": None, "2019": 50, "2020": 50}


def evaluate_ava(
    gt: BoxTable,
    detections: BoxTable,
    labelmap: LabelMap,
    excluded: ExcludedKeyframes | None = None,
    *,
    protocol: Protocol = "2019",
    iou_threshold: float = 0.5,
    max_per_keyframe: int | None = None,
) -> AvaResult:
    """Frame-mAP of ``detections`` against ``gt`` (see the module docstring).

    Args:
        gt: GT rows (score and person columns ignored).
        detections: detection rows with scores.
        labelmap: the evaluated classes (e.g. the 60-class AVA v2.2 list).
        excluded: keyframes to drop from both (ignored under protocol 2020).
        protocol: ``"2018"``, ``"2019"`` or ``"2020"``.
        iou_threshold: IoU a true positive needs (>=), in (0, 1].
        max_per_keyframe: detection cap per keyframe; None = the protocol default
            (50 for 2019 and 2020, no cap for 2018); 0 = no cap.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    cap = DEFAULT_CAP[protocol] if max_per_keyframe is None else (max_per_keyframe or None)
    if cap is not None and cap < 0:
        raise ValueError(f"max_per_keyframe must be >= 0, got {max_per_keyframe}")
    if protocol == "2020":
        excluded = None
    counts = {"gt_rows": len(gt), "detection_rows": len(detections)}

    ids = np.asarray(labelmap.ids, dtype=np.int64)
    gt = gt.take(np.isin(gt.action, ids))
    detections = detections.take(np.isin(detections.action, ids))

    ex_video = excluded.video if excluded is not None else np.empty(0, dtype=object)
    ex_time = excluded.timestamp if excluded is not None else np.empty(0, dtype=np.int64)
    gt_kf, det_kf, ex_kf = _keyframe_ids(
        (gt.video, gt.timestamp), (detections.video, detections.timestamp), (ex_video, ex_time)
    )

    if cap is not None:
        keep = _top_per_keyframe(det_kf, detections.score, cap)
        detections, det_kf = detections.take(keep), det_kf[keep]

    if ex_kf.size:
        gt_in = ~np.isin(gt_kf, ex_kf)
        det_in = ~np.isin(det_kf, ex_kf)
        counts["excluded_gt_rows"] = int((~gt_in).sum())
        counts["excluded_detection_rows"] = int((~det_in).sum())
        gt, gt_kf = gt.take(gt_in), gt_kf[gt_in]
        detections, det_kf = detections.take(det_in), det_kf[det_in]

    b = detections.boxes
    valid = (b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])
    counts["invalid_detection_rows"] = int((~valid).sum())
    detections, det_kf = detections.take(valid), det_kf[valid]

    if protocol == "2020":
        on_gt = np.isin(det_kf, gt_kf)
        counts["detections_off_gt_keyframes"] = int((~on_gt).sum())
        detections, det_kf = detections.take(on_gt), det_kf[on_gt]
    counts["gt_keyframes"] = int(np.unique(gt_kf).size)

    per_class, num_gt, num_det = _per_class_ap(gt, gt_kf, detections, det_kf, ids, iou_threshold)
    return AvaResult(
        mAP=float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        per_class=per_class,
        num_gt=num_gt,
        num_detections=num_det,
        groups=group_map(per_class, labelmap),
        protocol=protocol,
        iou_threshold=iou_threshold,
        max_per_keyframe=cap,
        counts=counts,
    )


def evaluate_ava_files(
    gt_path: str | Path,
    detections_path: str | Path,
    labelmap_path: str | Path,
    excluded_path: str | Path | None = None,
    **kw: object,
) -> AvaResult:
    """:func:`evaluate_ava` on files read with the shared :mod:`stages.data` readers.

    Raises ``stages.data.errors.DataError`` (naming file and line) on malformed input.
    """
    labelmap = read_labelmap(labelmap_path)
    # Structural parse only: rows of other classes and degenerate detection boxes are
    # part of the protocol (dropped), not errors. Non-finite numbers are errors.
    gt = _finite(read_gt_csv(gt_path, strict=False))
    detections = _finite(read_detections_csv(detections_path, strict=False))
    excluded = read_excluded_csv(excluded_path) if excluded_path is not None else None
    return evaluate_ava(gt, detections, labelmap, excluded, **kw)  # type: ignore[arg-type]


def _finite(table: BoxTable) -> BoxTable:
    bad = ~(np.isfinite(table.boxes).all(axis=1) & np.isfinite(table.score))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            table.source,
            int(table.line[row]),
            f"box {table.boxes[row].tolist()} / score {table.score[row]} is not finite "
            "(expected numbers)",
        )
    return table


def group_map(per_class: dict[int, float], labelmap: LabelMap) -> dict[str, float]:
    """mAP per label-type group over the classes with GT; groups with no such class
    (or a label map without label types) are left out."""
    members: dict[str, list[float]] = {}
    for cid, ap in per_class.items():
        group = GROUP_OF_LABEL_TYPE.get(labelmap.label_type(cid) or "")
        if group is not None:
            members.setdefault(group, []).append(ap)
    return {g: float(np.mean(members[g])) for g in GROUP_OF_LABEL_TYPE.values() if g in members}


def _keyframe_ids(*tables: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """Dense int64 keyframe ids for several (video [n], timestamp [n]) pairs, shared
    across them: equal (video, integer timestamp) gives an equal id."""
    videos = np.concatenate([np.asarray(v, dtype=str) for v, _ in tables])
    times = np.concatenate([np.asarray(t, dtype=np.int64) for _, t in tables])
    if videos.size == 0:
        return [np.empty(0, dtype=np.int64) for _ in tables]
    _, video_code = np.unique(videos, return_inverse=True)
    span = int(times.max()) - int(times.min()) + 1
    key = video_code.astype(np.int64) * span + (times - times.min())
    bounds = np.cumsum([0] + [len(t) for _, t in tables])
    return [key[bounds[i] : bounds[i + 1]] for i in range(len(tables))]


def _top_per_keyframe(kf: np.ndarray, score: np.ndarray, cap: int) -> np.ndarray:
    """Boolean mask [N] keeping the ``cap`` highest scores of each keyframe; on equal
    scores the earlier row wins."""
    rows = np.arange(kf.size)
    order = np.lexsort((rows, -score, kf))
    kf_sorted = kf[order]
    group_start = np.searchsorted(kf_sorted, kf_sorted, side="left")
    keep = np.zeros(kf.size, dtype=bool)
    keep[order[(rows - group_start) < cap]] = True
    return keep


def _per_class_ap(
    gt: BoxTable,
    gt_kf: np.ndarray,
    det: BoxTable,
    det_kf: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
) -> tuple[dict[int, float], dict[int, int], dict[int, int]]:
    """Match all detections at once, then one AP per class that has GT."""
    rank = np.empty(len(det), dtype=np.int64)
    rank[rank_by_score(det.score)] = np.arange(len(det))
    # Group = (keyframe, class); class ids are small non-negative ints.
    n_cls = int(max(class_ids.max(initial=0), 0)) + 1
    tp = match_to_best_gt(
        det_kf * n_cls + det.action,
        det.boxes,
        rank,
        gt_kf * n_cls + gt.action,
        gt.boxes,
        iou_threshold,
    )

    per_class: dict[int, float] = {}
    num_gt: dict[int, int] = {}
    num_det: dict[int, int] = {}
    gt_count = np.bincount(gt.action, minlength=n_cls) if len(gt) else np.zeros(n_cls, int)
    # Detections sorted by class, each class's block already in rank order.
    by_class = np.lexsort((rank, det.action))
    cls_sorted = det.action[by_class]
    for cid in sorted(int(c) for c in class_ids):
        n_gt = int(gt_count[cid]) if cid >= 0 else 0
        if n_gt == 0:
            continue
        lo, hi = np.searchsorted(cls_sorted, [cid, cid + 1])
        ranked_tp = tp[by_class[lo:hi]]
        precision, recall = precision_recall(ranked_tp, n_gt)
        per_class[cid] = voc_ap(precision, recall)
        num_gt[cid] = n_gt
        num_det[cid] = int(hi - lo)
    return per_class, num_gt, num_det
