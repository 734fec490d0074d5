"""extract: backbone features of every actor of every keyframe, into Zarr feature stores.

For each split, each video is decoded once (the decode-once clip iterator, prefetched in
a background thread so decoding overlaps the backbone), the backbone runs on the clip
around every keyframe (batched), each actor box is RoIAligned (7×7) and max-pooled, and
the video is written to ``features/<split>.zarr`` as one group (DESIGN §3). The stage is
resumable per video: a killed run restarted with the same config finds its staging
store, skips complete videos and rewrites unfinished ones; inference is deterministic on
CPU, so the result is bitwise equal to an uninterrupted run.

Before starting, the projected store size is logged and a target without enough free
disk space is refused (``allow_low_disk`` overrides).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict

from featurestore import (
    FeatureStore,
    KeyframeFeatures,
    StoreSchema,
    VideoFeatures,
    estimate_store_bytes,
    format_bytes,
)
from models.backbones import build_backbone
from models.roi import actor_rois
from stages.data import Dataset, DatasetConfig
from stages.framework import Stage, StageContext, StageError
from stages.track import read_actors
from stages.video import ClipSpec, VideoReader, prefetch_keyframe_clips

CODE_VERSION = "1"
FEATURES_DIR = "features"
WEIGHTS_FILE = "backbone.pt"  # what the finetune stage publishes

log = logging.getLogger("bankflow.extract")


class ExtractConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = "slowfast_r50"
    backbone_kwargs: dict[str, Any] = {}
    # A local checkpoint (PySlowFast / MMAction2 / bankflow); None = the finetune stage's
    # weights when the pipeline has one, else a fixed-seed random init (demo only).
    weights: str | None = None
    seed: int = 0
    num_frames: int = 32  # frames of the (fast) clip
    frame_stride: int = 2  # source frames between clip frames
    target_fps: float | None = None  # measure the stride at this rate (AVA: 30)
    short_side: int | None = 256
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    # Pool the context map to this (h, w) grid before storing (None: full map).
    context_grid: tuple[int, int] | None = None
    store_roi: bool = False  # keep the 7×7 RoI maps (ACRN, PCCA, IGMN, S-only read them)
    store_roi_t: bool = False  # keep temporal RoI maps (T-only)
    batch_size: int = 8  # keyframes per backbone forward
    device: Literal["auto", "cpu", "cuda"] = "auto"
    splits: list[str] = ["train", "val"]
    allow_low_disk: bool = False


class ExtractStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetConfig
    dataset_fingerprint: str
    extract: ExtractConfig


def store_path(uri: str | Path, split: str) -> Path:
    return Path(uri) / FEATURES_DIR / f"{split}.zarr"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_backbone(cfg: ExtractConfig, weights: Path | None) -> tuple[torch.nn.Module, str | None]:
    """The backbone in eval mode and the sha256 of its weights (None: seeded random)."""
    torch.manual_seed(cfg.seed)
    kwargs = dict(cfg.backbone_kwargs)
    if weights is None:
        return build_backbone(cfg.backbone, **kwargs).eval(), None
    if not weights.is_file():
        raise StageError(f"extract: backbone weights {weights} not found")
    if cfg.backbone.startswith("slowfast"):
        model = build_backbone(cfg.backbone, weights=str(weights), **kwargs)
    else:
        model = build_backbone(cfg.backbone, weights_path=str(weights), **kwargs)
    return model.eval(), _sha256(weights)


def _probe_shapes(model: torch.nn.Module, cfg: ExtractConfig, height: int, width: int):
    """(C, h, w) of the map and T' of the temporal map for a clip of this size."""
    with torch.inference_mode():
        x = torch.zeros(1, 3, cfg.num_frames, height, width)
        fmap = model(x)
        t_prime = None
        if cfg.store_roi_t:
            slow, _fast = model(x, return_temporal=True)
            t_prime = int(slow.shape[2])
    return tuple(int(v) for v in fmap.shape[1:]), t_prime


def build_schema(
    cfg: ExtractConfig, fmap_shape: tuple[int, int, int], t_prime: int | None,
    weights_sha: str | None, detector_key: str | None,
) -> StoreSchema:  # fmt: skip
    channels, h, w = fmap_shape
    grid = cfg.context_grid or (h, w)
    return StoreSchema(
        backbone=cfg.backbone,
        weights_sha256=weights_sha,
        detector_key=detector_key,
        clip={
            "frames": cfg.num_frames,
            "stride": cfg.frame_stride,
            "fps": cfg.target_fps,
            "short_side": cfg.short_side,
        },  # fmt: skip
        context_shape=(channels, *grid),
        pooled_dim=channels,
        roi_shape=(channels, 7, 7) if cfg.store_roi else None,
        roi_t_shape=(channels, t_prime, 7, 7) if cfg.store_roi_t and t_prime else None,
        extra={"backbone_kwargs": cfg.backbone_kwargs, "mean": cfg.mean, "std": cfg.std},
    )


class VideoExtractor:
    """Runs the backbone over the keyframe clips of one video and gathers its features."""

    def __init__(self, model: torch.nn.Module, cfg: ExtractConfig, schema: StoreSchema) -> None:
        self.model, self.cfg, self.schema = model, cfg, schema
        self.device = next(model.parameters()).device
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1)

    def _forward(self, clips: list[np.ndarray], boxes: list[np.ndarray]):
        x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float().div_(255.0)
        x = ((x - self.mean) / self.std).to(self.device)  # (B, 3, T, H, W)
        counts = [len(b) for b in boxes]
        box_t = torch.from_numpy(np.concatenate(boxes).astype(np.float32)).to(self.device)
        index = torch.repeat_interleave(torch.arange(len(clips)), torch.tensor(counts))
        with torch.inference_mode():
            if self.cfg.store_roi_t:
                slow, fast = self.model(x, return_temporal=True)
                from models.backbones import pool_pathways

                fmap = pool_pathways(slow, fast)
            else:
                fmap = self.model(x)  # (B, C, h, w)
            roi, pooled = actor_rois(
                fmap, box_t, index.to(self.device), input_size=(x.shape[3], x.shape[4])
            )
            context = fmap
            if self.cfg.context_grid is not None:
                context = torch.nn.functional.adaptive_avg_pool2d(fmap, self.cfg.context_grid)
            roi_t = None
            if self.cfg.store_roi_t:
                roi_t = self._temporal_rois(slow, fast, box_t, index, x.shape[3:])
        return context.cpu(), roi.cpu(), pooled.cpu(), None if roi_t is None else roi_t.cpu()

    def _temporal_rois(self, slow, fast, boxes, index, size) -> torch.Tensor:
        # Fast pathway averaged to the slow rate, concatenated with slow: [B, C, T', h, w].
        t_slow = slow.shape[2]
        fast = torch.nn.functional.adaptive_avg_pool3d(fast, (t_slow, *fast.shape[3:]))
        maps = torch.cat([slow, fast], dim=1)
        per_t = []
        for t in range(t_slow):
            roi, _ = actor_rois(maps[:, :, t], boxes, index.to(maps.device), input_size=tuple(size))
            per_t.append(roi)
        return torch.stack(per_t, dim=2)  # (N, C, T', 7, 7)

    def run(
        self, reader: VideoReader, video_id: str, actors: dict[str, np.ndarray], offset: float
    ) -> VideoFeatures:
        timestamps = np.unique(actors["timestamp"])
        spec = ClipSpec(
            num_frames=self.cfg.num_frames, stride=self.cfg.frame_stride,
            short_side=self.cfg.short_side, target_fps=self.cfg.target_fps,
        )  # fmt: skip
        keyframes: list[KeyframeFeatures] = []
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []

        def flush() -> None:
            rows = [np.flatnonzero(actors["timestamp"] == t) for t, _, _ in pending]
            context, roi, pooled, roi_t = self._forward(
                [clip for _, clip, _ in pending], [b for _, _, b in pending]
            )
            start = 0
            for k, ((t, _, b), r) in enumerate(zip(pending, rows, strict=True)):
                stop = start + len(b)
                keyframes.append(
                    KeyframeFeatures(
                        video_id=video_id,
                        timestamp=int(t),
                        context=context[k].numpy(),
                        boxes=b,
                        scores=actors["score"][r],
                        track=actors["track"][r],
                        pooled=pooled[start:stop].numpy(),
                        roi=roi[start:stop].numpy() if self.cfg.store_roi else None,
                        roi_t=None if roi_t is None else roi_t[start:stop].numpy(),
                    )  # fmt: skip
                )
                start = stop
            pending.clear()

        clips = prefetch_keyframe_clips(reader, timestamps, offset=offset, spec=spec, depth=2)
        for clip in clips:
            t = int(round(clip.timestamp))
            rows = np.flatnonzero(actors["timestamp"] == t)
            pending.append((t, clip.frames, actors["boxes"][rows]))
            if len(pending) == self.cfg.batch_size:
                flush()
        if pending:
            flush()
        return VideoFeatures.from_keyframes(keyframes, self.schema)


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


def compute(ctx: StageContext) -> dict[str, Any]:
    cfg: ExtractStageConfig = ctx.config  # type: ignore[assignment]
    ex = cfg.extract
    dataset = Dataset.open(cfg.dataset)
    weights = Path(ex.weights) if ex.weights else None
    if weights is None and "finetune" in ctx.inputs:
        weights = ctx.input("finetune").path / WEIGHTS_FILE
    model, weights_sha = load_backbone(ex, weights)
    model = model.to(_device(ex.device))
    owner = f"{socket.gethostname()}:{os.getpid()}"
    detector_key = ctx.inputs["detect"].key if "detect" in ctx.inputs else None
    summary: dict[str, Any] = {}
    for split in ex.splits:
        by_video = _actors_by_video(read_actors(ctx.input("track").uri, split))
        if not by_video:
            raise StageError(f"extract: split {split!r} has no actors (track stage output)")
        first = next(iter(by_video))
        with VideoReader(dataset.video_path(first), short_side=ex.short_side) as probe:
            fmap_shape, t_prime = _probe_shapes(model.cpu(), ex, probe.height, probe.width)
        model = model.to(_device(ex.device))
        schema = build_schema(ex, fmap_shape, t_prime, weights_sha, detector_key)
        n_kf = sum(len(np.unique(a["timestamp"])) for a in by_video.values())
        n_act = sum(len(a["timestamp"]) for a in by_video.values())
        path = store_path(ctx.staging, split)
        _check_disk(path.parent, estimate_store_bytes(schema, n_kf, n_act), ex.allow_low_disk)
        store = FeatureStore.create(
            path, schema, provenance={"stage": "extract", "key": ctx.key, "split": split},
            exist_ok=True, expected_videos=list(by_video),
        )  # fmt: skip
        extractor = VideoExtractor(model, ex, schema)
        done = skipped = 0
        t0 = time.perf_counter()
        for video_id, actors in by_video.items():
            if store.is_complete_video(video_id):
                skipped += 1
                continue
            with store.claim(video_id, owner=owner) as claim:
                if claim is None:  # another worker has it
                    continue
                tv = time.perf_counter()
                with VideoReader(dataset.video_path(video_id), short_side=ex.short_side) as reader:
                    features = extractor.run(reader, video_id, actors, dataset.timestamp_offset)
                    decoded = reader.decode_counter
                store.write_video(
                    video_id, features,
                    provenance={"seconds": time.perf_counter() - tv, "decoded_frames": decoded},
                )  # fmt: skip
                done += 1
                log.info("extract %s: %s (%d/%d)", split, video_id, done + skipped, len(by_video))
        if not store.complete:  # a resumed run may find it finalized already
            store.finalize()
        summary[split] = {
            "videos": len(by_video), "extracted": done, "resumed": skipped,
            "keyframes": n_kf, "actors": n_act, "bytes": store.nbytes(),
            "seconds": round(time.perf_counter() - t0, 2),
            "context_shape": list(schema.context_shape),
        }  # fmt: skip
    return summary


STAGE = Stage(
    name="extract", code_version=CODE_VERSION, config_type=ExtractStageConfig,
    compute=compute, resumable=True,
)  # fmt: skip
