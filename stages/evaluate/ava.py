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

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from stages.data import (
    NO_PERSON,
    BoxTable,
    DataError,
    ExcludedKeyframes,
    LabelMap,
    PredictionRows,
    RowBlocks,
    read_excluded_csv,
    read_gt_csv,
    read_labelmap,
    stream_detections_csv,
)
from stages.data.types import concat_tables
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
# Detection rows per block of whole keyframes (evaluate_ava): bounds the intermediates.
EVAL_BLOCK_ROWS = 1 << 18
# Rows per block when video names become keyframe ids (_keyframe_ids).
KEYFRAME_ID_BLOCK = 1 << 18
# One block's rows of a class: score, true positive, file row (stable ties only).
ClassPart = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def evaluate_ava(
    gt: BoxTable,
    detections: BoxTable | PredictionRows | RowBlocks,
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
        detections: detection rows with scores, predictions per box
            (:class:`stages.data.types.PredictionRows`, evaluated a block at a time), or a
            file read a block at a time (:class:`stages.data.types.RowBlocks`, from
            ``stream_detections_csv`` / ``stream_predictions_parquet``); a file whose
            keyframes' rows are not together is read whole.
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
    counts = {"gt_rows": len(gt), "detection_rows": 0}  # detections: counted as read
    official = ties == "official"

    ids = np.asarray(labelmap.ids, dtype=np.int64)
    keys = _KeyframeKeys()
    gt_kf = keys(gt.video, gt.timestamp)
    ex_kf = np.empty(0, dtype=np.int64)
    if excluded is not None:
        ex_kf = keys(excluded.video, excluded.timestamp)
    # Keyframes of the GT file, rows of every class: "absent from the GT" (2020).
    gt_file_kf = np.unique(gt_kf)

    # Ground truth, whole (it is a few rows per keyframe): its evaluated classes, in the
    # official heap's order when asked, outside the excluded keyframes.
    gt_in = np.isin(gt.action, ids)
    gt, gt_kf = gt.take(gt_in), gt_kf[gt_in]
    if official and protocol != "2018":
        gt_order = _official_gt_order(gt, gt_kf)
        gt, gt_kf = gt.take(gt_order), gt_kf[gt_order]
    if ex_kf.size:
        keep = ~np.isin(gt_kf, ex_kf)
        counts["excluded_gt_rows"] = int((~keep).sum())
        counts["excluded_detection_rows"] = 0
        gt, gt_kf = gt.take(keep), gt_kf[keep]
    counts["invalid_detection_rows"] = 0
    if protocol == "2020":
        counts["detections_off_gt_keyframes"] = 0
    counts["gt_keyframes"] = int(np.unique(gt_kf).size)
    n_cls = int(max(ids.max(initial=0), 0)) + 1
    gt_count = np.bincount(gt.action, minlength=n_cls) if len(gt) else np.zeros(n_cls, int)
    scored = [int(c) for c in sorted(ids.tolist()) if c >= 0 and gt_count[c] > 0]
    gt_by_kf = np.argsort(gt_kf, kind="stable")
    gt_kf_sorted = gt_kf[gt_by_kf]

    # Detections a block of whole keyframes at a time, keyframes in the order they first
    # appear: every rule but the ranking is per keyframe, and a class's ranking needs only
    # its (score, true positive) pairs, in the order the whole table would give them. The
    # peak holds one block's rows, not every row's intermediates (issue 22).
    def class_parts(
        detections: BoxTable | PredictionRows | RowBlocks, counts: dict[str, int]
    ) -> dict[int, list[ClassPart]]:
        parts: dict[int, list[ClassPart]] = {c: [] for c in scored}
        for rows_table, rows_kf, rows in _detection_rows(detections, keys, ids, counts):
            # File rows break equal scores in the stable ranking; the official one needs none.
            row = None
            if not official:
                row = np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
            block = _detection_block(
                rows_table,
                rows_kf,
                row,
                gt_file_kf,
                ex_kf,
                cap,
                protocol=protocol,
                official=official,
                counts=counts,
            )
            if block is None:
                continue
            det, kf, row = block
            # The block's keyframes numbered 0.. (small group ids for matching), and its GT
            # rows, each keyframe's in GT order (it breaks equal IoUs).
            block_kf, det_local = np.unique(kf, return_inverse=True)
            gt_rows = gt_by_kf[_rows_of_keyframes(gt_kf_sorted, block_kf)]
            gt_local = np.searchsorted(block_kf, gt_kf[gt_rows])
            for cid, part in _class_parts(
                det,
                det_local.reshape(-1),
                row,
                gt.take(gt_rows),
                gt_local,
                n_cls,
                iou_threshold,
                official,
                protocol,
            ):
                if cid in parts:
                    parts[cid].append(part)
        return parts

    detection_counts = dict(counts)
    try:
        parts = class_parts(detections, detection_counts)
    except NotGrouped:
        # A file whose keyframe's rows are apart: grouped like a whole table, at once.
        assert isinstance(detections, RowBlocks)
        detection_counts = dict(counts)
        parts = class_parts(detections.table(), detection_counts)
    counts = detection_counts

    per_class: dict[int, float] = {}
    num_gt: dict[int, int] = {}
    num_det: dict[int, int] = {}
    for cid in scored:
        pieces = parts.pop(cid)
        score = np.concatenate([p[0] for p in pieces]) if pieces else np.empty(0)
        tp = np.concatenate([p[1] for p in pieces]) if pieces else np.empty(0, dtype=bool)
        # official: np.argsort(scores)[::-1] over the class's rows in the official
        # concatenation order; stable: descending score, equal scores in file order.
        if official:
            ranking = class_ranking(score)
        else:
            row = np.concatenate([p[2] for p in pieces]) if pieces else np.empty(0, np.int64)
            ranking = np.lexsort((row, -score))
        precision, recall = precision_recall(tp[ranking], int(gt_count[cid]))
        per_class[cid] = voc_ap(precision, recall)
        num_gt[cid] = int(gt_count[cid])
        num_det[cid] = int(score.size)
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
    # The detections a part of the file at a time (a predictions file at AVA scale is
    # 9.2 M rows, issue 22), each part checked as it is read.
    stream = stream_detections_csv(detections_path)
    detections = RowBlocks(lambda: map(_finite, stream), stream.source)
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
    across them: equal (video, integer timestamp) gives an equal id, and ids follow the
    videos' sorted names. Video names are read ``KEYFRAME_ID_BLOCK`` rows at a time, so
    no fixed-width string copy of a whole AVA-sized table is made."""
    times = [np.asarray(t, dtype=np.int64) for _, t in tables]
    if sum(t.size for t in times) == 0:
        return [np.empty(0, dtype=np.int64) for _ in tables]
    names: list[np.ndarray] = []
    local: list[np.ndarray] = []  # per block: each row's index into that block's names
    for video, _ in tables:
        for lo in range(0, len(video), KEYFRAME_ID_BLOCK):
            u, inverse = np.unique(
                np.asarray(video[lo : lo + KEYFRAME_ID_BLOCK], dtype=str), return_inverse=True
            )
            names.append(u)
            local.append(inverse.reshape(-1).astype(np.int32))
    every, code_of = np.unique(np.concatenate(names), return_inverse=True)
    code_of = code_of.reshape(-1)
    t_min = min(int(t.min()) for t in times if t.size)
    span = max(int(t.max()) for t in times if t.size) - t_min + 1
    out: list[np.ndarray] = []
    block, first_name = 0, 0
    for t in times:
        key = np.empty(t.size, dtype=np.int64)
        for lo in range(0, t.size, KEYFRAME_ID_BLOCK):
            codes = code_of[first_name : first_name + names[block].size]
            key[lo : lo + KEYFRAME_ID_BLOCK] = codes[local[block]] * span + (
                t[lo : lo + KEYFRAME_ID_BLOCK] - t_min
            )
            first_name += names[block].size
            block += 1
        out.append(key)
    del every
    return out


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


class _KeyframeKeys:
    """int64 keys of (video, timestamp) pairs, equal for equal pairs, whatever table they
    come from: a video's code (in the order first seen) times 2**32 plus the timestamp
    offset by 2**31. Names are read ``KEYFRAME_ID_BLOCK`` rows at a time, so no
    fixed-width string copy of a whole AVA-sized table is made."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def __call__(self, video: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        times = np.asarray(timestamp, dtype=np.int64)
        if times.size and (times.min() < -(2**31) or times.max() >= 2**31):
            raise ValueError(f"timestamps must fit in 32 bits, got {times.min()}..{times.max()}")
        out = np.empty(times.size, dtype=np.int64)
        for lo in range(0, times.size, KEYFRAME_ID_BLOCK):
            hi = lo + KEYFRAME_ID_BLOCK
            names, inverse = np.unique(np.asarray(video[lo:hi], dtype=str), return_inverse=True)
            codes = np.array(
                [self._codes.setdefault(n, len(self._codes)) for n in names.tolist()],
                dtype=np.int64,
            )
            out[lo:hi] = codes[inverse.reshape(-1)] * 2**32 + (times[lo:hi] + 2**31)
        return out


class NotGrouped(Exception):
    """A file read a block at a time has a keyframe whose rows are apart
    (:func:`whole_keyframes`)."""


def _detection_rows(
    detections: BoxTable | PredictionRows | RowBlocks,
    keys: _KeyframeKeys,
    ids: np.ndarray,
    counts: dict[str, int],
) -> Iterator[tuple[BoxTable, np.ndarray, np.ndarray | slice]]:
    """The detections of evaluated classes, a block of whole keyframes at a time in the
    order keyframes first appear: (rows, their keyframe keys, their file rows). Adds the
    rows read to ``counts["detection_rows"]``.

    A BoxTable is grouped first (:func:`_keyframe_blocks`); a PredictionRows makes its
    rows block by block, already grouped, unless one keyframe appears twice in it (then
    its rows are made at once and grouped like a file's); a file read a block at a time
    (RowBlocks) must keep each keyframe's rows together (every writer here does), else
    :class:`NotGrouped` is raised for the caller to read it whole."""
    if isinstance(detections, RowBlocks):
        yield from _file_rows(detections, keys, ids, counts)
        return
    if isinstance(detections, PredictionRows):
        unique = np.unique(keys(detections.video, detections.timestamp)).size
        if unique == len(detections.timestamp):
            first = 0
            for block in detections.blocks(EVAL_BLOCK_ROWS):
                kf, evaluated = keys(block.video, block.timestamp), np.isin(block.action, ids)
                counts["detection_rows"] += len(block)
                if evaluated.all():
                    yield block, kf, slice(first, first + len(block))
                else:
                    kept = np.flatnonzero(evaluated)
                    yield block.take(kept), kf[kept], first + kept
                first += len(block)
            return
        detections = detections.table()
    counts["detection_rows"] += len(detections)
    det_kf = keys(detections.video, detections.timestamp)
    for rows in _keyframe_blocks(det_kf, np.isin(detections.action, ids)):
        yield detections.take(rows), det_kf[rows], rows


def _file_rows(
    blocks: RowBlocks, keys: _KeyframeKeys, ids: np.ndarray, counts: dict[str, int]
) -> Iterator[tuple[BoxTable, np.ndarray, np.ndarray | slice]]:
    """:func:`_detection_rows` of a file read a block at a time (:func:`whole_keyframes`)."""
    for table, kf, rows in whole_keyframes(blocks, keys, counts):
        for sel in _keyframe_blocks(kf, np.isin(table.action, ids)):
            yield table.take(sel), kf[sel], rows[sel]


def whole_keyframes(
    blocks: RowBlocks, keys: _KeyframeKeys | None = None, counts: dict[str, int] | None = None
) -> Iterator[tuple[BoxTable, np.ndarray, np.ndarray]]:
    """A file read a block at a time, as parts of whole keyframes in file order: (rows,
    their keyframe keys, their file rows). A block's last keyframe is carried into the
    next block; a keyframe whose rows are apart in the file raises :class:`NotGrouped`
    (read such a file whole). Adds the rows read to ``counts["detection_rows"]``."""
    keys = _KeyframeKeys() if keys is None else keys
    done = np.empty(0, dtype=np.int64)  # keys of the keyframes yielded, sorted
    carry: tuple[BoxTable, np.ndarray, np.ndarray] | None = None
    first = 0  # file row of the next block's first row
    read = iter(blocks)
    ended = False
    while not ended:
        block = next(read, None)
        if block is None:
            if carry is None:
                return
            table, kf, rows = carry
            ended = True
        else:
            table = block
            kf = keys(block.video, block.timestamp)
            rows = np.arange(first, first + len(block), dtype=np.int64)
            first += len(block)
            if counts is not None:
                counts["detection_rows"] += len(block)
            if carry is not None:
                table = concat_tables([carry[0], block])
                kf, rows = np.concatenate([carry[1], kf]), np.concatenate([carry[2], rows])
        if not len(table):
            continue
        starts = np.flatnonzero(np.r_[True, kf[1:] != kf[:-1]])
        run_keys = kf[starts]
        if np.unique(run_keys).size != run_keys.size or np.isin(run_keys, done).any():
            raise NotGrouped(f"{blocks.source}: the rows of a keyframe are apart")
        cut = len(kf) if ended else int(starts[-1])
        carry = None if ended else (table.take(slice(cut, None)), kf[cut:], rows[cut:])
        done = np.union1d(done, run_keys if ended else run_keys[:-1])
        if cut:
            yield table.take(slice(0, cut)), kf[:cut], rows[:cut]


def _keyframe_blocks(kf: np.ndarray, evaluated: np.ndarray) -> Iterator[np.ndarray | slice]:
    """The ``evaluated`` rows, a block of whole keyframes at a time: keyframes in the
    order they first appear, each keyframe's rows in file order, about ``EVAL_BLOCK_ROWS``
    rows per block (one keyframe may exceed it). A block is an index array, or a slice
    when every row is evaluated and each keyframe's rows are together (a prediction
    table's layout), so no per-row index is held."""
    rows = None if evaluated.all() else np.flatnonzero(evaluated)
    kf_rows = kf if rows is None else kf[rows]
    if kf_rows.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, kf_rows[1:] != kf_rows[:-1]])
    if np.unique(kf_rows[starts]).size != starts.size:  # a keyframe's rows are apart
        order = np.argsort(first_seen_position(kf_rows), kind="stable")
        rows, kf_rows = (order if rows is None else rows[order]), kf_rows[order]
        starts = np.flatnonzero(np.r_[True, kf_rows[1:] != kf_rows[:-1]])
    ends = np.r_[starts[1:], kf_rows.size]
    first = 0
    while first < starts.size:
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + EVAL_BLOCK_ROWS, "right")))
        lo, hi = int(starts[first]), int(ends[last - 1])
        yield slice(lo, hi) if rows is None else rows[lo:hi]
        first = last


def _rows_of_keyframes(sorted_kf: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Positions in ``sorted_kf`` (ascending) of every row whose keyframe is in ``keys``."""
    lo = np.searchsorted(sorted_kf, keys, side="left")
    hi = np.searchsorted(sorted_kf, keys, side="right")
    count = hi - lo
    return np.repeat(lo - np.cumsum(count) + count, count) + np.arange(int(count.sum()))


def _detection_block(
    det: BoxTable,
    kf: np.ndarray,
    row: np.ndarray | None,
    gt_file_kf: np.ndarray,
    ex_kf: np.ndarray,
    cap: int | None,
    *,
    protocol: str,
    official: bool,
    counts: dict[str, int],
) -> tuple[BoxTable, np.ndarray, np.ndarray | None] | None:
    """One block's detections through the per-keyframe rules (cap, exclusions, box
    validity, 2020's GT keyframes); returns them with their keyframe ids and file rows
    (None stays None), in the official order when ``official``. Adds to ``counts``."""

    def take(index: np.ndarray) -> tuple[BoxTable, np.ndarray, np.ndarray | None]:
        return det.take(index), kf[index], None if row is None else row[index]

    if official:
        if protocol != "2018" or cap is not None:
            # The official per-keyframe heap (2018 with a cap: the heap, no GT heap).
            det, kf, row = take(heap_keyframe_order(kf, det.score, det.action, det.boxes, cap))
        if protocol == "2018":  # its NMS step keeps scores above -10 only
            det, kf, row = take(det.score > SCORE_FLOOR_2018)
    elif cap is not None:
        det, kf, row = take(_top_per_keyframe(kf, det.score, cap))
    if ex_kf.size:
        keep = ~np.isin(kf, ex_kf)
        counts["excluded_detection_rows"] += int((~keep).sum())
        det, kf, row = take(keep)
    b = det.boxes
    valid = (b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])
    counts["invalid_detection_rows"] += int((~valid).sum())
    det, kf, row = take(valid)
    if protocol == "2020":
        on_gt = np.isin(kf, gt_file_kf)
        counts["detections_off_gt_keyframes"] += int((~on_gt).sum())
        det, kf, row = take(on_gt)
    return (det, kf, row) if len(det) else None


def _official_gt_order(gt: BoxTable, gt_kf: np.ndarray) -> np.ndarray:
    """GT rows in the official heap's order (2019, 2020): an 8-column GT row's 8th
    column (the person id) is the heap's score."""
    gt_key = np.where(gt.person != NO_PERSON, gt.person.astype(np.float64), 1.0)
    return heap_keyframe_order(gt_kf, gt_key, gt.action, gt.boxes, None)


def _class_parts(
    det: BoxTable,
    det_kf: np.ndarray,
    det_row: np.ndarray | None,
    gt: BoxTable,
    gt_kf: np.ndarray,
    n_cls: int,
    iou_threshold: float,
    official: bool,
    protocol: str,
) -> Iterator[tuple[int, ClassPart]]:
    """Match one block's detections, then yield per class (score, true positive, file
    row) in the order the class's ranking starts from.

    ``official``: rows arrive in the official order (:func:`_detection_block`); a
    keyframe's detections are visited in that order (2018: ``argsort[::-1]`` per
    keyframe and class) and a class's rows are concatenated keyframe by keyframe.
    Otherwise ties keep file order throughout.
    """
    # Group = (keyframe, class); class ids are small non-negative ints.
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
    cls_sorted = det.action[by_class]
    bounds = np.flatnonzero(np.r_[True, cls_sorted[1:] != cls_sorted[:-1], True])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        members = by_class[lo:hi]
        tie = None if det_row is None else det_row[members]
        yield int(cls_sorted[lo]), (det.score[members], tp[members], tie)
