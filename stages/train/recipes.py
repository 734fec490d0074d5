"""The papers' training recipes per stage-1 head, scaled to a CPU-sized run.

Every head paper trains backbone and head end to end on 8+ GPUs; bankflow trains the
head alone on stored features. What carries over, per head (``PAPER_RECIPES``): the
optimiser (SGD + momentum), the weight decay, the warm-up and the learning-rate drops as
fractions of the schedule, the dropout, and batches of whole keyframes (every actor of a
keyframe in the same batch, which the relation heads need: they relate the actors of a
keyframe). What is scaled (:func:`scaled_recipe`): the base learning rate, linearly with
the batch (Goyal et al., the warm-up rule ACAR-Net cites), and the length (epochs).

Two things are not in :class:`stages.train.loop.OptimConfig` and are approximated:
Nesterov momentum (ACAR-Net, PCCA) runs as plain momentum, and the ×0.66 drops of the
AVA-Kinetics report as ×0.1 drops at the last two of its four steps.

``zero_init_residual``: the last layer of every residual relation branch (HR2O's output
conv, a transformer block's attention output and MLP output) starts at zero, so a
relation head begins as its per-actor read-out and learns relations from there (Goyal et
al.'s zero-γ; LFB initialises its feature-bank operator's last layer to zero the same way).

The papers' values (full scale), from /work/shared/papers and the PySlowFast AVA config:

=========  =====  ======  ======  ========  ==============  =================  =========
head       opt    lr      batch   wd        warm-up         drops (×0.1 at)     length
=========  =====  ======  ======  ========  ==============  =================  =========
linear     SGD    0.1     64      1e-7      5 of 20 ep      ep 10, 15          20 ep
acrn       SGD-N  0.064   32      1e-7      6k of 35k it    33k, 34k it        35k it
acar       SGD-N  0.064   32      1e-7      6k of 35k it    33k, 34k it        35k it
amcr       SGD    0.02    8       --        3 of 10 ep      ep 7, 9            10 ep
pcca       SGD-N  0.1     32      1e-4      3 of 12 ep      ep 5, 8, 10        12 ep
sonly      SGD    0.01    64      1e-7      1.5k of 30k it  ×0.66 at 13.5k...  30k it
igmn_dam   SGD    0.003   12      5e-4      --              93k, 120k it       140k it
=========  =====  ======  ======  ========  ==============  =================  =========

ACRN has no recipe of its own in ACAR-Net (it is ACAR-Net's first-order ablation, trained
the same way; the released ``acrn`` head is MMAction2's, whose config trains 10 epochs with
a cosine schedule — not used here); ``tonly`` and ``amcr_slim`` share ``sonly``'s and ``amcr``'s. AMCRNet gives
no weight decay; 1e-4 (PySlowFast's SGD default for heads trained from scratch) is used.
"""

from __future__ import annotations

import math
from typing import Any, cast

from pydantic import BaseModel, ConfigDict
from torch import nn

from models.heads import build_head
from models.heads.acar import NonLocalBlock
from models.heads.acar_release import ReleaseNonLocalBlock
from models.heads.relation_transformer import RelationEncoderLayer
from stages.train.optim import OptimConfig


class PaperRecipe(BaseModel):
    """A head paper's schedule, lengths as fractions so it can be scaled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float  # base learning rate at ``batch`` clips
    batch: int
    weight_decay: float
    warmup: float  # fraction of training
    drops: tuple[float, ...]  # ×0.1 at these fractions of training
    momentum: float = 0.9
    source: str


PAPER_RECIPES: dict[str, PaperRecipe] = {
    "linear": PaperRecipe(
        lr=0.1,
        batch=64,
        weight_decay=1e-7,
        warmup=5 / 20,
        drops=(10 / 20, 15 / 20),
        source="SlowFast AVA (PySlowFast configs/AVA: SGD 0.1, batch 64, 20 ep)",
    ),
    "acrn": PaperRecipe(
        lr=0.064,
        batch=32,
        weight_decay=1e-7,
        warmup=6 / 35,
        drops=(33 / 35, 34 / 35),
        source="ACAR-Net §4.1 (ACRN is its first-order ablation)",
    ),
    "acar": PaperRecipe(
        lr=0.064,
        batch=32,
        weight_decay=1e-7,
        warmup=6 / 35,
        drops=(33 / 35, 34 / 35),
        source="ACAR-Net §4.1: SGD Nesterov 0.9, 0.064, batch 32, 35k it",
    ),
    "amcr": PaperRecipe(
        lr=0.02,
        batch=8,
        weight_decay=1e-4,
        warmup=3 / 10,
        drops=(7 / 10, 9 / 10),
        source="AMCRNet §4.1: SGD 0.02, batch 8, 10 ep, warm-up 3 ep",
    ),
    "pcca": PaperRecipe(
        lr=0.1,
        batch=32,
        weight_decay=1e-4,
        warmup=3 / 12,
        drops=(5 / 12, 8 / 12, 10 / 12),
        source="PCCA §3: SGD Nesterov 0.9, 0.1, batch 32, 12 ep",
    ),
    "sonly": PaperRecipe(
        lr=0.01,
        batch=64,
        weight_decay=1e-7,
        warmup=1.5 / 30,
        drops=(22.5 / 30, 27 / 30),
        source="AVA-Kinetics 2021 report §2.4: SGD 0.01, batch 64, 30k it",
    ),
    "igmn_dam": PaperRecipe(
        lr=0.003,
        batch=12,
        weight_decay=5e-4,
        warmup=0.0,
        drops=(93 / 140, 120 / 140),
        source="IGMN §4.1: SGD 0.003, batch 12, wd 5e-4, 140k it",
    ),
}
PAPER_RECIPES["amcr_slim"] = PAPER_RECIPES["amcr"]
PAPER_RECIPES["tonly"] = PAPER_RECIPES["sonly"]

# Widths of each head at probe size (a 16-channel store): the papers' structure (layers,
# heads' kinds, context scales, box enlargements) with narrower maps and tokens.
PROBE_WIDTHS: dict[str, dict[str, Any]] = {
    "linear": {},
    "acrn": {"dim": 32},  # MMAction2 variant: no reduction
    "acar": {"reduce_dim": 32, "dim": 32},
    "amcr": {"hidden_dim": 64, "num_heads": 4},
    "amcr_slim": {"hidden_dim": 64, "num_heads": 4},
    "pcca": {"dim": 64, "num_heads": 4},
    "sonly": {"hidden_dim": 64, "num_heads": 4},
    "tonly": {"hidden_dim": 64, "num_heads": 4},
    "igmn_dam": {"attention_hidden": 32, "fuse_hidden": 64},
}


class HeadRecipe(BaseModel):
    """What a training run of one head needs besides the data."""

    model_config = ConfigDict(extra="forbid")

    head: str
    head_kwargs: dict[str, Any] = {}
    optim: OptimConfig = OptimConfig()
    zero_init_residual: bool = True


def scaled_recipe(
    head: str, *, batch_keyframes: int, epochs: int, head_kwargs: dict[str, Any] | None = None
) -> HeadRecipe:
    """``head``'s paper recipe at ``batch_keyframes`` keyframes per step for ``epochs``."""
    if head not in PAPER_RECIPES:
        raise ValueError(
            f"no paper recipe for head {head!r}; expected one of {sorted(PAPER_RECIPES)}"
        )
    paper = PAPER_RECIPES[head]
    optim = OptimConfig(
        epochs=epochs,
        batch_keyframes=batch_keyframes,
        optimizer="sgd",
        lr=paper.lr * batch_keyframes / paper.batch,
        momentum=paper.momentum,
        weight_decay=paper.weight_decay,
        warmup_epochs=paper.warmup * epochs,
        schedule="step",
        step_epochs=[math.ceil(f * epochs) for f in paper.drops],
    )
    return HeadRecipe(head=head, head_kwargs=dict(head_kwargs or {}), optim=optim)


def probe_recipe(head: str) -> HeadRecipe:
    """The recipe of the relational probes (``tests/stages/relational_probes.py``)."""
    return scaled_recipe(head, batch_keyframes=32, epochs=20, head_kwargs=PROBE_WIDTHS[head])


def zero_init_residual(model: nn.Module) -> int:
    """Zero the last layer of every residual relation branch of ``model``; returns how many."""
    zeroed: list[nn.Conv2d | nn.Linear] = []
    for module in model.modules():
        if isinstance(module, ReleaseNonLocalBlock):
            zeroed.append(module.conv)
        elif isinstance(module, NonLocalBlock):
            zeroed.append(module.out)
        elif isinstance(module, RelationEncoderLayer):
            # nn.Sequential indexes as Module; the layer's MLP ends in a Linear.
            zeroed += [module.attn.out_proj, cast(nn.Linear, module.mlp[-1])]
    for layer in zeroed:
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return len(zeroed)


def build_recipe_head(
    head: str, recipe: HeadRecipe, *, in_channels: int, num_classes: int
) -> nn.Module:
    """``build_head`` with the recipe's arguments and initialisation."""
    model = build_head(head, in_channels=in_channels, num_classes=num_classes, **recipe.head_kwargs)
    if recipe.zero_init_residual:
        zero_init_residual(model)
    return model
