"""The training loop's :class:`OptimConfig`, apart from the train stages' config module so
that the paper recipes (:mod:`stages.train.recipes`, which that module reads) and the
config both import it without importing each other (docs/design.md §9). No torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stages.framework.keys import InKey, InKeyIfSet, NotInKey
from stages.framework.precision_names import Precision


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: InKey[int] = Field(6, ge=1)
    # keyframes per step (all actors of each keyframe together)
    batch_keyframes: InKey[int] = Field(16, ge=1)
    optimizer: InKey[Literal["sgd", "adamw"]] = "adamw"
    lr: InKey[float] = Field(1e-3, gt=0)
    momentum: InKey[float] = Field(0.9, ge=0)  # SGD
    # SlowFast-Det / ACAR use 1e-7..1e-4; AdamW default here
    weight_decay: InKey[float] = Field(1e-4, ge=0)
    warmup_epochs: InKey[float] = Field(0.5, ge=0)
    schedule: InKey[Literal["cosine", "step"]] = "cosine"
    step_epochs: InKey[list[int]] = []  # step schedule: lr × 0.1 at each
    grad_clip: InKey[float] = Field(5.0, ge=0)  # 0: no clipping
    # edge noise as a fraction of box size (heads that pool boxes)
    box_jitter: InKey[float] = Field(0.0, ge=0, lt=0.5)
    loss: InKey[Literal["ava", "bce"]] = "ava"
    seed: InKey[int] = 0
    # At most this many steps per epoch (the first ones of the epoch's shuffled order): a
    # smoke or throughput run on a large dataset. The schedule counts these steps. None: all.
    max_steps_per_epoch: InKeyIfSet[int | None] = Field(None, ge=1)
    # Autocast of the forward pass: bf16 (CPU or CUDA), fp16 (CUDA, with a gradient scaler);
    # weights, optimizer state and the loss stay fp32 (docs/design.md, "Mixed precision").
    precision: InKey[Precision] = "fp32"
    # Data-parallel processes (one per device; stages.framework.distributed): the same global batch
    # of batch_keyframes split between them, so the result does not depend on it.
    devices: NotInKey[int] = Field(1, ge=1)
