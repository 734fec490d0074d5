"""One training loop for every head (nanoGPT-style: small named helpers, one loop).

Heads differ; the loop doesn't. Each epoch visits the training keyframes in an order drawn
from ``(seed, epoch)``, so a run resumed from its last epoch checkpoint (model, optimizer,
scheduler, RNG) continues exactly as an uninterrupted one would: on CPU the final weights
are bitwise equal.

Per-epoch figures go to the returned history and, as they happen, to an append-only JSON
lines file (``events.jsonl``: one object per event, flushed at once) that a shell can
``tail -f`` or a notebook can poll, and as TensorBoard scalars (``tensorboard/`` beside
it: ``tensorboard --logdir <work_root>/train`` shows every head's curves).

With a store-backed source (``preload=False``) the next batches are read and collated in
a background thread (:func:`stages.train.data.iter_batches`) while the head computes, so
the store's per-call latency stays off the step time.

At a terminal each epoch (and each :func:`predict`) shows a progress bar on stderr
(:mod:`stages.framework.progress`: step i/steps and the running mean loss; never in logs or CI).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.losses import ava_loss, ava_scores, loss_normalizers
from stages.framework.distributed import (
    all_reduce_gradients,
    all_reduce_sum,
    barrier,
    shard,
    world,
)
from stages.framework.precision import autocast, grad_scaler
from stages.framework.progress import progress_bar
from stages.train.config import (
    OptimConfig,
)
from stages.train.data import KeyframeSource, SplitIndex, collate, iter_batches, jitter_boxes

log = logging.getLogger("bankflow.train")

TENSORBOARD_DIR = "tensorboard"


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@dataclass
class TrainData:
    train: KeyframeSource
    val: KeyframeSource | None
    exclusive: list[int]  # dense class indices of the mutually exclusive (pose) classes
    use_roi: bool
    use_roi_t: bool
    # Stage-2 heads: fills ``batch.bank`` for the keyframes of a batch (the window reader);
    # called where the batch is read, so a store-backed source reads it in the prefetch thread.
    attach: Callable[[KeyframeSource, np.ndarray, Any], None] | None = None

    @classmethod
    def for_prediction(cls, source: KeyframeSource, exclusive: list[int]) -> TrainData:
        """What :func:`predict` needs to read ``source``: its RoI arrays as the store has them."""
        schema = source.store.schema
        return cls(
            train=source,
            val=None,
            exclusive=exclusive,
            use_roi=schema.roi_shape is not None,
            use_roi_t=schema.roi_t_shape is not None,
        )


def read_batch(source: KeyframeSource, keyframes: np.ndarray, data: TrainData) -> Any:
    """The collated :class:`ActorBatch` of ``keyframes`` (with its bank window, if any)."""
    batch = collate(source.get(keyframes), use_roi=data.use_roi, use_roi_t=data.use_roi_t)
    if data.attach is not None:
        data.attach(source, keyframes, batch)
    return batch


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
    """The :class:`ActorBatch` of ``keyframes`` and its multi-hot targets [N, C]."""
    index: SplitIndex = source.index
    batch = read_batch(source, keyframes, data)
    c = index.labels.shape[1]
    rows = [index.labels[index.actors(int(k))] for k in keyframes]
    targets = torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, c), np.float32))
    return batch, targets


def epoch_batches(order: np.ndarray, batch_keyframes: int) -> list[np.ndarray]:
    """``order`` cut into consecutive batches of ``batch_keyframes`` (the last may be short)."""
    return [order[s : s + batch_keyframes] for s in range(0, len(order), batch_keyframes)]


class EventLog:
    """Append-only JSON lines, one object per event, flushed as written, and the numeric
    fields of every epoch as TensorBoard scalars (step = epoch) in ``tensorboard/``.

    ``{"event": "epoch", "epoch": 3, "loss": …, "val_map": …, "time": <unix s>}``. On
    resume the file is rewritten from the checkpoint's history first, and TensorBoard's
    events from the resumed epoch on are purged, so neither holds an epoch twice nor one
    the checkpoint does not know.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._board: Any = None

    def restart(self, history: list[dict[str, Any]]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        lines = "".join(_event_line("epoch", record) for record in history)
        tmp.write_text(lines)
        os.replace(tmp, self.path)
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        self._board = SummaryWriter(
            str(self.path.parent / TENSORBOARD_DIR), purge_step=len(history) or None
        )

    def write(self, event: str, fields: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(_event_line(event, fields))
            f.flush()
        if event == "epoch" and self._board is not None:
            for name, value in fields.items():
                if name != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                    self._board.add_scalar(name, value, global_step=int(fields["epoch"]))
            self._board.flush()

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None


def _event_line(event: str, fields: dict[str, Any]) -> str:
    payload = {"event": event, **fields}
    payload.setdefault("time", round(time.time(), 3))
    return json.dumps(payload, default=str) + "\n"


def optimizer_step(
    model: nn.Module,
    loss: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
    scaler: Any = None,
) -> None:
    """Backward, sum the gradients over data-parallel ranks, clip the global gradient norm
    (``grad_clip`` > 0), step, advance the lr. ``loss`` None: this rank had no sample in
    the batch (its gradient is zero). ``scaler``: fp16's ``GradScaler``."""
    optimizer.zero_grad(set_to_none=True)
    if loss is not None:
        (scaler.scale(loss) if scaler is not None else loss).backward()
    all_reduce_gradients(model)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()


def step_loss(
    model: nn.Module,
    batch: Any,
    targets: torch.Tensor,
    data: TrainData,
    cfg: OptimConfig,
    share: tuple[tuple[float, float], float] | None = None,
) -> torch.Tensor:
    """Scalar loss of one batch: the AVA loss plus the head's auxiliary terms.

    ``share`` (data-parallel ranks): the global batch's loss normalisers and this rank's
    fraction of its actors; the AVA loss is then this rank's part of the global mean, and
    the auxiliary terms (batch means of the head's own) are weighted by the fraction.
    """
    # Heads with auxiliary losses on the labels (IGMN's DAM) take them in forward.
    with autocast(cfg.precision, model_device(model)):
        needs_labels = getattr(model, "needs_labels", False)
        out = model(batch, labels=targets) if needs_labels else model(batch)
    normalizers, fraction = share if share is not None else (None, 1.0)
    loss = ava_loss(
        out.logits.float(),
        targets,
        exclusive=data.exclusive,
        mode=cfg.loss,
        normalizers=normalizers,
    )
    for aux in out.aux_losses.values():
        loss = loss + (aux.float() if share is None else aux.float() * fraction)
    return loss


def batch_targets(index: SplitIndex, keyframes: np.ndarray) -> torch.Tensor:
    """Multi-hot targets [N, C] of the actors of ``keyframes`` (from the index: no read)."""
    rows = [index.labels[index.actors(int(k))] for k in keyframes]
    c = index.labels.shape[1]
    return torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, c), np.float32))


def jitter_shard(
    boxes: torch.Tensor, amount: float, generator: torch.Generator, start: int, total: int
) -> torch.Tensor:
    """Box jitter of actors ``start..start+len(boxes)`` of a global batch of ``total``:
    the noise is drawn for the whole batch, as one process draws it, and sliced."""
    if amount <= 0:
        return boxes
    full = boxes.new_tensor([0.0, 0.0, 1.0, 1.0]).repeat(total, 1)
    full[start : start + len(boxes)] = boxes
    return jitter_boxes(full, amount, generator)[start : start + len(boxes)]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` written aside and renamed: a kill mid-save leaves the previous file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint of another run)."""


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The ``epoch_<n>.pt`` of ``ckpt_dir`` with the highest ``n`` (None if there is none)."""
    found = sorted(ckpt_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _checkpoint_identity(cfg: OptimConfig, n: int) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it (same data order, schedule)."""
    # Not the device count: a run may resume on another number of devices.
    optim = cfg.model_dump(mode="json", exclude={"devices"})
    if optim["max_steps_per_epoch"] is None:  # as before the field existed
        del optim["max_steps_per_epoch"]
    return {"optim": optim, "train_keyframes": n}


def _resume(
    last: Path,
    identity: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> tuple[list[dict[str, Any]], int]:
    """Load ``last`` into the run's objects; returns (history, first epoch to run)."""
    state = torch.load(last, weights_only=True)
    if state.get("identity") != identity:
        raise TrainingError(
            f"{last}: checkpoint of another run (its optimizer config / training keyframes "
            f"{state.get('identity')} differ from this run's {identity}); remove "
            f"{last.parent} to start over"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state["history"], int(state["data_order"]["next_epoch"])


def train(
    model: nn.Module,
    data: TrainData,
    cfg: OptimConfig,
    ckpt_dir: Path,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    events: Path | None = None,
    prefetch: int = 2,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``cfg.epochs``, resuming from the newest epoch checkpoint.

    Every epoch ends with a checkpoint ``ckpt_dir/epoch_<k>.pt`` holding the model,
    optimizer, scheduler, the box-jitter generator and torch RNG states, the history and
    the data order (``epoch_order(n, seed, epoch)`` of the next epoch); only the newest
    is kept. ``events`` (``events.jsonl``) receives a JSON line per epoch as it ends.
    ``prefetch``: batches read ahead in a background thread for a store-backed source
    (0: read in the loop).

    Under ``torch.distributed`` (:mod:`stages.framework.distributed`) each rank trains on its slice
    of every global batch; rank 0 alone evaluates, writes events and checkpoints, and
    returns the full history (the other ranks' lacks ``evaluate``'s figures).

    Returns the per-epoch history (loss, lr, seconds, and ``evaluate``'s figures).
    """
    rank, size = world()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for stale in ckpt_dir.glob(".*.tmp"):  # a save interrupted by a kill
            stale.unlink()
    barrier()
    if size > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log.warning(
            "%s has BatchNorm: each of the %d ranks normalises its own slice of the "
            "batch (not the single-process result)",
            type(model).__name__,
            size,
        )
    torch.manual_seed(cfg.seed)
    scaler = grad_scaler(cfg.precision)
    optimizer = make_optimizer(model, cfg)
    n = len(data.train.index)
    steps_per_epoch = math.ceil(n / cfg.batch_keyframes)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    identity = _checkpoint_identity(cfg, n)
    log_events = EventLog(events if rank == 0 else None)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        history, start_epoch = _resume(last, identity, model, optimizer, scheduler, generator)
        if scaler is not None and "scaler" in (state := torch.load(last, weights_only=True)):
            scaler.load_state_dict(state["scaler"])
        log.info("resuming from %s (epoch %d)", last, start_epoch)
        log_events.restart(history)
        log_events.write("resume", {"epoch": start_epoch, "checkpoint": last.name})
    else:
        log_events.restart([])
        log_events.write(
            "start", {"epochs": cfg.epochs, "keyframes": n, "steps_per_epoch": steps_per_epoch}
        )

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        batches = epoch_batches(epoch_order(n, cfg.seed, epoch), cfg.batch_keyframes)
        batches = batches[:steps_per_epoch]  # optim.max_steps_per_epoch
        # This rank's slice of each global batch (all of it in one process).
        shards = [shard(b, rank, size) for b in batches]
        mine = iter_batches(
            data.train,
            [kf for kf, _ in shards if len(kf)],
            lambda kf: get_batch(data.train, kf, data),
            prefetch,
        )
        losses, loss_sum = [], 0.0
        with progress_bar(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            for step, (keyframes, (kf, start)) in enumerate(zip(batches, shards, strict=True)):
                loss = global_loss = None
                if size == 1:
                    batch, targets = next(mine)
                    batch.boxes = jitter_boxes(batch.boxes, cfg.box_jitter, generator)
                    loss = global_loss = step_loss(model, batch, targets, data, cfg)
                else:
                    every = batch_targets(data.train.index, keyframes)
                    first = len(batch_targets(data.train.index, keyframes[:start]))
                    if len(kf):
                        batch, targets = next(mine)
                        batch.boxes = jitter_shard(
                            batch.boxes, cfg.box_jitter, generator, first, len(every)
                        )
                        norms = loss_normalizers(every, data.exclusive, cfg.loss)
                        share = (norms, len(targets) / max(len(every), 1))
                        loss = step_loss(model, batch, targets, data, cfg, share)
                    else:  # the same draws as the ranks that have actors
                        jitter_shard(torch.zeros((0, 4)), cfg.box_jitter, generator, 0, len(every))
                    part = torch.zeros(()) if loss is None else loss.detach().float().cpu()
                    global_loss = all_reduce_sum(part.to(model_device(model))).cpu()
                if not torch.isfinite(global_loss):
                    raise TrainingError(
                        f"non-finite loss {float(global_loss.detach())} at epoch {epoch}, step "
                        f"{step} (lr {optimizer.param_groups[0]['lr']:.3g}); lower optim.lr or "
                        "check the features for NaN/inf"
                    )
                optimizer_step(model, loss, optimizer, scheduler, cfg.grad_clip, scaler)
                losses.append(float(global_loss.detach()))
                loss_sum += losses[-1]
                bar.advance(loss=loss_sum / len(losses))  # the epoch's running mean
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if evaluate is not None and rank == 0:
            record.update(evaluate(model))
        history.append(record)
        log.info("epoch %d: %s", epoch, record)
        if rank != 0:
            if on_epoch is not None:
                on_epoch(record)
            continue
        save_checkpoint(
            ckpt_dir / f"epoch_{epoch}.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "epoch": epoch,
                "data_order": {"seed": cfg.seed, "next_epoch": epoch + 1},
                "identity": identity,
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            },
        )
        # The event follows the checkpoint: an epoch in events.jsonl is never lost.
        log_events.write("epoch", record)
        # Older checkpoints are not needed to resume; keep the directory small.
        for old in ckpt_dir.glob("epoch_*.pt"):
            if int(old.stem.split("_")[1]) < epoch:
                old.unlink()
        if on_epoch is not None:
            on_epoch(record)
    log_events.close()
    return history


@torch.no_grad()
def predict(
    model: nn.Module,
    source: KeyframeSource,
    data: TrainData,
    *,
    batch_keyframes: int = 32,
    prefetch: int = 2,
) -> np.ndarray:
    """Class probabilities float32 [A, C] for every actor of ``source``, in index order
    (softmax over the pose group, sigmoid for the rest)."""
    model.eval()
    n = len(source.index)
    batches = epoch_batches(np.arange(n), batch_keyframes)

    def read(keyframes: np.ndarray):
        return read_batch(source, keyframes, data)

    out: list[np.ndarray] = []
    with progress_bar(len(batches), "predict", unit="batch", transient=True) as bar:
        for batch in iter_batches(source, batches, read, prefetch):
            out.append(ava_scores(model(batch).logits, data.exclusive).numpy())
            bar.advance()
    c = source.index.labels.shape[1]
    return np.concatenate(out) if out else np.zeros((0, c), np.float32)
