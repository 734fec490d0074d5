"""What a trained stage-1 head gives a long-term bank, and how stage-2 heads read it back.

Each head declares the kinds it fills (``BANK_SOURCES``) and fills them in its
``bank_rows`` (:mod:`models.heads.contract`); ``BANK_KINDS`` is derived from those
declarations (:mod:`models.heads.registry`).

``bank_rows(head, kind, batch)`` runs a stage-1 head (eval mode, no grad) and returns, per
actor of the batch (rows in ``batch.pooled`` order), the arrays the bank of ``kind`` stores:

========== ============================================ ===================================
kind       arrays                                       from
========== ============================================ ===================================
lfb        features [N, D]                              ``HeadOutput.features`` (any head)
acfb       maps [N, d, H, W]                            ``first_order`` (ACAR, ACRN): F^i
hrafb      interaction [N, D1], movement [N, C]          AMCR: BHOI output H, RoI feature A
memory     features [N, C]                              S-only/T-only: the person tokens
                                                        averaged over their positions
identity   features [N, C]                              IGMN DAM: max-pooled RoIAlign f^i
========== ============================================ ===================================

Choices, with reasons:

- ``hrafb`` movement = ``batch.pooled``, the RoIAlign actor feature the BHOI tokens start
  from (AMCRNet §3.3: "movement feature from ROIAlign"), without PosNet's position.
- ``memory`` = the relation module's input tokens averaged over positions (AVA-Kinetics
  report §2.3: the bank "saves our pooled person features" and the loaded features are fed
  into the relation module, i.e. they live where the tokens live, before the projection).
- ``identity`` = the IGMN node feature of §3.2.1, ``f_hat = max_xy f^i`` over the DAM's own
  RoIAlign, so bank nodes and the current actor nodes of the stage-2 head are the same kind.

``bank_window(batch, arrays, owner)`` validates ``ActorBatch.bank`` (the window reader's
per-keyframe tensors, see the bank contract in ``models/heads/batch.py``) for a stage-2 head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.heads.batch import ActorBatch

# The tensors every window carries besides the kind's arrays.
WINDOW_KEYS = ("mask", "dt", "track", "current")


def __getattr__(name: str) -> Any:
    # BANK_KINDS is derived from the heads' declarations (models.heads.registry), whose
    # stage-2 modules import bank_window from here: resolved on first use.
    if name == "BANK_KINDS":
        from models.heads.registry import BANK_KINDS

        return BANK_KINDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bank_rows(head: nn.Module, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
    """The bank arrays of ``kind`` for every actor of ``batch`` (table in the module doc).

    The head runs in eval mode without gradients (dropout off, so a dump is deterministic);
    its previous mode is restored. Returns float tensors whose first axis is the N actors.

    Raises:
        ValueError: unknown ``kind``, or a head that cannot produce it (names the class).
    """
    from models.heads.contract import Head
    from models.heads.registry import BANK_KINDS

    if kind not in BANK_KINDS:
        raise ValueError(f"unknown bank kind {kind!r}; expected one of {BANK_KINDS}")
    if not isinstance(head, Head):
        raise ValueError(f"bank kind {kind!r}: {type(head).__name__} is not a bankflow head")
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            rows = head.bank_rows(kind, batch)
    finally:
        head.train(was_training)
    n = batch.num_actors
    for name, value in rows.items():
        if value.shape[0] != n:
            raise ValueError(
                f"{type(head).__name__} gave {value.shape[0]} rows of {kind}/{name} for {n} actors"
            )
    return {name: value.detach().float().contiguous() for name, value in rows.items()}


def bank_window(batch: ActorBatch, arrays: dict[str, int], owner: str) -> dict[str, Tensor]:
    """Check ``batch.bank`` for a stage-2 head and return it with ``mask`` made boolean.

    Args:
        batch: B keyframes; ``batch.bank`` holds per-keyframe windows of L entries.
        arrays: kind arrays the head reads and their number of trailing dims, e.g.
            ``{"features": 1}`` ([B, L, D]) or ``{"maps": 3}`` ([B, L, d, H, W]).
        owner: the head's class name, for the error messages.

    Returns:
        ``{"mask": Bool[B, L], "dt": [B, L], "track": Long[B, L], "current": Bool[B, L],
        **arrays}`` (``dt`` zeros, ``track`` -1 and ``current`` False when the reader gave
        none); L = 0 is widened to one padding entry.
    """
    bank = batch.bank
    b = batch.num_keyframes
    missing = [k for k in ("mask", *arrays) if k not in bank]
    if missing:
        raise ValueError(
            f"{owner} reads the bank window {sorted(('mask', *arrays))} from batch.bank, "
            f"but {missing} are missing (got {sorted(bank)}): train it with a bank of its "
            "kind (BANK_KIND)"
        )
    mask = bank["mask"]
    if mask.dim() != 2 or mask.shape[0] != b:
        raise ValueError(f"{owner}: bank mask must be [B={b}, L], got {tuple(mask.shape)}")
    length = mask.shape[1]
    out = {"mask": mask.bool()}
    for name, trailing in arrays.items():
        value = bank[name]
        if value.dim() != 2 + trailing or tuple(value.shape[:2]) != (b, length):
            raise ValueError(
                f"{owner}: bank {name!r} must be [B={b}, L={length}] + {trailing} feature "
                f"dims, got {tuple(value.shape)}"
            )
        out[name] = value
    defaults = (("dt", 0.0, torch.float32), ("track", -1, torch.long), ("current", 0, torch.bool))
    for name, fill, dtype in defaults:
        given = bank.get(name)
        if given is None:
            given = torch.full((b, length), fill, dtype=dtype, device=mask.device)
        elif tuple(given.shape) != (b, length):
            raise ValueError(
                f"{owner}: bank {name!r} must be [B={b}, L={length}], got {tuple(given.shape)}"
            )
        out[name] = given.to(dtype)
    if length == 0:
        # A batch whose windows are all empty: one padding entry, so every reduction over
        # the entries has something to reduce (masked out like any padding).
        out = {k: torch.cat([v, v.new_zeros(b, 1, *v.shape[2:])], dim=1) for k, v in out.items()}
        out["track"] = out["track"] - 1
    return out


__all__ = ["WINDOW_KEYS", "bank_rows", "bank_window"]
