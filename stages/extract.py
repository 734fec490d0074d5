"""extract: backbone features of every actor of every keyframe, into Zarr feature stores.

For each split, each video is decoded once (the decode-once clip iterator; decoding and
batch preparation run in a background thread so they overlap the backbone), the backbone
runs on the clip around every keyframe (batched), each actor box is RoIAligned (7×7) and
max-pooled, and the video is written to ``features/<split>.zarr`` as one group (DESIGN §3)
by a writer thread while the next video is computed. The stage is resumable per video: a
killed run restarted with the same config finds its staging store, skips complete videos
and rewrites unfinished ones (taking over claims of killed processes on this host at
once, of other hosts after the claim TTL); inference is deterministic on CPU for a fixed
torch thread count, so the result is bitwise equal to an uninterrupted run.

Which keyframes a video has comes from the track stage's actors: a keyframe with no
person box has nothing to pool and is not stored (readers see a gap in ``timestamps``).

Several processes may run the same stage (same key, same staging store) at once: each
claims videos one at a time, waits for videos another live process holds (taking over
the claim of a process that died), and exactly one process finalizes the stores and lets
the framework publish them; the others wait for that publication and then return it.

Before starting, the projected store size is logged and a target without enough free
disk space is refused (``allow_low_disk`` overrides).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict

from featurestore import (
    Claim,
    FeatureStore,
    StoreError,
    StoreSchema,
    VideoFeatures,
    estimate_store_bytes,
    format_bytes,
)
from featurestore.backend import LockFiles
from featurestore.features import expected_shapes
from models.backbones import build_backbone
from models.roi import actor_rois
from stages.data import Dataset, DatasetConfig
from stages.framework import COMPLETE_MARKER, Stage, StageContext, StageError, output_dir
from stages.track import read_actors
from stages.video import ClipSpec, VideoError, VideoReader, iter_keyframe_clips

CODE_VERSION = "1"
FEATURES_DIR = "features"
WEIGHTS_FILE = "backbone.pt"  # what the finetune stage publishes
# Waiting on other processes of the same stage: how often to look, and for how long at
# most (a live writer refreshes its claim; a dead one is taken over, see _break_if_dead).
POLL_S = 0.5
WAIT_FOR_OTHERS_S = 6 * 3600.0

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
        },
        context_shape=(channels, *grid),
        pooled_dim=channels,
        roi_shape=(channels, 7, 7) if cfg.store_roi else None,
        roi_t_shape=(channels, t_prime, 7, 7) if cfg.store_roi_t and t_prime else None,
        # As JSON gives it back (tuples -> lists): a resumed run compares this to the
        # stored schema, and (0.45, ...) != [0.45, ...] would refuse its own staging store.
        extra=json.loads(
            json.dumps({"backbone_kwargs": cfg.backbone_kwargs, "mean": cfg.mean, "std": cfg.std})
        ),
    )


_DONE = object()


def _in_background(items: Iterator[Any], *, depth: int, name: str) -> Iterator[Any]:
    """Iterate ``items`` in a daemon thread, up to ``depth`` ahead; errors re-raised here.

    Leaving the loop early (``break``, an exception) stops the thread after its current item.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():  # poll: a consumer that went away must not block us
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, who re-raises it
            put(error)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


class VideoExtractor:
    """Runs the backbone over the keyframe clips of one video and gathers its features."""

    def __init__(self, model: torch.nn.Module, cfg: ExtractConfig, schema: StoreSchema) -> None:
        self.model, self.cfg, self.schema = model, cfg, schema
        self.device = next(model.parameters()).device
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1)

    def _prepare(self, clips: list[np.ndarray]) -> torch.Tensor:
        """uint8 [T, H, W, 3] clips -> the normalized float batch [B, 3, T, H, W] (CPU)."""
        x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float().div_(255.0)
        return (x - self.mean) / self.std

    def _forward(self, x: torch.Tensor, boxes: list[np.ndarray]):
        x = x.to(self.device)  # (B, 3, T, H, W)
        counts = [len(b) for b in boxes]
        box_t = torch.from_numpy(np.concatenate(boxes).astype(np.float32)).to(self.device)
        index = torch.repeat_interleave(torch.arange(len(boxes)), torch.tensor(counts))
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
        """Features of every keyframe that has at least one actor.

        Args:
            actors: this video's actor rows: ``timestamp`` int [A], ``boxes`` float32 [A, 4]
                normalized x1, y1, x2, y2, ``score`` float32 [A], ``track`` int32 [A].
            offset: seconds of the video's first frame in the dataset's timestamps.

        Returns:
            The video's arrays in the store's dtypes; actors keep their input order within
            a keyframe; keyframes without actors are absent.
        """
        order = np.argsort(actors["timestamp"], kind="stable")
        times = actors["timestamp"][order]
        timestamps, first = np.unique(times, return_index=True)
        offsets = np.append(first, len(times)).astype(np.int64)  # CSR over sorted actors
        boxes = actors["boxes"][order]
        spec = ClipSpec(
            num_frames=self.cfg.num_frames, stride=self.cfg.frame_stride,
            short_side=self.cfg.short_side, target_fps=self.cfg.target_fps,
        )  # fmt: skip
        dtype = self.schema.np_dtype
        parts: dict[str, list[np.ndarray]] = {"context": [], "pooled": [], "roi": [], "roi_t": []}

        def batches() -> Iterator[torch.Tensor]:
            # Decoding and batch preparation run in a background thread (decord and torch
            # release the GIL), so they overlap the backbone on the previous batch.
            clips: list[np.ndarray] = []
            for clip in iter_keyframe_clips(reader, timestamps, offset=offset, spec=spec):
                clips.append(clip.frames)
                if len(clips) == self.cfg.batch_size:
                    yield self._prepare(clips)
                    clips = []
            if clips:
                yield self._prepare(clips)

        k0 = 0  # keyframes done so far
        for x in _in_background(batches(), depth=2, name=f"decode {video_id}"):
            k1 = k0 + len(x)
            per_kf = [boxes[offsets[k] : offsets[k + 1]] for k in range(k0, k1)]
            context, roi, pooled, roi_t = self._forward(x, per_kf)
            parts["context"].append(context.numpy().astype(dtype))
            parts["pooled"].append(pooled.numpy().astype(dtype))
            if self.cfg.store_roi:
                parts["roi"].append(roi.numpy().astype(dtype))
            if roi_t is not None:
                parts["roi_t"].append(roi_t.numpy().astype(dtype))
            k0 = k1
        shapes = expected_shapes(self.schema, len(timestamps), len(times))

        def joined(name: str) -> np.ndarray | None:
            if name not in shapes:
                return None
            if not parts[name]:
                return np.zeros(shapes[name], dtype)
            return np.concatenate(parts[name])

        return VideoFeatures(
            timestamps=timestamps.astype(np.int32),
            context=joined("context"),
            actor_offset=offsets - offsets[0],
            boxes=boxes.astype(np.float32),
            scores=actors["score"][order].astype(np.float32),
            track=actors["track"][order].astype(np.int32),
            pooled=joined("pooled"),
            roi=joined("roi"),
            roi_t=joined("roi_t"),
        )


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


def _lock_holder_is_dead(info: dict | None) -> bool:
    """True when a lock was written by a process of this host that no longer exists.

    Claims expire only after their TTL (minutes); a restarted extraction on the same host
    need not wait that long for the claims of the run that was killed.
    """
    if not info or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _break_lock_if_dead(locks: LockFiles, name: str) -> dict | None:
    """Delete lock ``name`` if its holder died on this host; returns the lock's content.

    Breaking goes through ``<name>.break`` (as the store's claims do) so that two
    processes that see the same dead lock do not delete a fresh claim of a third.
    """
    data = locks.read(name)
    try:
        info = None if data is None else json.loads(data)
    except ValueError:
        return None
    if not isinstance(info, dict) or not _lock_holder_is_dead(info):
        return info if isinstance(info, dict) else None
    breaker = f"{name}.break"
    if locks.create_exclusive(breaker, b"{}"):
        try:
            current = locks.read(name)
            if current == data:
                log.info("extract: taking over %s from dead process %s", name, info.get("pid"))
                locks.delete(name)
        finally:
            locks.delete(breaker)
    return info


def _open_store(path: Path, schema: StoreSchema, key: str, split: str, videos: list[str]):
    """Create the split's staging store, or reopen it (resume / a concurrent process).

    Raises StageError naming the store when it holds another schema or is not a store.
    """
    problem: Exception | None = None
    for attempt in range(4):
        try:
            return FeatureStore.create(
                path, schema, provenance={"stage": "extract", "key": key, "split": split},
                exist_ok=True, expected_videos=videos,
            )  # fmt: skip
        except (StoreError, KeyError) as exc:
            # A concurrent process creating the store leaves it half-made for milliseconds
            # (a directory without zarr.json, or a root without its videos group).
            problem = exc
            time.sleep(0.05 * 2**attempt)
    raise StageError(
        f"extract {split}: cannot use the staging store {path}: {problem}. It was left by an "
        "earlier run with the same key; delete it to start over"
    ) from problem


class _SplitRun:
    """Extraction of one split into its staging store, shared with concurrent processes.

    A video's features are written by a background thread while the next video is
    computed (at most one write in flight: two videos in memory); its claim is released
    only once it is written.
    """

    def __init__(self, ctx: StageContext, split: str, dataset: Dataset, extractor, store,
                 by_video: dict[str, dict[str, np.ndarray]], owner: str,
                 published: Callable[[], bool]) -> None:  # fmt: skip
        self.ctx, self.split, self.dataset = ctx, split, dataset
        self.extractor, self.store, self.by_video, self.owner = extractor, store, by_video, owner
        self.locks = LockFiles(store.url)
        self.published = published
        self.done = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-write")
        self._writing: Future | None = None

    def _write(self, video_id: str, claim: Claim, features: VideoFeatures, prov: dict) -> None:
        try:
            if claim.lost:
                raise StageError(
                    f"extract {self.split}: lost the claim on video {video_id!r} in "
                    f"{self.store.url} (its heartbeat stalled longer than the claim TTL); "
                    "rerun to resume"
                )
            self.store.write_video(video_id, features, provenance=prov)
        finally:
            claim.release()
        self.done += 1
        finished = sum(self.store.is_complete_video(v) for v in self.by_video)
        log.info("extract %s: %s (%d/%d)", self.split, video_id, finished, len(self.by_video))

    def _wait_for_write(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()  # re-raises a failed write here

    def extract_video(self, video_id: str, claim: Claim) -> None:
        """Compute ``video_id`` and hand it to the writer, which releases ``claim``."""
        ex: ExtractConfig = self.ctx.config.extract  # type: ignore[attr-defined]
        path: Path | str = video_id
        try:
            path = self.dataset.video_path(video_id)
            tv = time.perf_counter()
            with VideoReader(path, short_side=ex.short_side) as reader:
                features = self.extractor.run(
                    reader, video_id, self.by_video[video_id], self.dataset.timestamp_offset
                )
                decoded = reader.decode_counter
        except (VideoError, ValueError) as exc:
            claim.release()
            raise StageError(f"extract {self.split}: video {video_id!r} ({path}): {exc}") from exc
        except BaseException:
            claim.release()
            raise
        prov = {"seconds": round(time.perf_counter() - tv, 3), "decoded_frames": decoded}
        self._wait_for_write()
        self._writing = self._writer.submit(self._write, video_id, claim, features, prov)

    def run(self) -> int:
        """Extract every video not yet complete; returns how many were already complete."""
        try:
            return self._run()
        finally:
            try:
                self._wait_for_write()
            finally:
                self._writer.shutdown()

    def _run(self) -> int:
        pending = [v for v in self.by_video if not self.store.is_complete_video(v)]
        resumed = len(self.by_video) - len(pending)
        deadline = time.monotonic() + WAIT_FOR_OTHERS_S
        while pending:
            held: dict[str, dict | None] = {}
            for video_id in pending:
                # Another process may have finished everything and published the staging
                # dir: its path is gone, and claiming there would recreate it.
                if self.published():
                    return resumed
                claim = self.store.try_claim(video_id, owner=self.owner)
                if claim is None:
                    if not self.store.is_complete_video(video_id):
                        held[video_id] = _break_lock_if_dead(self.locks, f"{video_id}.json")
                    continue
                # Checked again after claiming: the claim saw the video incomplete, so if
                # nothing is published now, nothing can be until we write it.
                if self.published():
                    claim.release()
                    return resumed
                self.extract_video(video_id, claim)
            pending = list(held)
            if not pending:
                break
            self._wait_for_write()  # ours may be what the others wait for to finish
            if time.monotonic() > deadline:
                raise StageError(
                    f"extract {self.split}: gave up after {WAIT_FOR_OTHERS_S:.0f} s waiting for "
                    f"videos claimed by other processes in {self.store.url}: "
                    + ", ".join(f"{v} (by {(i or {}).get('owner')})" for v, i in held.items())
                )
            log.info("extract %s: waiting for %d videos other processes hold: %s",
                     self.split, len(pending), ", ".join(pending))  # fmt: skip
            time.sleep(POLL_S)
        return resumed


def _publish_lock(ctx: StageContext) -> tuple[LockFiles, str]:
    # Beside (not inside) the staging dir: it must outlive the rename that publishes it.
    return LockFiles(ctx.staging.parent, subdir="."), f"{ctx.key}.publish.json"


def _published(ctx: StageContext, staging_inode: int) -> bool:
    final = output_dir(ctx.work_root, ctx.stage, ctx.key)
    try:
        return (final / COMPLETE_MARKER).is_file() and final.stat().st_ino == staging_inode
    except FileNotFoundError:
        return False


def _become_publisher(ctx: StageContext, owner: str, inode: int) -> bool:
    """True: this process finalizes and publishes. False: another one has published.

    The framework publishes by renaming the staging dir, after writing provenance and a
    manifest into it: two processes doing that at once on the same staging dir would
    corrupt it, so one wins an exclusive lock file; the others wait until the staging dir
    (recognised by its inode) is published, or take over if the winner died.
    """
    locks, name = _publish_lock(ctx)
    payload = json.dumps(
        {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "inode": inode}
    ).encode()
    deadline = time.monotonic() + WAIT_FOR_OTHERS_S
    while True:
        if _published(ctx, inode):
            info = _break_lock_if_dead(locks, name)
            if info is not None and info.get("inode") == inode:
                locks.delete(name)  # that publication is done: tidy its lock away
            return False
        if locks.create_exclusive(name, payload):
            return True
        info = _break_lock_if_dead(locks, name)
        if info is not None and info.get("inode") != inode:
            # Left by the publication of an earlier staging dir of this key (forced rerun).
            locks.delete(name)
        if time.monotonic() > deadline:
            raise StageError(
                f"extract: gave up waiting for {(info or {}).get('owner')} to publish "
                f"{ctx.staging} (lock {ctx.staging.parent / name})"
            )
        time.sleep(POLL_S)


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
    stores: list[FeatureStore] = []
    probed: dict[tuple[int, int], tuple[tuple[int, int, int], int | None]] = {}
    # The staging dir is recognised by its inode once the framework renames it into place.
    inode = ctx.staging.stat().st_ino
    published = functools.partial(_published, ctx, inode)
    for split in ex.splits:
        if published():
            break
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
        schema = build_schema(ex, fmap_shape, t_prime, weights_sha, detector_key)
        n_kf = sum(len(np.unique(a["timestamp"])) for a in by_video.values())
        n_act = sum(len(a["timestamp"]) for a in by_video.values())
        path = store_path(ctx.staging, split)
        _check_disk(path.parent, estimate_store_bytes(schema, n_kf, n_act), ex.allow_low_disk)
        store = _open_store(path, schema, ctx.key, split, list(by_video))
        t0 = time.perf_counter()
        job = _SplitRun(ctx, split, dataset, VideoExtractor(model, ex, schema), store, by_video,
                        owner, published)  # fmt: skip
        resumed = job.run() if not store.complete else len(by_video)
        stores.append(store)
        summary[split] = {
            "videos": len(by_video), "extracted": job.done, "resumed": resumed,
            "keyframes": n_kf, "actors": n_act,
            "seconds": round(time.perf_counter() - t0, 2),
            "context_shape": list(schema.context_shape),
        }  # fmt: skip
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


STAGE = Stage(
    name="extract", code_version=CODE_VERSION, config_type=ExtractStageConfig,
    compute=compute, resumable=True,
)  # fmt: skip
