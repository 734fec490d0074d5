"""Keyframe images for the person detector, and fine-tuning it on a split's GT boxes.

The papers fine-tune their Faster R-CNN on AVA's keyframes and report that detector AP
moves the final mAP by points; here the detector is fine-tuned on the train split's GT
person boxes (the unique boxes of each keyframe: GT rows repeat a box once per action).

Fine-tuning is resumable per epoch: ``state.pt`` in the given directory holds the model,
the optimizer, the epoch reached and torch's RNG state (the RPN and box-head samplers draw
from it), so a killed run continues where it stopped and ends with the same weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN

from models.detector import detector_losses
from stages.data import BoxTable, Dataset
from stages.data.dataset import unique_keyframes
from stages.detect.config import DetectorFinetuneConfig
from stages.video import VideoReader, center_frame

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class KeyframeImages:
    """The frame shown at each keyframe of one video.

    Attributes:
        video: the video id.
        timestamp: int64 [K] keyframe seconds (CSV time), increasing.
        frames: uint8 [K, H, W, 3] RGB at the video's native size.
    """

    video: str
    timestamp: np.ndarray
    frames: np.ndarray


def decode_keyframes(
    dataset: Dataset, video: np.ndarray, timestamp: np.ndarray
) -> Iterator[KeyframeImages]:
    """Decode each keyframe's centre frame, one video at a time, each video opened once.

    Args:
        video: ``str`` [K] video ids; timestamp: int64 [K] CSV seconds (any order).

    Raises:
        ValueError: a timestamp lies outside its video (names video and timestamp).
        DataError / VideoError: the video file is missing or cannot be decoded.
    """
    video = np.asarray(video).astype(str)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    rate = dataset.frames_per_timestamp  # None: timestamps in seconds, the video's fps
    for name in sorted(set(video.tolist())):
        stamps = np.unique(timestamp[video == name])
        with VideoReader(dataset.video_path(name)) as reader:
            index = [
                center_frame(
                    float(t),
                    dataset.offset_of(name),
                    rate or reader.fps,
                    num_frames=reader.num_frames,
                    video=name,
                )
                for t in stamps
            ]
            frames = reader.get_frames(np.asarray(index, dtype=np.int64))
        yield KeyframeImages(video=name, timestamp=stamps, frames=frames)


def to_tensor(frame: np.ndarray) -> Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1] (what torchvision detectors take)."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)


@dataclass(frozen=True)
class TrainingSet:
    """Keyframe images and their GT person boxes.

    Attributes:
        frames: per keyframe uint8 [H, W, 3] (a list: videos may differ in size).
        boxes: per keyframe float32 [G_k, 4] normalized x1, y1, x2, y2.
    """

    frames: list[np.ndarray]
    boxes: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.frames)


def training_set(
    dataset: Dataset, gt: BoxTable, *, max_keyframes: int | None, seed: int
) -> TrainingSet:
    """The GT keyframes (a seeded subset of ``max_keyframes``) with their unique boxes."""
    videos, stamps = unique_keyframes(gt.video, gt.timestamp)
    if max_keyframes is not None and max_keyframes < len(stamps):
        pick = np.sort(np.random.default_rng(seed).choice(len(stamps), max_keyframes, False))
        videos, stamps = videos[pick], stamps[pick]
    gt_video = gt.video.astype(str)
    frames, boxes = [], []
    for images in decode_keyframes(dataset, videos, stamps):
        rows = gt_video == images.video
        for t, frame in zip(images.timestamp, images.frames, strict=True):
            keyframe_boxes = gt.boxes[rows & (gt.timestamp == t)]
            frames.append(frame)
            boxes.append(np.unique(keyframe_boxes, axis=0).astype(np.float32))
    return TrainingSet(frames=frames, boxes=boxes)


def _target(boxes: np.ndarray, height: int, width: int, flip: bool) -> dict[str, Tensor]:
    """Pixel boxes and labels for torchvision; boxes under one pixel wide/high dropped
    (torchvision rejects degenerate targets)."""
    pixels = boxes * np.array([width, height, width, height], dtype=np.float32)
    if flip:
        pixels = np.stack(
            [width - pixels[:, 2], pixels[:, 1], width - pixels[:, 0], pixels[:, 3]], axis=1
        )
    pixels = pixels.reshape(-1, 4)
    keep = (pixels[:, 2] - pixels[:, 0] >= 1) & (pixels[:, 3] - pixels[:, 1] >= 1)
    pixels = pixels[keep]
    return {
        "boxes": torch.from_numpy(np.ascontiguousarray(pixels)),
        "labels": torch.ones(len(pixels), dtype=torch.int64),  # 1 = person
    }


def learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps (at least 1), then cosine decay to 0."""
    warmup = max(1, total // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(model: FasterRCNN, cfg: DetectorFinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)


def finetune_detector(
    model: FasterRCNN,
    data: TrainingSet,
    cfg: DetectorFinetuneConfig,
    *,
    state_dir: Path,
    device: torch.device,
    log: Any = None,
) -> dict[str, Any]:
    """Train ``model`` (2 classes, person = 1) on ``data`` for ``cfg.epochs`` epochs.

    Resumes from ``state_dir/state.pt`` when present. Returns a small report: keyframes,
    boxes, steps, mean loss per epoch and seconds.
    """
    if len(data) == 0:
        raise ValueError("detector fine-tuning has no training keyframes")
    model.to(device)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = cfg.rois_per_image
    optimizer = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    report: dict[str, Any] = {
        "keyframes": len(data),
        "boxes": int(sum(len(b) for b in data.boxes)),
        "steps": total,
        "epoch_loss": [],
        "seconds": 0.0,
    }
    torch.manual_seed(cfg.seed)
    start_epoch = 0
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch, report = state["epoch"], state["report"]
    t0 = time.perf_counter() - report["seconds"]
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(data))
        flips = rng.random(len(data)) < 0.5 if cfg.hflip else np.zeros(len(data), bool)
        losses = []
        for step in range(steps_per_epoch):
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            images, targets = [], []
            for k in batch.tolist():
                frame = data.frames[k][:, ::-1] if flips[k] else data.frames[k]
                images.append(to_tensor(frame).to(device))
                target = _target(data.boxes[k], frame.shape[0], frame.shape[1], bool(flips[k]))
                targets.append({name: t.to(device) for name, t in target.items()})
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + step, total, cfg.lr)
            loss = sum(detector_losses(model, images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            losses.append(float(loss.detach()))  # type: ignore[union-attr]
        report["epoch_loss"].append(round(float(np.mean(losses)), 5))
        report["seconds"] = round(time.perf_counter() - t0, 3)
        if log is not None:
            log.info("detect: fine-tune epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, losses[-1])
        _save_state(state_path, model, optimizer, epoch + 1, report)
    model.eval()
    return report


def _save_state(
    path: Path, model: FasterRCNN, optimizer: torch.optim.Optimizer, epoch: int, report: dict
) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "report": report,
        },
        tmp,
    )
    os.replace(tmp, path)  # a kill mid-save leaves the previous epoch's state intact
