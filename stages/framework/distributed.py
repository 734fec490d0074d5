"""Data-parallel training under ``torch.distributed`` (docs/design.md, "Data-parallel training").

A training stage whose config asks for ``devices: N`` (N > 1) runs its body in N processes,
one per device: :func:`run_data_parallel` spawns them (``torch.multiprocessing``, a free
port on 127.0.0.1) unless the process was started by ``torchrun`` already (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` in the environment: then it joins that group, so several
workers can run one job). gloo on CPU, NCCL on CUDA (device = the local rank).

The global batch is the single-process batch: rank r takes the r-th contiguous slice
(:func:`shard`), each rank's loss is its share of the global mean (the loop passes the
global normalisers to the loss), and the gradients are summed over ranks before clipping
and the optimizer step (:func:`all_reduce_gradients`). Every rank thus applies the same
update as one process would, up to float summation order. Rank 0 writes checkpoints, events
and outputs; every rank loads the checkpoint it resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("bankflow.distributed")


def world() -> tuple[int, int]:
    """(rank, world size) of this process (0, 1 outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shard(keyframes: np.ndarray, rank: int, size: int) -> tuple[np.ndarray, int]:
    """Rank ``rank``'s contiguous slice of a global batch and its start position."""
    bounds = np.linspace(0, len(keyframes), size + 1).round().astype(int)
    return keyframes[bounds[rank] : bounds[rank + 1]], int(bounds[rank])


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a (small) tensor (itself in one process)."""
    if world()[1] == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_gradients(model: nn.Module) -> None:
    """Sum every trainable parameter's gradient over the ranks, in one flat buffer.

    A parameter no rank computed a gradient for keeps ``grad = None`` (the optimizer skips
    it, as it would in one process); one some ranks did not reach gets zeros there.
    """
    if world()[1] == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.SUM)
    used = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    grads = []
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not used:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(used, grads, strict=True):
        n = p.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _init_from_env() -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    # Ranks other than 0 wait in the next all-reduce while rank 0 evaluates an epoch (a
    # full val pass at AVA scale): a longer wait than the default 30 minutes is allowed.
    dist.init_process_group(_backend(), init_method="env://", timeout=timedelta(hours=4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _watch_parent(parent: int) -> None:
    """End this worker when the launching process dies (a SIGKILLed stage must not leave
    ranks waiting in a collective for gloo's 30-minute timeout)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="bankflow-ddp-parent").start()


def _worker(
    rank: int,
    fn: Callable[..., Any],
    args: tuple,
    size: int,
    port: int,
    threads: int,
    result: str,
    parent: int,
) -> None:
    _watch_parent(parent)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    _init_from_env()
    try:
        out = fn(*args)
        if rank == 0:
            Path(result).write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def run_data_parallel(fn: Callable[..., Any], *args: Any, devices: int) -> Any:
    """``fn(*args)`` on ``devices`` ranks; rank 0's (JSON-able) return value.

    ``devices`` 1, or a process group already set up: ``fn`` runs here. Started by
    ``torchrun`` (``RANK``/``WORLD_SIZE`` set): joins that group (every process of the job
    runs the same stage on one shared work root); rank 0 returns its value, the other
    ranks exit the process once ``fn`` is done. Otherwise ``devices`` processes
    are spawned; ``fn`` and ``args`` must be picklable (a module-level function, the stage
    context), and torch's threads are shared out between them.
    """
    if devices <= 1 or (dist.is_available() and dist.is_initialized()):
        return fn(*args)
    if launched_by_torchrun():
        _init_from_env()
        try:
            out = fn(*args)
        finally:
            dist.destroy_process_group()
        if int(os.environ["RANK"]) != 0:
            # Rank 0 publishes the output; another rank ends here, before its caller could
            # publish the same staging directory (docs/design.md: a shared work root).
            logging.shutdown()
            os._exit(0)
        return out
    import torch.multiprocessing as mp

    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        raise RuntimeError(
            f"devices: {devices} asked for, {torch.cuda.device_count()} CUDA devices visible"
        )
    threads = max(1, torch.get_num_threads() // devices)
    with tempfile.TemporaryDirectory(prefix="bankflow-ddp-") as tmp:
        result = str(Path(tmp) / "result.json")
        log.info("data-parallel: %d processes (%s)", devices, _backend())
        mp.spawn(
            _worker,
            args=(fn, args, devices, _free_port(), threads, result, os.getpid()),
            nprocs=devices,
            join=True,
        )
        return json.loads(Path(result).read_text())


def config_devices(config: Any) -> int:
    """The data-parallel device count a stage config asks for (its largest ``devices``
    field, nested models included; 1 when it has none): the GPU slots its task claims."""
    found = 1
    if isinstance(config, dict):
        children = list(config.values())
    elif hasattr(type(config), "model_fields"):
        value = getattr(config, "devices", None)
        if isinstance(value, int) and not isinstance(value, bool):
            found = max(found, value)
        children = [getattr(config, name) for name in type(config).model_fields]
    else:
        return found
    return max([found, *(config_devices(c) for c in children)])
