"""``bankflow eval GT PRED --labelmap L ...``: AVA frame-mAP from the command line.

``bankflow eval --tubes GT PRED``: frame- and video-mAP on a tube dataset
(:mod:`stages.evaluate.tube_cli`).

Also runnable as ``python -m stages.evaluate.cli``. Exit codes: 0 success, 2 bad
input (missing file, malformed CSV or label map), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from stages.data import DataError, read_labelmap
from stages.evaluate.ava import PROTOCOLS, TIES, evaluate_ava_files
from stages.evaluate.report import write_ava_outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bankflow eval", description="AVA frame-mAP (official protocol, vectorised)."
    )
    p.add_argument("gt", type=Path, help="AVA GT CSV")
    p.add_argument("pred", type=Path, help="AVA detection CSV (7 or 8 columns)")
    p.add_argument("--labelmap", type=Path, required=True, help="label map .pbtxt")
    p.add_argument("--excluded", type=Path, help="excluded timestamps CSV")
    p.add_argument("--json", type=Path, help="write the metrics JSON here")
    p.add_argument("--out-dir", type=Path, help="write metrics.json, metrics.md, per_class_ap.png")
    p.add_argument("--protocol", choices=PROTOCOLS, default="2019")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    p.add_argument(
        "--ties",
        choices=TIES,
        default="official",
        help="order of equal scores: 'official' = the ActivityNet code's (heap in the "
        "top-50 cap, np.argsort[::-1] ranking; published numbers), 'stable' = file order",
    )
    return p


def eval_main(argv: list[str] | None = None) -> int:
    """Run the evaluation; print mAP and the per-class table. Returns the exit code."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    if "--tubes" in args_list:  # tube datasets: frame- and video-mAP
        from stages.evaluate.tube_cli import tube_eval_main

        return tube_eval_main(args_list)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse printed the usage error already
        return int(stop.code or 0)
    try:
        for what, path in (
            ("GT", args.gt),
            ("predictions", args.pred),
            ("label map", args.labelmap),
        ):
            if not path.is_file():
                raise DataError(path, None, f"{what} file not found")
        if args.excluded is not None and not args.excluded.is_file():
            raise DataError(args.excluded, None, "excluded-timestamps file not found")
        labelmap = read_labelmap(args.labelmap)
        start = time.perf_counter()
        result = evaluate_ava_files(
            args.gt,
            args.pred,
            args.labelmap,
            args.excluded,
            protocol=args.protocol,
            iou_threshold=args.iou,
            ties=args.ties,
        )
        seconds = time.perf_counter() - start
    except (DataError, ValueError) as err:
        print(f"bankflow eval: error: {err}", file=sys.stderr)
        return 2

    print(result.to_markdown(labelmap), end="")
    print(f"mAP@{args.iou:g} = {result.mAP:.6f}  ({seconds:.2f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    if args.out_dir is not None:
        for kind, path in write_ava_outputs(result, labelmap, args.out_dir).items():
            print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(eval_main())
