"""AVA frame-mAP, computed as the official ActivityNet evaluator does, vectorised.

The protocol (``get_ava_performance.py`` and its ``object_detection_evaluation``):

1. Rows (GT and detections) whose action is not in the label map are dropped.
2. Detections: at most ``max_per_keyframe`` per keyframe over all classes, the
   highest scores kept (on equal scores see *Ties* below).
3. GT and detections on excluded keyframes are dropped.
4. Detection boxes with x1 >= x2 or y1 >= y2 are dropped (after the cap); GT boxes
   are not validated. Duplicate GT rows each count as GT.
5. Per (keyframe, class), greedy matching by score against the best-IoU GT box
   only (:mod:`stages.evaluate.matching`), IoU in float64 without +1. A detection
   on a keyframe without GT is a false positive.
6. Per class, all detections ranked by score, VOC all-points AP. A class with GT
   and no detection scores 0; a class without GT is left out of the mean.

Ties (``ties=``): equal scores decide which detection survives the cap, which of two
detections takes a GT box, and the rank order, so they move the mAP (by about 1e-5 on
a large file full of equal scores).

- ``"official"`` (default): the official code's own order, reproduced bit for bit —
  its per-keyframe heap for the cap and the order inside a keyframe, keyframes in the
  order they first appear, ``np.argsort(scores)[::-1]`` over each class
  (:mod:`stages.evaluate.official_order`). Published AVA numbers come from this order.
  GT rows keep the heap's order too (it decides which of two equally good GT boxes a
  detection is matched to).
- ``"stable"``: equal scores keep file order everywhere (cap, matching, ranking;
  :func:`stages.evaluate.ap.rank_by_score`). Defined independently of any heap or
  numpy sort kernel, so it is the same on every machine and under any reordering of
  keyframes.

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
    NO_PERSON,
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
from stages.evaluate.official_order import (
    SCORE_FLOOR_2018,
    argsort_desc_groups,
    class_ranking,
    first_seen_position,
    heap_keyframe_order,
)
from stages.evaluate.result import GROUP_OF_LABEL_TYPE, AvaResult

Protocol = Literal["2018", "2019", "2020"]
PROTOCOLS: tuple[str, ...] = ("2018", "2019", "2020")
Ties = Literal["official", "stable"]
TIES: tuple[str, ...] = ("official", "stable")
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
    ties: Ties = "official",
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
        ties: ``"official"`` (the ActivityNet code's order of equal scores) or
            ``"stable"`` (file order); see the module docstring.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    cap = DEFAULT_CAP[protocol] if max_per_keyframe is None else (max_per_keyframe or None)
    if cap is not None and cap < 0:
        raise ValueError(f"max_per_keyframe must be >= 0, got {max_per_keyframe}")
    if protocol == "2020":
        excluded = None
    counts = {"gt_rows": len(gt), "detection_rows": len(detections)}

    ids = np.asarray(labelmap.ids, dtype=np.int64)
    ex_video = excluded.video if excluded is not None else np.empty(0, dtype=object)
    ex_time = excluded.timestamp if excluded is not None else np.empty(0, dtype=np.int64)
    gt_kf, det_kf, ex_kf = _keyframe_ids(
        (gt.video, gt.timestamp), (detections.video, detections.timestamp), (ex_video, ex_time)
    )
    # Keyframes of the GT file, rows of every class: "absent from the GT" (2020).
    gt_file_kf = np.unique(gt_kf)
    gt_in, det_in = np.isin(gt.action, ids), np.isin(detections.action, ids)
    gt, gt_kf = gt.take(gt_in), gt_kf[gt_in]
    detections, det_kf = detections.take(det_in), det_kf[det_in]

    if ties == "official":
        det_order, gt_order = _official_order(gt, gt_kf, detections, det_kf, cap, protocol)
        detections, det_kf = detections.take(det_order), det_kf[det_order]
        gt, gt_kf = gt.take(gt_order), gt_kf[gt_order]
        if protocol == "2018":  # its NMS step keeps scores above -10 only
            above = detections.score > SCORE_FLOOR_2018
            detections, det_kf = detections.take(above), det_kf[above]
    elif cap is not None:
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
        on_gt = np.isin(det_kf, gt_file_kf)
        counts["detections_off_gt_keyframes"] = int((~on_gt).sum())
        detections, det_kf = detections.take(on_gt), det_kf[on_gt]
    counts["gt_keyframes"] = int(np.unique(gt_kf).size)

    per_class, num_gt, num_det = _per_class_ap(
        gt,
        gt_kf,
        detections,
        det_kf,
        ids,
        iou_threshold,
        official=ties == "official",
        protocol=protocol,
    )
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


def _official_order(
    gt: BoxTable,
    gt_kf: np.ndarray,
    det: BoxTable,
    det_kf: np.ndarray,
    cap: int | None,
    protocol: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays putting detections (capped) and GT rows in the official code's order.

    2019/2020 read both files through the per-keyframe heap; 2018 keeps file order
    (its detections grouped by keyframe, as its dict of lists holds them).
    """
    if protocol == "2018" and cap is None:
        det_order = np.lexsort((np.arange(len(det)), first_seen_position(det_kf)))
        return det_order, np.arange(len(gt))
    det_order = heap_keyframe_order(det_kf, det.score, det.action, det.boxes, cap)
    if protocol == "2018":
        return det_order, np.arange(len(gt))
    # An 8-column GT row's 8th column (the person id) is the official heap's score.
    gt_key = np.where(gt.person != NO_PERSON, gt.person.astype(np.float64), 1.0)
    return det_order, heap_keyframe_order(gt_kf, gt_key, gt.action, gt.boxes, None)


def _per_class_ap(
    gt: BoxTable,
    gt_kf: np.ndarray,
    det: BoxTable,
    det_kf: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    *,
    official: bool,
    protocol: str,
) -> tuple[dict[int, float], dict[int, int], dict[int, int]]:
    """Match all detections at once, then one AP per class that has GT.

    ``official``: rows arrive in the official order (:func:`_official_order`); a
    keyframe's detections are visited in that order (2018: ``argsort[::-1]`` per
    keyframe and class) and each class is ranked by ``np.argsort(scores)[::-1]``.
    Otherwise ties keep file order throughout.
    """
    # Group = (keyframe, class); class ids are small non-negative ints.
    n_cls = int(max(class_ids.max(initial=0), 0)) + 1
    det_group = det_kf * n_cls + det.action
    if not official:
        rank = np.empty(len(det), dtype=np.int64)
        rank[rank_by_score(det.score)] = np.arange(len(det))
        by_class = np.lexsort((rank, det.action))
    elif protocol == "2018":
        rank = argsort_desc_groups(det_group, det.score)
        by_class = np.lexsort((rank, first_seen_position(det_kf), det.action))
    else:
        rank = np.arange(len(det))
        by_class = np.lexsort((rank, det.action))
    tp = match_to_best_gt(
        det_group, det.boxes, rank, gt_kf * n_cls + gt.action, gt.boxes, iou_threshold
    )

    per_class: dict[int, float] = {}
    num_gt: dict[int, int] = {}
    num_det: dict[int, int] = {}
    gt_count = np.bincount(gt.action, minlength=n_cls) if len(gt) else np.zeros(n_cls, int)
    # Detections sorted by class; each class's block in rank order (stable) or in the
    # official concatenation order (official).
    cls_sorted = det.action[by_class]
    for cid in sorted(int(c) for c in class_ids):
        n_gt = int(gt_count[cid]) if cid >= 0 else 0
        if n_gt == 0:
            continue
        lo, hi = np.searchsorted(cls_sorted, [cid, cid + 1])
        block = by_class[lo:hi]
        if official:
            block = block[class_ranking(det.score[block])]
        ranked_tp = tp[block]
        precision, recall = precision_recall(ranked_tp, n_gt)
        per_class[cid] = voc_ap(precision, recall)
        num_gt[cid] = n_gt
        num_det[cid] = int(hi - lo)
    return per_class, num_gt, num_det
