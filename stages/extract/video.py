"""Running the backbone over one video: decode in the background, batch, RoIAlign.

Part of the extract stage (:mod:`stages.extract.stage`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from featurestore import (
    StoreSchema,
    VideoFeatures,
)
from featurestore.features import expected_shapes
from models.backbones import build_backbone
from models.backbones.source_config import read_source_config
from models.roi import actor_rois
from stages.framework import StageError
from stages.framework.background import in_background
from stages.framework.precision import autocast
from stages.video import ClipSpec, VideoReader, iter_keyframe_clips

if TYPE_CHECKING:
    from stages.extract.config import ExtractConfig

log = logging.getLogger("bankflow.extract")


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
    slowfast = cfg.backbone.startswith(("slowfast", "slowonly"))
    if cfg.source_config is not None:
        if not slowfast:
            raise StageError(
                f"extract: source_config applies to SlowFast/SlowOnly, not {cfg.backbone}"
            )
        kwargs["source_config"] = cfg.source_config
    if weights is not None and not weights.is_file():
        raise StageError(f"extract: backbone weights {weights} not found")
    if weights is not None:
        kwargs["weights" if slowfast else "weights_path"] = str(weights)
    try:
        model = build_backbone(cfg.backbone, **kwargs).eval()
    except (ValueError, FileNotFoundError) as exc:
        # One line: the load report that follows the first line is for `checkpoint inspect`.
        first = str(exc).splitlines()[0]
        hint = f" (see: bankflow checkpoint inspect {weights})" if weights is not None else ""
        raise StageError(f"extract: backbone {cfg.backbone}: {first}{hint}") from exc
    _check_normalisation(cfg, model)
    _check_clip(cfg, model)
    return model, None if weights is None else _sha256(weights)


def _check_normalisation(cfg: ExtractConfig, model: torch.nn.Module) -> None:
    """Refuse clips normalised otherwise than the source config says its weights expect."""
    config = getattr(model, "config", None)
    mean, std = getattr(config, "input_mean", None), getattr(config, "input_std", None)
    if mean is None or std is None:
        return
    if not (np.allclose(cfg.mean, mean, atol=1e-4) and np.allclose(cfg.std, std, atol=1e-4)):
        raise StageError(
            f"extract: the backbone's source config normalises input with mean"
            f" {[round(v, 4) for v in mean]}, std {[round(v, 4) for v in std]} (0-1 pixels) but"
            f" extract.mean/std are {list(cfg.mean)} / {list(cfg.std)}: set them to the source's"
        )


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Normalized ``x1, y1, x2, y2`` boxes [A, 4] as they sit in the left-right flipped
    frame: ``x1' = 1 - x2, x2' = 1 - x1`` (y unchanged). Its own inverse."""
    b = np.asarray(boxes)
    return np.stack([1.0 - b[:, 2], b[:, 1], 1.0 - b[:, 0], b[:, 3]], axis=1).astype(b.dtype)


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
    cfg: ExtractConfig,
    fmap_shape: tuple[int, int, int],
    t_prime: int | None,
    weights_sha: str | None,
    detector_key: str | None,
    *,
    architecture: object = None,
) -> StoreSchema:
    """The store schema; with zoo weights or a source config it also records the weights
    file, the source config and the resolved architecture (``SlowFastConfig`` fields)."""
    channels, h, w = fmap_shape
    grid = cfg.context_grid or (h, w)
    grid_side = cfg.roi_align.output_size
    extra = _extra(cfg, architecture)
    if cfg.roi_align != type(cfg.roi_align)():  # only when set, as for flip
        extra["roi_align"] = cfg.roi_align.model_dump()
    clip = {
        "frames": cfg.num_frames,
        "stride": cfg.frame_stride,
        "fps": cfg.target_fps,
        "short_side": cfg.short_side,
    }
    if cfg.flip:  # only when set: unflipped schemas stay equal to those of older stores
        clip["flip"] = True
    return StoreSchema(
        backbone=cfg.backbone,
        weights_sha256=weights_sha,
        detector_key=detector_key,
        clip=clip,
        context_shape=(channels, *grid),
        pooled_dim=channels,
        roi_shape=(channels, grid_side, grid_side) if cfg.store_roi else None,
        roi_t_shape=(channels, t_prime, grid_side, grid_side)
        if cfg.store_roi_t and t_prime
        else None,
        # As JSON gives it back (tuples -> lists): a resumed run compares this to the
        # stored schema, and (0.45, ...) != [0.45, ...] would refuse its own staging store.
        extra=json.loads(json.dumps(extra)),
    )


def _extra(cfg: ExtractConfig, architecture: object) -> dict:
    extra: dict = {"backbone_kwargs": cfg.backbone_kwargs, "mean": cfg.mean, "std": cfg.std}
    # Only when set: schemas of stores made without them stay as they were.
    if cfg.weights is not None or cfg.source_config is not None:
        extra["weights"] = cfg.weights
        extra["source_config"] = cfg.source_config
        if dataclasses.is_dataclass(architecture) and not isinstance(architecture, type):
            extra["architecture"] = dataclasses.asdict(architecture)
    return extra


def _check_clip(cfg: ExtractConfig, model: torch.nn.Module) -> None:
    """With a source config that states its clip, the clip must be that one."""
    config = getattr(model, "config", None)
    if cfg.source_config is None or config is None:
        return
    if "t_slow" not in read_source_config(cfg.source_config):
        return
    if (cfg.num_frames, cfg.frame_stride) != (config.t_fast, config.frame_stride):
        raise StageError(
            f"extract: {cfg.source_config} takes clips of {config.t_fast} frames every"
            f" {config.frame_stride} source frames, but extract.num_frames/frame_stride are"
            f" {cfg.num_frames}/{cfg.frame_stride}: set them to the source's"
        )


def normalisation_table(mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """float32 [768]: entry ``256 c + v`` is pixel value ``v`` of channel ``c`` normalised,
    ``(v / 255 - mean[c]) / std[c]``, computed by the same float32 torch operations as a
    whole clip would be, so looking pixels up in it gives bitwise the same batch."""
    values = torch.arange(256, dtype=torch.float32).repeat(3, 1).view(1, 3, 1, 1, 256)
    return ((values.div_(255.0) - mean) / std).reshape(768).numpy()


_CHANNEL_BASE = np.arange(0, 768, 256, dtype=np.intp)  # where each channel's 256 entries start


class VideoExtractor:
    """Runs the backbone over the keyframe clips of one video and gathers its features.

    The work splits in two so that callers can overlap it (docs/design.md §3,
    "Extraction runs in three threads"): :meth:`plan` and :meth:`batches` (decoding,
    batch preparation: a background thread) and :meth:`collector` (the backbone on the
    caller's thread; RoIAlign and the casts to the store's dtype on the collector's pool
    thread). :meth:`run` does both for one video.
    """

    def __init__(self, model: torch.nn.Module, cfg: ExtractConfig, schema: StoreSchema) -> None:
        self.model, self.cfg, self.schema = model, cfg, schema
        self.device = next(model.parameters()).device
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1)
        self.roi_spec = cfg.roi_align.spec()
        self._table = normalisation_table(self.mean, self.std)

    def _prepare(self, clips: list[np.ndarray]) -> torch.Tensor:
        """uint8 [T, H, W, 3] clips -> the normalized float batch [B, 3, T, H, W] (CPU),
        flipped left-right when the config says so.

        A table lookup per frame (numpy, one thread, the GIL released): about 2.5x less CPU
        than converting and normalising with torch, and no second pool of torch threads
        competing with the backbone's. The batch keeps the memory layout the backbone
        always got (channels last: [B, T, H, W, 3] viewed as [B, 3, T, H, W]).
        """
        t, h, w, _ = clips[0].shape
        out = np.empty((len(clips), t, h, w, 3), np.float32)
        index = np.empty((h, w, 3), np.intp)
        for b, clip in enumerate(clips):
            if self.cfg.flip:
                clip = clip[:, :, ::-1]
            for f in range(t):  # a frame at a time: the index buffer stays in cache
                np.add(clip[f], _CHANNEL_BASE, out=index)
                np.take(self._table, index, out=out[b, f], mode="clip")
        return torch.from_numpy(out).permute(0, 4, 1, 2, 3)

    def _forward(self, x: torch.Tensor, boxes: list[np.ndarray]):
        """Backbone, RoIAlign and pooling of one batch: :meth:`_backbone` then :meth:`_pool`."""
        return self._pool(self._backbone(x), tuple(x.shape[3:]), boxes)

    def _backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The backbone on a batch (B, 3, T, H, W): its map (B, C, h, w) as float32 and,
        with ``store_roi_t``, the fast pathway (the slow one is then the first item)."""
        x = x.to(self.device)
        # autocast: the backbone only
        with torch.inference_mode(), autocast(self.cfg.precision, self.device):
            if self.cfg.store_roi_t:
                slow, fast = self.model(x, return_temporal=True)
                return slow.float(), fast.float()
            return self.model(x).float(), None

    def _pool(
        self,
        maps: tuple[torch.Tensor, torch.Tensor | None],
        size: tuple[int, ...],
        boxes: list[np.ndarray],
    ):
        """RoIAlign, pooling and context of one batch's backbone output (``size``: the
        clips' (H, W)); CPU tensors (context, roi, pooled, roi_t or None)."""
        counts = [len(b) for b in boxes]
        box_t = torch.from_numpy(np.concatenate(boxes).astype(np.float32)).to(self.device)
        index = torch.repeat_interleave(torch.arange(len(boxes)), torch.tensor(counts))
        with torch.inference_mode():
            slow, fast = maps
            if fast is not None:
                from models.backbones import pool_pathways

                fmap = pool_pathways(slow, fast)
            else:
                fmap = slow
            roi, pooled = actor_rois(
                fmap,
                box_t,
                index.to(self.device),
                input_size=(size[0], size[1]),
                spec=self.roi_spec,
            )
            context = fmap
            if self.cfg.context_grid is not None:
                context = torch.nn.functional.adaptive_avg_pool2d(fmap, self.cfg.context_grid)
            roi_t = None
            if fast is not None:
                roi_t = self._temporal_rois(slow, fast, box_t, index, size)
        return context.cpu(), roi.cpu(), pooled.cpu(), None if roi_t is None else roi_t.cpu()

    def _temporal_rois(self, slow, fast, boxes, index, size) -> torch.Tensor:
        # Fast pathway averaged to the slow rate, concatenated with slow: [B, C, T', h, w].
        t_slow = slow.shape[2]
        fast = torch.nn.functional.adaptive_avg_pool3d(fast, (t_slow, *fast.shape[3:]))
        maps = torch.cat([slow, fast], dim=1)
        per_t = []
        for t in range(t_slow):
            roi, _ = actor_rois(
                maps[:, :, t],
                boxes,
                index.to(maps.device),
                input_size=tuple(size),
                spec=self.roi_spec,
            )
            per_t.append(roi)
        return torch.stack(per_t, dim=2)  # (N, C, T', s, s)

    def plan(self, actors: dict[str, np.ndarray]) -> VideoPlan:
        """The keyframes of a video and its actors sorted by keyframe (see :meth:`run`)."""
        order = np.argsort(actors["timestamp"], kind="stable")
        times = actors["timestamp"][order]
        timestamps, first = np.unique(times, return_index=True)
        boxes = actors["boxes"][order]
        return VideoPlan(
            timestamps=timestamps,
            offsets=np.append(first, len(times)).astype(np.int64),  # CSR over sorted actors
            boxes=flip_boxes(boxes) if self.cfg.flip else boxes,
            scores=actors["score"][order],
            track=actors["track"][order],
        )

    def batches(
        self, reader: VideoReader, plan: VideoPlan, offset: float, fps: float | None = None
    ) -> Iterator[torch.Tensor]:
        """The prepared batches of the plan's keyframe clips, each frame decoded once."""
        spec = ClipSpec(
            num_frames=self.cfg.num_frames,
            stride=self.cfg.frame_stride,
            short_side=self.cfg.short_side,
            target_fps=self.cfg.target_fps,
        )
        clips: list[np.ndarray] = []
        for clip in iter_keyframe_clips(reader, plan.timestamps, offset=offset, spec=spec, fps=fps):
            clips.append(clip.frames)
            if len(clips) == self.cfg.batch_size:
                yield self._prepare(clips)
                clips = []
        if clips:
            yield self._prepare(clips)

    def collector(self, plan: VideoPlan) -> FeatureCollector:
        """Runs the backbone on a plan's batches, in order, and gathers the features."""
        return FeatureCollector(self, plan)

    def run(
        self,
        reader: VideoReader,
        video_id: str,
        actors: dict[str, np.ndarray],
        offset: float,
        *,
        fps: float | None = None,
    ) -> VideoFeatures:
        """Features of every keyframe that has at least one actor.

        Args:
            actors: this video's actor rows: ``timestamp`` int [A], ``boxes`` float32 [A, 4]
                normalized x1, y1, x2, y2, ``score`` float32 [A], ``track`` int32 [A].
            offset: seconds of the video's first frame in the dataset's timestamps.
            fps: video frames per timestamp unit (None: the reader's; 1 for tube datasets,
                whose timestamps are frame numbers).

        Returns:
            The video's arrays in the store's dtypes; actors keep their input order within
            a keyframe; keyframes without actors are absent. With ``flip`` the boxes are
            the flipped ones the features were pooled from (see :func:`flip_boxes`).
        """
        plan = self.plan(actors)
        collector = self.collector(plan)
        # Decoding and batch preparation run in a background thread (decord and the
        # table lookup release the GIL), so they overlap the backbone on the previous batch.
        batches = self.batches(reader, plan, offset, fps)
        try:
            for x in in_background(batches, depth=2, name=f"decode {video_id}"):
                collector.add(x)
            return collector.features()
        finally:
            collector.close()


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """One video's keyframes (sorted) and its actors sorted by keyframe, CSR-indexed."""

    timestamps: np.ndarray  # [K] the keyframes that have actors
    offsets: np.ndarray  # int64 [K + 1]: keyframe k's actors are rows offsets[k]:offsets[k+1]
    boxes: np.ndarray  # [A, 4] (flipped when the config flips)
    scores: np.ndarray
    track: np.ndarray


class FeatureCollector:
    """The features of one video's batches, fed in order (:meth:`VideoExtractor.collector`).

    :meth:`add` runs the backbone on the caller's thread. On an accelerator it hands the
    output to a pool thread for RoIAlign, pooling, the copy to the host and the casts, so
    the next batch's forward starts at once (the copy of one batch overlaps the forward of
    the next); at most ``IN_FLIGHT`` batches wait there, in order, and errors of the pool
    thread surface in a later :meth:`add` or in :meth:`features`. On a CPU that work
    follows the forward on the caller's thread: a second thread would only take cores
    from the backbone (docs/findings.md, "Extraction overhead").
    """

    IN_FLIGHT = 2
    # None: the pool thread on accelerators only; True / False: always / never.
    POOL_THREAD: bool | None = None

    def __init__(self, extractor: VideoExtractor, plan: VideoPlan) -> None:
        self.extractor, self.plan = extractor, plan
        self.parts: dict[str, list[np.ndarray]] = {
            "context": [],
            "pooled": [],
            "roi": [],
            "roi_t": [],
        }
        self.done = 0  # keyframes done so far
        threaded = self.POOL_THREAD
        if threaded is None:
            threaded = extractor.device.type != "cpu"
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-pool")
            if threaded
            else None
        )
        self._pending: deque[Future] = deque()

    def add(self, x: torch.Tensor) -> None:
        """The backbone on the next batch; RoIAlign and the casts follow on the pool thread."""
        ex, plan = self.extractor, self.plan
        k0, k1 = self.done, self.done + len(x)
        per_kf = [plan.boxes[plan.offsets[k] : plan.offsets[k + 1]] for k in range(k0, k1)]
        maps = ex._backbone(x)
        if self._pool is None:
            done: Future = Future()
            done.set_result(self._cast(maps, tuple(x.shape[3:]), per_kf))
            self._pending.append(done)
        else:
            self._pending.append(self._pool.submit(self._cast, maps, tuple(x.shape[3:]), per_kf))
        self.done = k1
        while len(self._pending) > self.IN_FLIGHT:
            self._collect(self._pending.popleft())

    def _cast(
        self, maps, size: tuple[int, ...], per_kf: list[np.ndarray]
    ) -> list[np.ndarray | None]:
        dtype = self.extractor.schema.np_dtype
        return [
            None if t is None else t.numpy().astype(dtype)
            for t in self.extractor._pool(maps, size, per_kf)
        ]

    def _collect(self, future: Future) -> None:
        context, roi, pooled, roi_t = future.result()  # re-raises the pool thread's error
        self.parts["context"].append(context)
        self.parts["pooled"].append(pooled)
        if self.extractor.cfg.store_roi:
            self.parts["roi"].append(roi)
        if roi_t is not None:
            self.parts["roi_t"].append(roi_t)

    def close(self) -> None:
        """Drop what is in flight and stop the pool thread (after a failure)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def features(self) -> VideoFeatures:
        """The video's arrays, once every batch was added."""
        try:
            while self._pending:
                self._collect(self._pending.popleft())
        finally:
            self.close()
        plan, schema = self.plan, self.extractor.schema
        dtype = schema.np_dtype
        shapes = expected_shapes(schema, len(plan.timestamps), len(plan.boxes))

        def joined(name: str) -> np.ndarray | None:
            if name not in shapes:
                return None
            if not self.parts[name]:
                return np.zeros(shapes[name], dtype)
            return np.concatenate(self.parts[name])

        context_maps, pooled_rows = joined("context"), joined("pooled")
        assert context_maps is not None and pooled_rows is not None  # every schema has both
        return VideoFeatures(
            timestamps=plan.timestamps.astype(np.int32),
            context=context_maps,
            actor_offset=plan.offsets - plan.offsets[0],
            boxes=plan.boxes.astype(np.float32),
            scores=plan.scores.astype(np.float32),
            track=plan.track.astype(np.int32),
            pooled=pooled_rows,
            roi=joined("roi"),
            roi_t=joined("roi_t"),
        )
