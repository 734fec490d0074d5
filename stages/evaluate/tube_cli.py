"""``bankflow eval --tubes GT PRED``: frame-mAP and video-mAP of per-frame detections.

``GT`` is a tube GT file (``.json``, or the dataset's pickle with ``--trust-pickle``);
``PRED`` an AVA-style detection CSV whose timestamp column holds 1-based frame numbers
and boxes normalised (what the pipeline writes for a tube dataset), or a ``.npy`` float
array [N, 8] ``video_index, frame, label_index, score, x1, y1, x2, y2`` in pixels. The
CSV's detections are linked into tubes exactly as the ``evaluate`` stage links them
(:mod:`stages.evaluate.tube_eval`). Exit codes: 0 success, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from stages.data import DataError, read_detections_csv
from stages.data.tubes import read_tube_file
from stages.evaluate.tube_eval import (
    LinkingConfig,
    evaluate_tube_detections,
    frame_detections,
    write_tube_outputs,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bankflow eval --tubes",
        description="Frame-mAP and video-mAP on a tube dataset (MultiSports, UCF101-24, JHMDB).",
    )
    p.add_argument("--tubes", action="store_true", required=True, help="tube-dataset mode")
    p.add_argument("gt", type=Path, help="tube GT file (.json, or .pkl with --trust-pickle)")
    p.add_argument("pred", type=Path, help="detections: AVA-style CSV (frames) or .npy [N, 8]")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickle GT file")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--split-index", type=int, default=0)
    p.add_argument("--convention", choices=("multisports", "act"), default="multisports")
    d = LinkingConfig()
    p.add_argument("--min-length", type=int, default=d.min_length)
    p.add_argument("--link-iou", type=float, default=d.link_iou)
    p.add_argument("--nms", type=float, default=d.nms_threshold)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--min-score", type=float, default=d.min_score)
    p.add_argument(
        "--mmaction2-scores",
        action="store_true",
        help="link as mmaction2's metric does (every box: the last score)",
    )
    p.add_argument("--out-dir", type=Path, help="write metrics.json, metrics.md, tubes.json")
    return p


def tube_eval_main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    try:
        for what, path in (("tube GT", args.gt), ("detections", args.pred)):
            if not path.is_file():
                raise DataError(path, None, f"{what} file not found")
        gt = read_tube_file(args.gt, trust_pickle=args.trust_pickle)
        lists = gt.test_videos if args.split == "test" else gt.train_videos
        if args.split_index >= len(lists):
            raise DataError(args.gt, None, f"has no {args.split} split {args.split_index}")
        videos = lists[args.split_index]
        if args.pred.suffix == ".npy":
            dets = np.load(args.pred, allow_pickle=False)
            if dets.ndim != 2 or dets.shape[1] != 8:
                raise DataError(args.pred, None, f"shape {dets.shape}, expected (N, 8)")
        else:
            dets = frame_detections(read_detections_csv(args.pred, strict=False), gt, videos)
        linking = LinkingConfig(
            min_length=args.min_length,
            link_iou=args.link_iou,
            nms_threshold=args.nms,
            top_k=args.top_k,
            min_score=args.min_score,
            mmaction2_scores=args.mmaction2_scores,
        )
        result, tubes = evaluate_tube_detections(
            gt, dets, videos, linking=linking, convention=args.convention
        )
    except (DataError, ValueError) as err:
        print(f"bankflow eval: error: {err}", file=sys.stderr)
        return 2
    print(result.to_markdown(gt.labels), end="")
    if args.out_dir is not None:
        for kind, path in write_tube_outputs(result, tubes, gt.labels, args.out_dir).items():
            print(f"wrote {kind}: {path}")
    return 0
