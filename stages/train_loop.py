"""One training loop for every head (nanoGPT-style: small named helpers, one loop).

Heads differ; the loop doesn't. Each epoch visits the training keyframes in an order drawn
from ``(seed, epoch)``, so a run resumed from its last epoch checkpoint (model, optimizer,
scheduler, RNG) continues exactly as an uninterrupted one would: on CPU the final weights
are bitwise equal.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from models.losses import ava_loss, ava_scores
from stages.head_data import KeyframeSource, SplitIndex, collate, jitter_boxes

log = logging.getLogger("bankflow.train")


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = 6
    batch_keyframes: int = 16  # keyframes per step (all actors of each keyframe together)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD
    weight_decay: float = 1e-4  # SlowFast-Det / ACAR use 1e-7..1e-4; AdamW default here
    warmup_epochs: float = 0.5
    schedule: Literal["cosine", "step"] = "cosine"
    step_epochs: list[int] = []  # step schedule: lr × 0.1 at each
    grad_clip: float = 5.0
    box_jitter: float = 0.0  # edge noise as a fraction of box size (heads that pool boxes)
    loss: Literal["ava", "bce"] = "ava"
    seed: int = 0


@dataclass
class TrainData:
    train: KeyframeSource
    val: KeyframeSource | None
    exclusive: list[int]  # dense class indices of the mutually exclusive (pose) classes
    use_roi: bool
    use_roi_t: bool


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine to zero or ×0.1 steps."""
    epoch = step / max(steps_per_epoch, 1)
    if epoch < cfg.warmup_epochs:
        return max(epoch / cfg.warmup_epochs, 1e-3)
    if cfg.schedule == "step":
        return 0.1 ** sum(epoch >= e for e in cfg.step_epochs)
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The keyframe order of one epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def get_batch(
    source: KeyframeSource, keyframes: np.ndarray, data: TrainData
) -> tuple[Any, torch.Tensor]:
    index: SplitIndex = source.index
    batch = collate(source.get(keyframes), use_roi=data.use_roi, use_roi_t=data.use_roi_t)
    targets = torch.from_numpy(np.concatenate([index.labels[index.actors(k)] for k in keyframes]))
    return batch, targets


def step_loss(model: nn.Module, batch, targets: torch.Tensor, data: TrainData, cfg: OptimConfig):
    # Heads with auxiliary losses on the labels (IGMN's DAM) take them in forward.
    out = model(batch, labels=targets) if getattr(model, "needs_labels", False) else model(batch)
    loss = ava_loss(out.logits, targets, exclusive=data.exclusive, mode=cfg.loss)
    for aux in out.aux_losses.values():
        loss = loss + aux
    return loss


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def train(
    model: nn.Module,
    data: TrainData,
    cfg: OptimConfig,
    ckpt_dir: Path,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``cfg.epochs``, resuming from the newest epoch checkpoint.

    Returns the per-epoch history (loss, lr, seconds, and ``evaluate``'s figures).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    n = len(data.train.index)
    steps_per_epoch = math.ceil(n / cfg.batch_keyframes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        state = torch.load(last, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = state["history"], state["epoch"] + 1
        log.info("resuming from %s (epoch %d)", last, start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = epoch_order(n, cfg.seed, epoch)
        losses = []
        for start in range(0, n, cfg.batch_keyframes):
            batch, targets = get_batch(data.train, order[start : start + cfg.batch_keyframes], data)
            batch.boxes = jitter_boxes(batch.boxes, cfg.box_jitter, generator)
            loss = step_loss(model, batch, targets, data, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if evaluate is not None:
            record.update(evaluate(model))
        history.append(record)
        log.info("epoch %d: %s", epoch, record)
        _save(
            ckpt_dir / f"epoch_{epoch}.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "epoch": epoch,
            },
        )
        # Older checkpoints are not needed to resume; keep the directory small.
        for old in ckpt_dir.glob("epoch_*.pt"):
            if int(old.stem.split("_")[1]) < epoch:
                old.unlink()
        if on_epoch is not None:
            on_epoch(record)
    return history


@torch.no_grad()
def predict(
    model: nn.Module, source: KeyframeSource, data: TrainData, *, batch_keyframes: int = 32
) -> np.ndarray:
    """Class probabilities [A, C] for every actor of ``source`` (softmax over the pose group,
    sigmoid for the rest)."""
    model.eval()
    n = len(source.index)
    out = []
    for start in range(0, n, batch_keyframes):
        keyframes = np.arange(start, min(start + batch_keyframes, n))
        batch = collate(source.get(keyframes), use_roi=data.use_roi, use_roi_t=data.use_roi_t)
        out.append(ava_scores(model(batch).logits, data.exclusive).numpy())
    c = source.index.labels.shape[1]
    return np.concatenate(out) if out else np.zeros((0, c), np.float32)
