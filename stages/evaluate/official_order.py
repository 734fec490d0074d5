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

Keyframes without two equal scores of one class, and without equal scores across the
cap, have only one possible outcome, so they are ordered with vectorised numpy; only the
others are replayed through ``heapq`` (``np.argsort`` for 2018's per-group sort).
"""

from __future__ import annotations

import heapq

import numpy as np

# 2018's NMS keeps scores strictly above this (``filter_scores_greater_than``).
SCORE_FLOOR_2018 = -10.0
# Rows per block of the heap replay (heap_keyframe_order): bounds its Python tuples' memory.
REPLAY_BLOCK = 1 << 16


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
    rows = np.arange(n)
    order = np.lexsort((rows, -score, kf_pos))
    pos_sorted = kf_pos[order]
    group_start = np.searchsorted(pos_sorted, pos_sorted, side="left")
    rank_in_kf = rows - group_start
    keep = np.ones(n, dtype=bool) if cap is None else rank_in_kf < cap
    result = order[keep]

    # Only two things depend on the heap's layout: which of several equal scores
    # straddling the cap survive, and the order of equal scores of one class (the
    # order across classes never meets: matching and ranking are per class). Keyframes
    # with neither are fully decided by the sort above.
    replay = np.zeros(kf_pos.max() + 1, dtype=bool)
    by_class = np.lexsort((rows, action, -score, kf_pos))
    same = (kf_pos[by_class][1:] == kf_pos[by_class][:-1]) & (
        (score[by_class][1:] == score[by_class][:-1])
        & (action[by_class][1:] == action[by_class][:-1])
    )
    replay[kf_pos[by_class][1:][same]] = True
    if cap is not None:
        at_cut = np.flatnonzero(rank_in_kf[1:] == cap) + 1  # the first row left out
        straddle = score[order[at_cut]] == score[order[at_cut - 1]]
        replay[pos_sorted[at_cut[straddle]]] = True
    if not replay.any():
        return result
    result = result[~replay[kf_pos[result]]]

    # Replay the heap for those keyframes over Python lists, a block of keyframes at a
    # time: a prior-only file ties every keyframe, and one list of tuples for all its rows
    # held GBs at AVA scale (issue 22).
    rows_in = np.flatnonzero(replay[kf_pos])  # file order
    rows_in = rows_in[np.argsort(kf_pos[rows_in], kind="stable")]  # grouped, file order kept
    starts = np.concatenate([[0], np.flatnonzero(np.diff(kf_pos[rows_in])) + 1])
    ends = np.concatenate([starts[1:], [rows_in.size]])
    replayed: list[int] = []
    first = 0
    while first < starts.size:  # keyframes [first, last) hold about REPLAY_BLOCK rows
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + REPLAY_BLOCK, "right")))
        block = rows_in[starts[first] : ends[last - 1]]
        items = list(
            zip(
                score[block].tolist(),
                action[block].tolist(),
                *boxes[block][:, [1, 0, 3, 2]].T.tolist(),  # the official tuple: y1 x1 y2 x2
                strict=True,
            )
        )
        index = block.tolist()
        base = int(starts[first])
        for lo, hi in zip(starts[first:last].tolist(), ends[first:last].tolist(), strict=True):
            replayed += _replay_heap(
                items[lo - base : hi - base], index[lo - base : hi - base], cap
            )
        first = last
    merged = np.concatenate([result, np.asarray(replayed, dtype=np.int64)])
    # Keyframes in first-seen order; inside one, the order each part already has.
    return merged[np.lexsort((np.arange(merged.size), kf_pos[merged]))]


def _replay_heap(items: list[tuple], index: list[int], cap: int | None) -> list[int]:
    """One keyframe's rows (official tuples, file order) through ``heapq`` exactly as
    ``read_csv`` does it; returns the kept rows' indices in the official order. Equal
    tuples are the same detection as far as evaluation goes, so any of their rows may
    stand for them."""
    heap: list[tuple] = []
    where: dict[tuple, list[int]] = {}
    for item, r in zip(items, index, strict=True):
        where.setdefault(item, []).append(r)
        if cap is None or len(heap) < cap:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    kept = sorted(heap, key=lambda t: -t[0])
    return [where[t].pop() for t in kept]


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
