"""finetune: train the video backbone + a linear actor head end-to-end on GT keyframe boxes.

The papers fine-tune a Kinetics-pretrained SlowFast on AVA before extracting features;
the demo fine-tunes a small random-init one so that its extracted features carry signal.
Per step: clips of ``batch_keyframes`` keyframes -> backbone -> RoIAlign 7×7 + max-pool of
every GT person box (``actor_rois``) -> dropout -> linear -> ``ava_loss``; the gradient
flows through the backbone. Clip sampling, size, normalisation and the backbone are the
*extract* section's, so the weights fit the extraction that follows.

Clip supply (``clip_cache``):
- ``memory``: every training clip is decoded once into a uint8 cache in RAM and keyframes
  are shuffled globally each epoch (the demo world's 287 train clips: 265 MB).
- ``stream``: AVA's clips (~200k × 32 frames) do not fit, so each epoch decodes video by
  video with the prefetching decode-once iterator (decoding overlaps the step), in a video
  order drawn per epoch; a batch holds consecutive keyframes of one or two videos.
Training clips are flipped left-right at random (``flip``); on the demo world this halved
the train/val accuracy gap.
- ``auto`` (default): ``memory`` when the projected cache is below ``cache_max_bytes``.

Resumable per epoch: ``<staging>/checkpoints/epoch_<n>.pt`` holds backbone, head,
optimizer, scheduler, torch RNG and history; a restarted run continues from the newest one
and (on CPU) ends with bitwise the same weights as an uninterrupted run. Outputs:
``backbone.pt`` (the backbone's ``state_dict`` in bankflow naming, what extract loads),
``head.pt`` (``classifier.weight/bias``, loadable into ``models.heads.linear.LinearHead``)
and ``training.json`` (per-epoch loss, training top-1, lr, seconds).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.backbones import build_backbone
from models.losses import ava_loss, loss_normalizers
from models.roi import actor_rois
from stages.data import BoxTable, Dataset, LabelMap
from stages.extract.config import FINETUNE as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.extract.config import (
    FinetuneConfig,
    FinetuneStageConfig,
)
from stages.extract.stage import WEIGHTS_FILE, BackboneConfig
from stages.framework import StageContext, StageError, write_json_atomic
from stages.framework.distributed import all_reduce_sum, is_main, run_data_parallel, shard, world
from stages.framework.precision import autocast, cpu_bf16_backward_guard, grad_scaler
from stages.train.data import SplitIndex
from stages.train.loop import (
    OptimConfig,
    epoch_order,
    latest_checkpoint,
    lr_factor,
    make_optimizer,
    optimizer_step,
    save_checkpoint,
)
from stages.video import ClipSpec, VideoReader, prefetch_keyframe_clips

HEAD_FILE = "head.pt"
HISTORY_FILE = "training.json"  # written after the weights: its presence means done
CHECKPOINT_DIR = "checkpoints"

log = logging.getLogger("bankflow.finetune")


class ActorClassifier(nn.Module):
    """Backbone -> actor RoIs -> dropout -> linear: clips and boxes in, logits out.

    ``forward(clips [B, 3, T, H, W] normalized, boxes [N, 4] normalized x1 y1 x2 y2,
    batch_index Long[N]) -> logits [N, K]``.
    """

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        # Same parameter names as LinearHead, so head.pt loads into it.
        self.head = nn.Sequential(
            OrderedDict(dropout=nn.Dropout(dropout), classifier=nn.Linear(channels, num_classes))
        )

    def forward(self, clips: Tensor, boxes: Tensor, batch_index: Tensor) -> Tensor:
        fmap = self.backbone(clips)  # (B, C, h, w)
        height, width = clips.shape[3:]  # clips (B, C, T, H, W)
        _, pooled = actor_rois(fmap, boxes, batch_index, input_size=(height, width))
        return self.head(pooled)  # (N, K)


@dataclass
class Sample:
    """One keyframe: its clip uint8[T, H, W, 3], GT boxes f32[n, 4], labels f32[n, K]."""

    clip: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def gt_actor_index(gt: BoxTable, labelmap: LabelMap) -> SplitIndex:
    """Unique GT person boxes per keyframe with multi-hot labels (dense ``labelmap.ids``
    order), keyframes sorted by (video, timestamp). Rows sharing a box are one actor."""
    actors: dict[tuple[str, int, tuple[float, ...]], int] = {}
    labels: list[list[int]] = []
    for i in range(len(gt)):
        box = tuple(round(float(c), 4) for c in gt.boxes[i])
        key = (str(gt.video[i]), int(gt.timestamp[i]), box)
        a = actors.setdefault(key, len(actors))
        if a == len(labels):
            labels.append([])
        if int(gt.action[i]) in labelmap:
            labels[a].append(labelmap.index_of(int(gt.action[i])))
    keys = sorted(actors, key=lambda k: (k[0], k[1], actors[k]))
    multi_hot = np.zeros((len(keys), len(labelmap)), np.float32)
    for row, key in enumerate(keys):
        multi_hot[row, labels[actors[key]]] = 1.0
    kf = [(v, t) for v, t, _ in keys]
    starts = [i for i in range(len(kf)) if i == 0 or kf[i] != kf[i - 1]]
    return SplitIndex(
        video=np.asarray([kf[i][0] for i in starts], dtype=object),
        timestamp=np.asarray([kf[i][1] for i in starts], dtype=np.int64),
        actor_offset=np.asarray([*starts, len(kf)], dtype=np.int64),
        boxes=np.asarray([k[2] for k in keys], np.float32).reshape(-1, 4),
        scores=np.ones(len(keys), np.float32),
        labels=multi_hot,
    )


def choose_keyframes(index: SplitIndex, cap: int | None, seed: int) -> np.ndarray:
    """Keyframe rows to train on: all, or a seeded subset of ``cap`` in (video, time) order."""
    if cap is None or cap >= len(index):
        return np.arange(len(index))
    return np.sort(np.random.default_rng(seed).choice(len(index), cap, replace=False))


class ClipSupply:
    """Batches of :class:`Sample` for one epoch, from a RAM cache or streamed per video."""

    def __init__(
        self,
        dataset: Dataset,
        index: SplitIndex,
        rows: np.ndarray,
        ex: BackboneConfig,
        cfg: FinetuneConfig,
    ) -> None:
        self.dataset, self.index, self.cfg, self.ex = dataset, index, cfg, ex
        self.spec = ClipSpec(
            num_frames=ex.num_frames,
            stride=ex.frame_stride,
            short_side=ex.short_side,
            target_fps=ex.target_fps,
        )
        grouped: dict[str, list[int]] = {}
        for r in rows.tolist():
            grouped.setdefault(str(index.video[r]), []).append(r)
        self.by_video = {v: np.asarray(r, dtype=np.int64) for v, r in sorted(grouped.items())}
        self.rows = np.concatenate(list(self.by_video.values())) if rows.size else rows
        self.cache: dict[int, np.ndarray] | None = None
        projected = self.projected_bytes()
        self.mode = cfg.clip_cache
        if self.mode == "auto":
            self.mode = "memory" if projected <= cfg.cache_max_bytes else "stream"
        log.info(
            "finetune: %d keyframes, clips %.1f MB -> %s",
            len(self.rows),
            projected / 1e6,
            self.mode,
        )

    def projected_bytes(self) -> int:
        total = 0
        for video, rows in self.by_video.items():
            with VideoReader(self.dataset.video_path(video), short_side=self.ex.short_side) as r:
                total += len(rows) * self.spec.num_frames * r.height * r.width * 3
        return total

    def _sample(self, row: int, clip: np.ndarray) -> Sample:
        sel = slice(int(self.index.actor_offset[row]), int(self.index.actor_offset[row + 1]))
        return Sample(clip, self.index.boxes[sel], self.index.labels[sel])

    def _decode(self, video: str) -> Iterator[tuple[int, np.ndarray]]:
        rows = self.by_video[video]
        stamps = self.index.timestamp[rows]
        with VideoReader(self.dataset.video_path(video), short_side=self.ex.short_side) as reader:
            clips = prefetch_keyframe_clips(
                reader,
                stamps,
                offset=self.dataset.offset_of(video),
                spec=self.spec,
                depth=2,
                fps=self.dataset.frames_per_timestamp,
            )
            for row, clip in zip(rows.tolist(), clips, strict=True):
                yield row, clip.frames

    def epoch(self, epoch: int) -> Iterator[list[Sample]]:
        """The batches of ``epoch``; their order is a function of (seed, epoch) only."""
        size = self.cfg.batch_keyframes
        if self.mode == "memory":
            if self.cache is None:
                self.cache = {r: c for v in self.by_video for r, c in self._decode(v)}
            order = self.rows[epoch_order(len(self.rows), self.cfg.seed, epoch)]
            for start in range(0, len(order), size):
                yield [
                    self._sample(int(r), self.cache[int(r)]) for r in order[start : start + size]
                ]
            return
        videos = list(self.by_video)
        pending: list[Sample] = []
        for v in epoch_order(len(videos), self.cfg.seed, epoch):
            for row, clip in self._decode(videos[v]):
                pending.append(self._sample(row, clip))
                if len(pending) == size:
                    yield pending
                    pending = []
        if pending:
            yield pending

    def __len__(self) -> int:  # batches per epoch
        return math.ceil(len(self.rows) / self.cfg.batch_keyframes)


def flip_sample(sample: Sample) -> Sample:
    """The keyframe mirrored left-right: frames along W, boxes x -> 1 - x."""
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = 1.0 - sample.boxes[:, [2, 0]]
    return Sample(np.ascontiguousarray(sample.clip[:, :, ::-1]), boxes, sample.labels)


def batch_logits(
    model: ActorClassifier, batch: list[Sample], mean: Tensor, std: Tensor, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(logits [N, K], targets [N, K]) of a batch; clips of different sizes (videos of other
    resolutions) go through the backbone in separate groups."""
    groups: dict[tuple[int, ...], list[Sample]] = {}
    for s in batch:
        groups.setdefault(s.clip.shape, []).append(s)
    logits, targets = [], []
    for samples in groups.values():
        x = torch.from_numpy(np.stack([s.clip for s in samples])).permute(0, 4, 1, 2, 3)
        x = ((x.float().div_(255.0) - mean) / std).to(device)  # (B, 3, T, H, W)
        counts = torch.tensor([len(s.boxes) for s in samples])
        index = torch.repeat_interleave(torch.arange(len(samples)), counts).to(device)
        boxes = torch.from_numpy(np.concatenate([s.boxes for s in samples])).to(device)
        logits.append(model(x, boxes, index))
        targets.append(torch.from_numpy(np.concatenate([s.labels for s in samples])))
    return torch.cat(logits), torch.cat(targets).to(device)


def top1_hits(logits: Tensor, targets: Tensor, exclusive: list[int]) -> tuple[int, int]:
    """(hits, actors): the top class (within the pose group when there is one) is a label.

    Only actors with a label in that group count."""
    cols = torch.as_tensor(exclusive, dtype=torch.long) if exclusive else None
    if cols is not None:
        logits, targets = logits[:, cols], targets[:, cols]
    has = targets.sum(1) > 0
    top = logits[has].argmax(1)
    return int(targets[has].gather(1, top[:, None]).sum()), int(has.sum())


def _optim_config(cfg: FinetuneConfig) -> OptimConfig:
    return OptimConfig(
        epochs=cfg.epochs,
        batch_keyframes=cfg.batch_keyframes,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs,
        grad_clip=cfg.grad_clip,
        loss=cfg.loss,
        seed=cfg.seed,
    )


def train_epochs(
    model: ActorClassifier,
    supply: ClipSupply,
    cfg: FinetuneConfig,
    ex: BackboneConfig,
    exclusive: list[int],
    ckpt_dir: Path,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train for ``cfg.epochs``, resuming from the newest checkpoint; the per-epoch history."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    size = world()[1]
    optim = _optim_config(cfg)
    optimizer = make_optimizer(model, optim)
    scaler = grad_scaler(cfg.precision)
    if size > 1 and not cfg.freeze_bn:
        log.warning(
            "finetune: BatchNorm statistics are each rank's own slice of the batch "
            "(freeze_bn: true trains as one process does)"
        )
    steps = len(supply)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(optim, s, steps))
    history: list[dict[str, Any]] = []
    start = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        state = torch.load(last, weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])  # dropout masks continue as uninterrupted
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        history, start = state["history"], state["epoch"] + 1
        log.info("finetune: resuming from %s (epoch %d)", last, start)
    mean = torch.tensor(ex.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(ex.std).view(1, 3, 1, 1, 1)
    with cpu_bf16_backward_guard(cfg.precision, device):
        return _epochs(
            model,
            supply,
            cfg,
            exclusive,
            ckpt_dir,
            device,
            on_epoch,
            start,
            history,
            optimizer,
            scheduler,
            scaler,
            mean,
            std,
        )


def _epochs(
    model: ActorClassifier,
    supply: ClipSupply,
    cfg: FinetuneConfig,
    exclusive: list[int],
    ckpt_dir: Path,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    start: int,
    history: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    mean: Tensor,
    std: Tensor,
) -> list[dict[str, Any]]:
    """The epochs of :func:`train_epochs` from ``start`` on (the state already resumed)."""
    rank, size = world()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        losses: list[float] = []
        hits = counted = 0
        # Flips drawn from (seed, epoch): a resumed epoch flips the same keyframes.
        flips = np.random.default_rng([cfg.seed, epoch, 1])
        for batch in supply.epoch(epoch):
            if cfg.flip:
                batch = [flip_sample(s) if flips.random() < 0.5 else s for s in batch]
            norms = None
            if size > 1:  # this rank's slice; its loss is its share of the batch's
                every = torch.from_numpy(np.concatenate([s.labels for s in batch]))
                norms = loss_normalizers(every, exclusive, cfg.loss)
                batch = [batch[i] for i in shard(np.arange(len(batch)), rank, size)[0]]
            loss, figures = None, torch.zeros(3, dtype=torch.float64)
            if batch:
                with autocast(cfg.precision, device):
                    logits, targets = batch_logits(model, batch, mean, std, device)
                logits = logits.float()
                loss = ava_loss(
                    logits, targets, exclusive=exclusive, mode=cfg.loss, normalizers=norms
                )
                h, n = top1_hits(logits.detach().cpu(), targets.cpu(), exclusive)
                figures = torch.tensor([float(loss.detach()), h, n], dtype=torch.float64)
            figures = all_reduce_sum(figures.to(device)).cpu()
            optimizer_step(model, loss, optimizer, scheduler, cfg.grad_clip, scaler)
            losses.append(float(figures[0]))
            hits, counted = hits + int(figures[1]), counted + int(figures[2])
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "first_step_loss": losses[0],
            "last_step_loss": losses[-1],
            # Accuracy of the training logits as they were computed (dropout on, weights
            # moving): a cheap progress figure, not an evaluation.
            "train_top1": hits / counted if counted else None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        history.append(record)
        log.info("finetune epoch %d: %s", epoch, record)
        if rank != 0:  # rank 0 writes; every rank resumes from what it wrote
            continue
        save_checkpoint(
            ckpt_dir / f"epoch_{epoch}.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                "history": history,
                "epoch": epoch,
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            },
        )
        for old in ckpt_dir.glob("epoch_*.pt"):  # only the newest is needed to resume
            if int(old.stem.split("_")[1]) < epoch:
                old.unlink()
        if on_epoch is not None:
            on_epoch(record)
    return history


def build_model(
    ex: BackboneConfig, cfg: FinetuneConfig, num_classes: int, clip_hw: tuple[int, int]
) -> ActorClassifier:
    """The backbone (the extract section's initial weights, else a seeded random init) and a
    fresh seeded head."""
    torch.manual_seed(cfg.seed)
    kwargs = dict(ex.backbone_kwargs)
    if not ex.backbone.startswith(("slowfast", "slowonly")):
        raise StageError(
            f"finetune: only SlowFast / SlowOnly backbones are supported, got {ex.backbone!r}"
        )
    if ex.weights is not None and not Path(ex.weights).is_file():
        raise StageError(f"finetune: initial backbone weights {ex.weights} not found")
    try:
        backbone = build_backbone(
            ex.backbone,
            weights=ex.weights,
            source_config=ex.source_config,
            frozen_bn=cfg.freeze_bn,
            **kwargs,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise StageError(f"finetune: backbone {ex.backbone}: {str(exc).splitlines()[0]}") from exc
    with torch.no_grad():
        probe = torch.zeros(1, 3, ex.num_frames, *clip_hw)
        channels = int(backbone.eval()(probe).shape[1])
    return ActorClassifier(backbone, channels, num_classes, cfg.dropout)


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def finetune(
    ctx: StageContext[FinetuneStageConfig], on_epoch: Callable[[dict[str, Any]], None] | None = None
):
    """The stage body; ``on_epoch`` is called after each epoch's checkpoint is saved."""
    cfg = ctx.config
    ft, ex = cfg.finetune, cfg.extract
    done = ctx.staging / HISTORY_FILE
    if done.is_file():  # a previous attempt finished training but was not published
        return json.loads(done.read_text())
    dataset = Dataset.open(cfg.dataset)
    if ft.split not in dataset.splits:
        raise StageError(f"finetune: split {ft.split!r} is not in the dataset ({dataset.splits})")
    labelmap = dataset.labelmap
    index = gt_actor_index(dataset.gt(ft.split), labelmap)
    if len(index) == 0:
        raise StageError(f"finetune: split {ft.split!r} of {dataset.root} has no GT boxes")
    rows = choose_keyframes(index, ft.max_keyframes, ft.seed)
    exclusive = [labelmap.index_of(int(i)) for i in dataset.exclusive_ids]
    supply = ClipSupply(dataset, index, rows, ex, ft)
    first = str(index.video[rows[0]])
    with VideoReader(dataset.video_path(first), short_side=ex.short_side) as reader:
        clip_hw = (reader.height, reader.width)
    device = device_of(ft.device)
    model = build_model(ex, ft, len(labelmap), clip_hw).to(device)
    ckpt_dir = ctx.staging / CHECKPOINT_DIR
    history = train_epochs(model, supply, ft, ex, exclusive, ckpt_dir, device, on_epoch)
    if not is_main():
        return {}
    for part, name in ((model.backbone, WEIGHTS_FILE), (model.head, HEAD_FILE)):
        torch.save({k: v.cpu() for k, v in part.state_dict().items()}, ctx.staging / name)
    n_actors = int(sum(index.actor_offset[r + 1] - index.actor_offset[r] for r in rows))
    summary = {
        "epochs": history,
        "keyframes": len(rows),
        "actors": n_actors,
        "classes": len(labelmap),
        "clip_cache": supply.mode,
        "loss_first_epoch": history[0]["loss"],
        "loss_last_epoch": history[-1]["loss"],
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
    }
    write_json_atomic(done, summary)
    # The last checkpoint repeats the weights plus optimizer state: not part of the output.
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return summary


def compute(ctx: StageContext[FinetuneStageConfig]) -> dict[str, Any]:
    threads = ctx.config.finetune.num_threads
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return run_data_parallel(finetune, ctx, devices=ctx.config.finetune.devices)
    finally:
        torch.set_num_threads(before)
