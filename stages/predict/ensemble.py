"""ensemble: average voting over several models' predictions, aligned on (keyframe, box).

Both challenge entries end by averaging the scores of many models (AVA-Kinetics report
§2.4: 15 models, "average voting"; PCCA §3.2). Members are any model-producing stage
outputs (``train``, ``train_bank``, ``rebalance``, another ensemble): each holds
``predictions/<split>.parquet`` with one row per (box, class).

The alignment rule (members may score different box sets, e.g. other detectors or
test-time scales):

* The **first member is the reference**: the ensemble scores exactly its keyframes and
  its boxes. Keyframes and boxes that only other members have are dropped.
* Within each keyframe, each other member's boxes are matched one-to-one to the
  reference boxes by IoU: the assignment maximising the number of pairs with
  IoU >= ``match_iou``, then their total IoU (Hungarian algorithm); pairs below the
  threshold are no match.
* A reference box's score for a class is the **weighted mean over the members that have
  a matching box** (the weights of the others are left out of the denominator), so a box
  one member missed is neither pulled towards 0 nor dropped. A class a member did not
  write for a box it has (``top_k`` predictions) counts as score 0 from that member.

Greedy forward selection (``select``): start from the best single member on
``select_split``, then repeatedly add the member that raises the ensemble's frame-mAP the
most, while it rises. The selection order is the ensemble's member order (so the best
single model is the reference). Selecting on the split the ensemble is then reported on
(the default, val — the only split with GT here) is *optimistic*: the chosen subset has
seen that split's labels; the summary says so (``selection_optimistic``).

Output: ``predictions/<split>.{csv,parquet}`` (as every model stage writes them),
``metrics.json`` (the ensemble's evaluation, the members' mAPs, the selection trace).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from models.boxes import iou_matrix
from stages.data import (
    BoxTable,
    Dataset,
    LabelMap,
    PredictionRows,
    RowBlocks,
    stream_detections_csv,
)
from stages.data.predictions import (
    stream_predictions_parquet,
    write_predictions_csv,
    write_predictions_parquet,
)
from stages.evaluate.ava import NotGrouped, _keyframe_ids, evaluate_ava, whole_keyframes
from stages.evaluate.result import AvaResult
from stages.evaluate.stage import PREDICTIONS_DIR
from stages.framework import (
    StageContext,
    StageError,
    StageRef,
    verify_published_file,
)
from stages.predict.config import ENSEMBLE as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.predict.config import (  # noqa: F401 (re-exported)
    EnsembleRunConfig,
    EnsembleSection,
    EnsembleStageConfig,
)
from stages.train.stage import METRICS_FILE, evaluated_labelmap

log = logging.getLogger("bankflow.ensemble")


@dataclass(frozen=True)
class BoxScores:
    """One member's predictions as dense per-box class scores.

    Attributes:
        video: str [K], timestamp: int64 [K] — the keyframes, first-seen order.
        offset: int64 [K+1] — CSR offsets of each keyframe's boxes.
        boxes: float64 [B, 4]; scores: float64 [B, C] (classes in label-map order).
    """

    video: np.ndarray
    timestamp: np.ndarray
    offset: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty(classes: int) -> BoxScores:
        """No keyframe, no box."""
        return BoxScores(
            np.empty(0, object),
            np.empty(0, np.int64),
            np.zeros(1, np.int64),
            np.zeros((0, 4)),
            np.zeros((0, classes)),
        )

    @staticmethod
    def from_table(table: BoxTable, labelmap: LabelMap, *, source: str = "") -> BoxScores:
        """Group prediction rows by (keyframe, exact box). Rows of classes outside the
        label map are ignored; a (box, class) absent from the table scores 0; two rows
        of one (box, class) keep the higher score."""
        keep = np.isin(table.action, labelmap.ids)
        table = table.take(keep)
        c = len(labelmap)
        if not len(table):
            return BoxScores.empty(c)
        bad = ~(np.isfinite(table.score) & np.isfinite(table.boxes).all(axis=1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise StageError(
                f"ensemble: {source} line {int(table.line[row])}: score {table.score[row]} / "
                f"box {table.boxes[row].tolist()} is not finite"
            )
        (kf_raw,) = _keyframe_ids((table.video, table.timestamp))
        _, kf = np.unique(kf_raw, return_inverse=True)
        kf = kf.ravel()
        rows = np.column_stack([kf.astype(np.float64), table.boxes])
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        # Boxes grouped by keyframe, keyframes and boxes in first-seen order.
        kf_first = np.full(int(kf.max()) + 1, len(table), dtype=np.int64)
        np.minimum.at(kf_first, kf, np.arange(len(table)))
        order = np.lexsort((first, kf_first[kf[first]]))
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        box_of_row = rank[inverse]
        scores = np.full((order.size, c), -np.inf)
        col = np.searchsorted(np.sort(labelmap.ids), table.action)
        to_dense = np.argsort(labelmap.ids)[col]
        np.maximum.at(scores, (box_of_row, to_dense), table.score)
        scores[np.isneginf(scores)] = 0.0  # classes a member did not write (top_k)
        box_rows = first[order]
        box_kf = kf[box_rows]
        starts = np.flatnonzero(np.r_[True, box_kf[1:] != box_kf[:-1]])
        return BoxScores(
            video=table.video[box_rows[starts]],
            timestamp=table.timestamp[box_rows[starts]].astype(np.int64),
            offset=np.r_[starts, order.size].astype(np.int64),
            boxes=table.boxes[box_rows].astype(np.float64),
            scores=scores,
        )

    @staticmethod
    def from_file(rows: RowBlocks, labelmap: LabelMap, *, source: str = "") -> BoxScores:
        """:meth:`from_table` of a predictions file read a part of whole keyframes at a
        time (a member's file is 9.2 M rows at AVA scale, issue 22); the same result. A
        file whose keyframe's rows are apart is read whole."""
        try:
            parts = [
                BoxScores.from_table(table, labelmap, source=source)
                for table, _, _ in whole_keyframes(rows)
            ]
        except NotGrouped:
            return BoxScores.from_table(rows.table(), labelmap, source=source)
        return BoxScores.concat(parts, len(labelmap))

    @staticmethod
    def concat(parts: Sequence[BoxScores], classes: int) -> BoxScores:
        """Parts with no keyframe in common, one after the other."""
        if not parts:
            return BoxScores.empty(classes)
        starts = np.cumsum([0] + [len(p.boxes) for p in parts[:-1]])
        return BoxScores(
            video=np.concatenate([p.video for p in parts]),
            timestamp=np.concatenate([p.timestamp for p in parts]),
            offset=np.concatenate(
                [[0]] + [p.offset[1:] + start for p, start in zip(parts, starts, strict=True)]
            ).astype(np.int64),
            boxes=np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
            scores=np.concatenate([p.scores for p in parts]).reshape(-1, classes),
        )

    def rows(self, labelmap: LabelMap) -> PredictionRows:
        """The AVA rows, one per (box, class), grouped by box, made a block at a time."""
        return PredictionRows(
            video=self.video,
            timestamp=self.timestamp,
            offset=self.offset,
            boxes=self.boxes,
            scores=self.scores,
            class_ids=np.asarray(labelmap.ids, dtype=np.int64),
        )

    def to_table(self, labelmap: LabelMap) -> BoxTable:
        """Every row of :meth:`rows` at once."""
        return self.rows(labelmap).table()


def match_boxes(reference: BoxScores, other: BoxScores, match_iou: float) -> np.ndarray:
    """For every reference box, the index of its matching box in ``other`` or -1.

    Per keyframe, a one-to-one assignment (Hungarian) that first maximises the number of
    pairs with IoU >= ``match_iou``, then their total IoU; lower pairs are no match.
    """
    match = np.full(len(reference.boxes), -1, dtype=np.int64)
    where = {
        (str(v), int(t)): k
        for k, (v, t) in enumerate(zip(other.video.tolist(), other.timestamp.tolist(), strict=True))
    }
    for k, (v, t) in enumerate(
        zip(reference.video.tolist(), reference.timestamp.tolist(), strict=True)
    ):
        j = where.get((str(v), int(t)))
        if j is None:
            continue
        r0, r1 = int(reference.offset[k]), int(reference.offset[k + 1])
        o0, o1 = int(other.offset[j]), int(other.offset[j + 1])
        ref_boxes, other_boxes = reference.boxes[r0:r1], other.boxes[o0:o1]
        if np.array_equal(ref_boxes, other_boxes):  # the common case: same detector
            match[r0:r1] = np.arange(o0, o1)
            continue
        iou = iou_matrix(ref_boxes, other_boxes)
        ok = iou >= match_iou
        if not ok.any():
            continue
        # Each valid pair costs 1 - IoU < 1; an invalid one costs more than all valid
        # pairs together, so the assignment keeps as many valid pairs as possible.
        cost = np.where(ok, 1.0 - iou, float(min(iou.shape) + 1))
        rows, cols = linear_sum_assignment(cost)
        good = ok[rows, cols]
        match[r0 + rows[good]] = o0 + cols[good]
    return match


def average(members: Sequence[BoxScores], weights: Sequence[float], match_iou: float) -> BoxScores:
    """The weighted average of ``members`` on the first member's boxes (module rule)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if len(weights) != len(members) or any(w <= 0 or not np.isfinite(w) for w in weights):
        raise ValueError(f"need one positive weight per member, got {list(weights)}")
    reference = members[0]
    total = weights[0] * reference.scores
    weight_sum = np.full(len(reference.boxes), float(weights[0]))
    for member, w in zip(members[1:], weights[1:], strict=True):
        match = match_boxes(reference, member, match_iou)
        hit = match >= 0
        total[hit] += w * member.scores[match[hit]]
        weight_sum[hit] += w
    return BoxScores(
        video=reference.video,
        timestamp=reference.timestamp,
        offset=reference.offset,
        boxes=reference.boxes,
        scores=total / weight_sum[:, None],
    )


def member_predictions(ref: StageRef, split: str, name: str) -> RowBlocks:
    """A member's prediction rows for ``split`` (Parquet, else the AVA CSV), read a part
    at a time."""
    base = Path(ref.uri) / PREDICTIONS_DIR
    parquet, csv = base / f"{split}.parquet", base / f"{split}.csv"
    if parquet.is_file():
        return stream_predictions_parquet(
            verify_published_file(ref.uri, f"{PREDICTIONS_DIR}/{parquet.name}")
        )
    if csv.is_file():
        return stream_detections_csv(
            verify_published_file(ref.uri, f"{PREDICTIONS_DIR}/{csv.name}")
        )
    raise StageError(
        f"ensemble: member {name!r} ({ref.stage} output {ref.uri}) has no {split!r} predictions "
        f"(expected {parquet} or {csv})"
    )


def greedy_selection(
    candidates: Mapping[str, BoxScores],
    weights: Mapping[str, float],
    score: Any,
    *,
    match_iou: float,
    max_members: int | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Greedy forward selection: best single member first, then while the mAP rises, the
    member whose addition raises it most (ties: the earlier candidate). ``score(BoxScores)``
    gives the mAP. Returns (selected names in order, trace of every step)."""
    names = list(candidates)
    singles = {n: score(candidates[n]) for n in names}
    best = max(names, key=lambda n: (singles[n], -names.index(n)))
    selected, current = [best], singles[best]
    trace = [{"added": best, "members": [best], "mAP": current, "singles": singles}]
    while max_members is None or len(selected) < max_members:
        trials = {}
        for n in names:
            if n in selected:
                continue
            chosen = [*selected, n]
            trials[n] = score(
                average(
                    [candidates[m] for m in chosen],
                    [weights.get(m, 1.0) for m in chosen],
                    match_iou,
                )
            )
        if not trials:
            break
        pick = max(trials, key=lambda n: (trials[n], -names.index(n)))
        if not trials[pick] > current:
            trace.append({"stopped": True, "best_addition": pick, "mAP": trials[pick]})
            break
        selected.append(pick)
        current = trials[pick]
        trace.append({"added": pick, "members": list(selected), "mAP": current})
    return selected, trace


def compute(ctx: StageContext[EnsembleStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    run = cfg.run
    if not cfg.members:
        raise StageError(f"ensemble {cfg.name!r}: no members")
    unknown = sorted(set(run.weights) - set(cfg.members))
    if unknown:
        raise StageError(f"ensemble {cfg.name!r}: weights for non-members {unknown}")
    dataset = Dataset.open(cfg.dataset)
    labelmap = evaluated_labelmap(dataset, cfg.dataset)
    refs = {name: ctx.input(name) for name in cfg.members}

    def load(split: str) -> dict[str, BoxScores]:
        return {
            name: BoxScores.from_file(
                member_predictions(ref, split, name), labelmap, source=f"{name} {split}"
            )
            for name, ref in refs.items()
        }

    def evaluate(split: str, scores: BoxScores) -> AvaResult:
        return evaluate_ava(
            dataset.gt(split), scores.rows(labelmap), labelmap, dataset.excluded(split)
        )

    weights = {name: float(run.weights.get(name, 1.0)) for name in cfg.members}
    # Members as they wrote their predictions (their own mAP, top_k rows and all). A
    # member's AVA table is 9.2 M rows at AVA scale (issue 22): its file is read a part at
    # a time, once for its evaluation and once for its boxes' scores, the only thing kept.
    member_maps: dict[str, float] = {}
    members: dict[str, BoxScores] = {}
    gt, excluded = dataset.gt(run.split), dataset.excluded(run.split)
    for name, ref in refs.items():
        rows = member_predictions(ref, run.split, name)
        members[name] = BoxScores.from_file(rows, labelmap, source=f"{name} {run.split}")
        member_maps[name] = evaluate_ava(gt, rows, labelmap, excluded).mAP
    trace: list[dict[str, Any]] = []
    order = list(cfg.members)
    if run.select:
        pool = members if run.select_split == run.split else load(run.select_split)
        order, trace = greedy_selection(
            pool,
            weights,
            lambda s: evaluate(run.select_split, s).mAP,
            match_iou=run.match_iou,
            max_members=run.max_members,
        )
    ensemble = average([members[n] for n in order], [weights[n] for n in order], run.match_iou)
    result = evaluate(run.split, ensemble)
    best = max(cfg.members, key=lambda n: (member_maps[n], -cfg.members.index(n)))

    table = ensemble.rows(labelmap)  # rows made a block at a time as they are written
    out = ctx.staging / PREDICTIONS_DIR
    out.mkdir(exist_ok=True)
    write_predictions_csv(out / f"{run.split}.csv", table)
    write_predictions_parquet(out / f"{run.split}.parquet", table)
    selection_optimistic = run.select and run.select_split == run.split
    info = {
        "members": order,
        "candidates": list(cfg.members),
        "weights": {n: weights[n] for n in order},
        "member_maps": member_maps,
        "best_member": best,
        "best_member_map": member_maps[best],
        "gain": result.mAP - member_maps[best],
        "selection": trace,
        "selection_optimistic": selection_optimistic,
        "boxes": len(ensemble.boxes),
    }
    (ctx.staging / METRICS_FILE).write_text(json.dumps({**result.to_json(), **info}, indent=2))
    log.info(
        "%s: %s -> mAP %.4f (best member %s %.4f)",
        cfg.name,
        "+".join(order),
        result.mAP,
        best,
        member_maps[best],
    )
    return {
        "name": cfg.name,
        "split": run.split,
        "val_map": result.mAP,
        "group_map": result.groups,
        **{k: v for k, v in info.items() if k != "selection"},
        "selection": [{k: v for k, v in step.items() if k != "singles"} for step in trace],
        "predictions_csv": ctx.relpath(PREDICTIONS_DIR, f"{run.split}.csv"),
    }
