"""The order in which the official ActivityNet AVA evaluator visits equal scores.

``get_ava_performance.py`` (ActivityNet ``Evaluation/``, versions of 2018-04-27,
2019-03-01 and 2020-05-19) never sorts with a tie-break. Where scores are equal, its
result depends on three accidents of implementation, reproduced here exactly:

1. **Keyframe order**: keyframes are visited in the order their first row of an
   evaluated class appears in the file (a Python ``dict`` in insertion order), and a
   class's detections are concatenated keyframe by keyframe in that order.
2. **Order inside a keyframe** (2019, 2020): every row of a keyframe goes through a
   ``heapq`` of tuples ``(score, action, y1, x1, y2, x2)`` — ``heappush`` while the
   heap holds fewer than 50 entries (or always, for GT), else ``heapreplace`` when the
   score is strictly above the heap's smallest — and the heap's list is then sorted on
   ``-score`` with Python's stable sort. Which of several equal scores survives the cap
   of 50, and the order equal scores keep, are the heap's. GT rows go through the same
   heap (without a cap); for an 8-column GT row its 8th column, the person id, takes
   the place of the score. 2018 keeps file order and, per (keyframe, class), visits
   detections in ``np.argsort(scores)[::-1]`` order (its "NMS" with IoU threshold 1.0
   and scores above -10 only).
3. **Ranking a class**: ``np.argsort(scores)[::-1]`` over the class's concatenated
   scores (numpy's default sort kernel, so equal scores come out in whatever order
   that kernel leaves them, reversed).

Rows whose scores are all distinct within a keyframe (or a (keyframe, class) group)
have only one possible order, so they are ordered with vectorised numpy; only
keyframes (groups) that contain equal scores are replayed through ``heapq`` or
``np.argsort`` one at a time.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque

import numpy as np

# 2018's NMS keeps scores strictly above this (``filter_scores_greater_than``).
SCORE_FLOOR_2018 = -10.0


def first_seen_position(kf: np.ndarray) -> np.ndarray:
    """int64 [N]: for each row, the rank of its keyframe by first appearance in ``kf``."""
    if kf.size == 0:
        return np.empty(0, dtype=np.int64)
    _, first, inverse = np.unique(kf, return_index=True, return_inverse=True)
    pos = np.empty(first.size, dtype=np.int64)
    pos[np.argsort(first, kind="stable")] = np.arange(first.size)
    return pos[inverse.reshape(-1)]


def heap_keyframe_order(
    kf: np.ndarray,
    score: np.ndarray,
    action: np.ndarray,
    boxes: np.ndarray,
    cap: int | None,
) -> np.ndarray:
    """Rows kept by the official per-keyframe heap, in the official order.

    Args:
        kf: int64 [N] keyframe id of each row, rows in file order.
        score: float64 [N], the heap key (a GT file's person id, or 1.0).
        action: int64 [N].
        boxes: float64 [N, 4], x1 y1 x2 y2.
        cap: the heap's capacity (50 in 2019/2020), None = no cap.

    Returns:
        int64 index array: keyframes in first-seen order; inside a keyframe the rows
        the heap keeps, sorted on descending score with the heap's order on ties.
    """
    n = kf.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    kf_pos = first_seen_position(kf)
    order = np.lexsort((np.arange(n), -score, kf_pos))
    pos_sorted = kf_pos[order]
    tie = (pos_sorted[1:] == pos_sorted[:-1]) & (score[order][1:] == score[order][:-1])
    tied_kf = np.unique(pos_sorted[1:][tie])

    group_start = np.searchsorted(pos_sorted, pos_sorted, side="left")
    rank_in_kf = np.arange(n) - group_start
    keep = np.ones(n, dtype=bool) if cap is None else rank_in_kf < cap
    keep &= ~np.isin(pos_sorted, tied_kf)
    result = order[keep]
    if tied_kf.size == 0:
        return result

    # Keyframes with equal scores: replay the heap. Equal tuples are the same
    # detection as far as evaluation goes, so any of their rows may stand for them.
    replayed: list[np.ndarray] = []
    bounds = np.searchsorted(pos_sorted, np.stack([tied_kf, tied_kf + 1]))
    for lo, hi in bounds.T:
        rows = np.sort(order[lo:hi])  # file order
        replayed.append(_replay_heap(rows, score, action, boxes, cap))
    # Stitch: vectorised keyframes and replayed ones, keyframes in first-seen order.
    pieces = [result, *replayed]
    merged = np.concatenate(pieces)
    sizes = [len(p) for p in pieces]
    within = np.concatenate([np.arange(s) for s in sizes])
    # Inside the vectorised block, `within` already follows the official order.
    return merged[np.lexsort((within, kf_pos[merged]))]


def _replay_heap(
    rows: np.ndarray,
    score: np.ndarray,
    action: np.ndarray,
    boxes: np.ndarray,
    cap: int | None,
) -> np.ndarray:
    """One keyframe through ``heapq`` exactly as ``read_csv`` does it."""
    heap: list[tuple] = []
    where: dict[tuple, deque[int]] = defaultdict(deque)
    for r in rows.tolist():
        x1, y1, x2, y2 = boxes[r].tolist()
        item = (float(score[r]), int(action[r]), y1, x1, y2, x2)
        where[item].append(r)
        if cap is None or len(heap) < cap:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    kept = sorted(heap, key=lambda t: -t[0])
    return np.array([where[t].popleft() for t in kept], dtype=np.int64)


def argsort_desc_groups(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rank [N] of each row inside its group under ``np.argsort(scores)[::-1]``.

    ``group`` [N] int64 and ``score`` [N]; a group's scores are taken in array order,
    as the official code holds them. Groups without equal scores are ranked
    vectorised; the others call ``np.argsort`` themselves (its tie order is numpy's).
    """
    n = group.size
    rank = np.empty(n, dtype=np.int64)
    if n == 0:
        return rank
    order = np.lexsort((np.arange(n), -score, group))
    g_sorted = group[order]
    start = np.searchsorted(g_sorted, g_sorted, side="left")
    rank[order] = np.arange(n) - start
    tie = (g_sorted[1:] == g_sorted[:-1]) & (score[order][1:] == score[order][:-1])
    tied = np.unique(g_sorted[1:][tie])
    bounds = np.searchsorted(g_sorted, np.stack([tied, tied + 1]))
    for lo, hi in bounds.T:
        members = np.sort(order[lo:hi])  # array order
        rank[members[np.argsort(score[members])[::-1]]] = np.arange(members.size)
    return rank


def class_ranking(score: np.ndarray) -> np.ndarray:
    """Indices ranking one class's concatenated scores as the official code does."""
    return np.argsort(score)[::-1]
