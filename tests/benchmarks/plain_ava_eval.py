"""A plain AVA frame-mAP evaluator: numpy only (pyarrow parses the CSVs, as bankflow does).

The yardstick of ``test_bench_cli.py``: the least a process must do to evaluate AVA
predictions — parse two CSVs, match, rank, sum. Same protocol as ``bankflow eval``
under its default ``--protocol 2019`` (see :mod:`stages.evaluate.ava`): rows of classes
outside the label map dropped, at most 50 detections per keyframe (the highest scores,
file order on ties), degenerate detection boxes dropped, per (keyframe, class) greedy
matching of each detection to its best-IoU GT box only, VOC all-points AP per class with
GT, mean over those classes. No excluded-timestamps file.

Run: ``python plain_ava_eval.py GT.csv DET.csv CLASS_ID[,CLASS_ID...]``; prints the mAP.
Imports nothing from bankflow on purpose.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.csv as pacsv

CAP = 50
IOU = 0.5


def read(path: str, columns: int) -> tuple[np.ndarray, ...]:
    names = ["v", "t", "x1", "y1", "x2", "y2", "a", "s"][:columns]
    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=names))
    video = table["v"].to_numpy(zero_copy_only=False).astype(str)
    time = table["t"].to_numpy()
    boxes = np.stack([table[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], 1).astype(float)
    action = table["a"].to_numpy()
    score = table["s"].to_numpy().astype(float) if columns == 8 else np.ones(len(time))
    return video, time, boxes, action, score


def keyframe_ids(gt_v, gt_t, det_v, det_t) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([np.char.add(np.char.add(gt_v, ","), gt_t.astype(str)),
                           np.char.add(np.char.add(det_v, ","), det_t.astype(str))])  # fmt: skip
    _, ids = np.unique(keys, return_inverse=True)
    return ids[: len(gt_v)], ids[len(gt_v) :]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def frame_map(gt_path: str, det_path: str, classes: np.ndarray) -> float:
    gv, gt_t, gb, ga, _ = read(gt_path, 8)
    dv, dt, db, da, ds = read(det_path, 8)
    g_in, d_in = np.isin(ga, classes), np.isin(da, classes)
    gv, gt_t, gb, ga = gv[g_in], gt_t[g_in], gb[g_in], ga[g_in]
    dv, dt, db, da, ds = dv[d_in], dt[d_in], db[d_in], da[d_in], ds[d_in]
    gk, dk = keyframe_ids(gv, gt_t, dv, dt)
    # Cap: the top CAP scores per keyframe (file order on ties).
    order = np.lexsort((np.arange(len(dk)), -ds, dk))
    first = np.r_[0, np.flatnonzero(np.diff(dk[order])) + 1]
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    keep = np.sort(order[rank < CAP])
    dk, db, da, ds = dk[keep], db[keep], da[keep], ds[keep]
    valid = (db[:, 0] < db[:, 2]) & (db[:, 1] < db[:, 3])
    dk, db, da, ds = dk[valid], db[valid], da[valid], ds[valid]
    # Groups (keyframe, class); detections in score order within a group.
    n_cls = int(max(ga.max(initial=0), da.max(initial=0))) + 1
    g_grp, d_grp = gk * n_cls + ga, dk * n_cls + da
    g_order = np.argsort(g_grp, kind="stable")
    g_sorted = g_grp[g_order]
    lo = np.searchsorted(g_sorted, d_grp, "left")
    hi = np.searchsorted(g_sorted, d_grp, "right")
    n_pairs = hi - lo
    det_of_pair = np.repeat(np.arange(len(d_grp)), n_pairs)
    gt_of_pair = g_order[np.arange(n_pairs.sum()) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs) + np.repeat(lo, n_pairs)]  # fmt: skip
    pair_iou = iou(db[det_of_pair], gb[gt_of_pair])
    # Best GT per detection (the first on equal IoU), then the first claimant wins it.
    by_det = np.lexsort((np.arange(len(pair_iou)), -pair_iou, det_of_pair))
    has_pair = n_pairs > 0
    best_pos = by_det[np.r_[0, np.cumsum(n_pairs)[:-1]][has_pair]]
    best_gt = np.full(len(d_grp), -1)
    best_iou = np.zeros(len(d_grp))
    best_gt[has_pair], best_iou[has_pair] = gt_of_pair[best_pos], pair_iou[best_pos]
    hit = best_iou >= IOU
    claim = np.lexsort((np.arange(len(d_grp)), -ds, best_gt))  # score order per GT box
    claim = claim[hit[claim]]
    first_claim = np.r_[True, best_gt[claim][1:] != best_gt[claim][:-1]]
    tp = np.zeros(len(d_grp), bool)
    tp[claim[first_claim]] = True
    aps = []
    for c in classes:
        n_gt = int((ga == c).sum())
        if n_gt == 0:
            continue
        rows = np.flatnonzero(da == c)
        ranked = tp[rows[np.argsort(-ds[rows], kind="stable")]]
        cum_tp = np.cumsum(ranked)
        precision = cum_tp / np.arange(1, len(ranked) + 1)
        recall = cum_tp / n_gt
        rec = np.r_[0.0, recall, 1.0]
        prec = np.maximum.accumulate(np.r_[0.0, precision, 0.0][::-1])[::-1]
        steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
        aps.append(float(np.sum((rec[steps] - rec[steps - 1]) * prec[steps])))
    return float(np.mean(aps))


if __name__ == "__main__":
    gt_csv, det_csv, class_list = sys.argv[1:4]
    print(f"mAP {frame_map(gt_csv, det_csv, np.array(class_list.split(','), dtype=int)):.6f}")
