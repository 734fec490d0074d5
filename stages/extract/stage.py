"""extract: backbone features of every actor of every keyframe, into Zarr feature stores.

For each split, each video is decoded once (the decode-once clip iterator), the backbone
runs on the clip around every keyframe (batched), each actor box is RoIAligned (7×7) and
max-pooled, and the video is written to ``features/<split>.zarr`` as one group (docs/design.md §3).
Three threads overlap (docs/design.md §3, "Extraction runs in three threads"): a decode
thread claims, opens and decodes the videos in turn and prepares their batches, the
caller's runs the backbone, and a writer thread writes the previous video.

The stage is resumable per video: a killed run restarted with the same config finds its
staging store, skips complete videos and rewrites unfinished ones (taking over claims of
killed processes on this host at once, of other hosts after the claim TTL); inference is
deterministic on CPU for a fixed torch thread count, so the result is bitwise equal to an
uninterrupted run.

Which keyframes a video has comes from the track stage's actors: a keyframe with no
person box has nothing to pool and is not stored (readers see a gap in ``timestamps``).

Several processes may run the same stage (same key, same staging store) at once: each
claims videos one at a time, waits for videos another live process holds (taking over
the claim of a process that died), and exactly one process finalizes the stores and lets
the framework publish them; the others wait for that publication and then return it.

Before writing, the projected size of every split's store is logged and a target without
enough free disk space for all of them is refused (``allow_low_disk`` overrides).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from featurestore import (
    FeatureStore,
    estimate_store_bytes,
    format_bytes,
)
from stages.data import Dataset
from stages.detect.track import read_actors
from stages.extract.config import EXTRACT as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.extract.config import (  # noqa: F401 (re-exported)
    BackboneConfig,
    ExtractConfig,
    ExtractStageConfig,
    RoIAlignConfig,
)
from stages.extract.video import VideoExtractor, _device, _probe_shapes, build_schema, load_backbone
from stages.extract.workers import _become_publisher, _open_store, _published, _SplitRun
from stages.framework import COMPLETE_MARKER, StageContext, StageError, output_dir, output_file
from stages.framework.diskspace import bytes_under
from stages.video import VideoError, VideoReader

FEATURES_DIR = "features"
WEIGHTS_FILE = "backbone.pt"  # what the finetune stage publishes
log = logging.getLogger("bankflow.extract")


def store_path(uri: str | Path, split: str) -> Path | str:
    """The split's store of an extract output (a URL when read in place from a cache)."""
    return output_file(uri, FEATURES_DIR, f"{split}.zarr")


def _actors_by_video(table: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    video = np.asarray(table["video"].to_pylist(), dtype=object)
    cols = {
        "timestamp": table["timestamp"].to_numpy(),
        "boxes": np.stack([table[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], 1).astype(
            np.float32
        ),
        "score": table["score"].to_numpy().astype(np.float32),
        "track": table["track"].to_numpy().astype(np.int32),
    }
    out = {}
    for v in sorted(set(video.tolist())):
        rows = np.flatnonzero(video == v)
        out[v] = {k: c[rows] for k, c in cols.items()}
    return out


def _check_disk(target: Path, needed: int, allow: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    log.info("extract: projected store size %s, free %s", format_bytes(needed), format_bytes(free))
    if needed > free and not allow:
        raise StageError(
            f"extract: the stores need about {format_bytes(needed)} but {target} has "
            f"{format_bytes(free)} free (set extract.allow_low_disk=true to try anyway, or "
            "extract.context_grid to store a pooled context map)"
        )


def compute(ctx: StageContext[ExtractStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    ex = cfg.extract
    # The staging dir is recognised by its inode once the framework renames it into place;
    # taken first, as another process of this key may publish it at any moment.
    try:
        inode = ctx.staging.stat().st_ino
    except FileNotFoundError:
        final = output_dir(ctx.work_root, ctx.stage, ctx.key)
        if not (final / COMPLETE_MARKER).is_file():
            raise StageError(
                f"extract: the staging dir {ctx.staging} is gone and no output of key "
                f"{ctx.key} is published in {final.parent}; rerun"
            ) from None
        # Another process published it between its creation and here (the framework then
        # writes into a re-created dir, finds that output, drops the dir and returns it).
        ctx.staging.mkdir(parents=True, exist_ok=True)
        return {}
    dataset = Dataset.open(cfg.dataset)
    # A fine-tuned backbone wins; extract.weights is then where the fine-tuning started.
    if "finetune" in ctx.inputs:
        weights: Path | None = ctx.input("finetune").path / WEIGHTS_FILE
    else:
        weights = Path(ex.weights) if ex.weights else None
    model, weights_sha = load_backbone(ex, weights)
    model = model.to(_device(ex.device))
    owner = f"{socket.gethostname()}:{os.getpid()}"
    detector_key = ctx.inputs["detect"].key if "detect" in ctx.inputs else None
    summary: dict[str, Any] = {}
    stores: list[FeatureStore] = []
    probed: dict[tuple[int, int], tuple[tuple[int, int, int], int | None]] = {}
    published = functools.partial(_published, ctx, inode)
    plans = []
    for split in ex.splits:
        by_video = _actors_by_video(read_actors(ctx.input("track").uri, split))
        if not by_video:
            raise StageError(f"extract: split {split!r} has no actors (track stage output)")
        first = next(iter(by_video))
        try:
            with VideoReader(dataset.video_path(first), short_side=ex.short_side) as probe:
                height, width = probe.height, probe.width
        except VideoError as exc:
            raise StageError(f"extract {split}: video {first!r}: {exc}") from exc
        if (height, width) not in probed:  # splits usually share one frame size
            probed[height, width] = _probe_shapes(model.cpu(), ex, height, width)
            model = model.to(_device(ex.device))
        fmap_shape, t_prime = probed[height, width]
        schema = build_schema(
            ex,
            fmap_shape,
            t_prime,
            weights_sha,
            detector_key,
            architecture=getattr(model, "config", None),
        )
        n_kf = sum(len(np.unique(a["timestamp"])) for a in by_video.values())
        n_act = sum(len(a["timestamp"]) for a in by_video.values())
        plans.append((split, by_video, schema, n_kf, n_act))
    # One check for the whole stage (every split's store), less what a killed run wrote.
    ctx.expected_bytes = sum(estimate_store_bytes(p[2], p[3], p[4]) for p in plans)
    if not published():  # (once published, the staging path must not be recreated)
        needed = max(0, ctx.expected_bytes - bytes_under(ctx.staging))
        _check_disk(ctx.staging / "features", needed, ex.allow_low_disk)
    for split, by_video, schema, n_kf, n_act in plans:
        if published():
            break
        store = _open_store(
            Path(store_path(ctx.staging, split)), schema, ctx.key, split, list(by_video)
        )
        t0 = time.perf_counter()
        job = _SplitRun(
            ctx,
            split,
            dataset,
            VideoExtractor(model, ex, schema),
            store,
            by_video,
            owner,
            published,
        )
        resumed = job.run() if not store.complete else len(by_video)
        stores.append(store)
        summary[split] = {
            "videos": len(by_video),
            "extracted": job.done,
            "resumed": resumed,
            "keyframes": n_kf,
            "actors": n_act,
            "seconds": round(time.perf_counter() - t0, 2),
            "context_shape": list(schema.context_shape),
        }
    if not _become_publisher(ctx, owner, inode):
        # Another process finalized and published this very staging dir. The framework
        # writes its provenance into ctx.staging next, then finds the published output,
        # drops this empty dir and returns that output.
        ctx.staging.mkdir(parents=True, exist_ok=True)
        return summary
    for split, store in zip(ex.splits, stores, strict=True):
        if not store.complete:  # a resumed run may find it finalized already
            store.finalize()
        summary[split]["bytes"] = store.nbytes()
    return summary
