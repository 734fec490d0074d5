"""What a trained stage-1 head gives a long-term bank, and how stage-2 heads read it back.

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

import torch
from torch import Tensor, nn

from models.heads.acar import ACARHead
from models.heads.acrn import ACRNHead
from models.heads.amcr import AMCRHead
from models.heads.batch import ActorBatch
from models.heads.igmn_dam import IGMNDAMHead
from models.heads.relation_transformer import RelationTransformerHead

BANK_KINDS = ("lfb", "acfb", "hrafb", "memory", "identity")

# The tensors every window carries besides the kind's arrays.
WINDOW_KEYS = ("mask", "dt", "track", "current")


def _needs(head: nn.Module, kind: str, types: tuple[type, ...], what: str) -> None:
    if not isinstance(head, types):
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(f"bank kind {kind!r} needs {what} ({names}); got {type(head).__name__}")


def _rows(head: nn.Module, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
    if kind == "lfb":
        out = head(batch)
        if out.features is None:
            raise ValueError(
                f"bank kind 'lfb' stores HeadOutput.features, which {type(head).__name__} "
                "leaves empty"
            )
        return {"features": out.features}
    if kind == "acfb":
        _needs(head, kind, (ACARHead, ACRNHead), "first-order actor-context maps")
        return {"maps": head.first_order(batch)}
    if kind == "hrafb":
        _needs(head, kind, (AMCRHead,), "AMCRNet's BHOI interaction feature")
        interaction, _ = head.interaction(batch)
        return {"interaction": interaction, "movement": batch.pooled}
    if kind == "memory":
        _needs(head, kind, (RelationTransformerHead,), "an S-only/T-only relation head")
        return {"features": head.memory_features(batch)}
    if kind == "identity":
        _needs(head, kind, (IGMNDAMHead,), "IGMN's DAM head")
        return {"features": head.node_features(batch)}
    raise ValueError(f"unknown bank kind {kind!r}; expected one of {BANK_KINDS}")


def bank_rows(head: nn.Module, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
    """The bank arrays of ``kind`` for every actor of ``batch`` (table in the module doc).

    The head runs in eval mode without gradients (dropout off, so a dump is deterministic);
    its previous mode is restored. Returns float tensors whose first axis is the N actors.

    Raises:
        ValueError: unknown ``kind``, or a head that cannot produce it (names the class).
    """
    if kind not in BANK_KINDS:
        raise ValueError(f"unknown bank kind {kind!r}; expected one of {BANK_KINDS}")
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            rows = _rows(head, kind, batch)
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
        value = bank.get(name)
        if value is None:
            value = torch.full((b, length), fill, dtype=dtype, device=mask.device)
        elif tuple(value.shape) != (b, length):
            raise ValueError(
                f"{owner}: bank {name!r} must be [B={b}, L={length}], got {tuple(value.shape)}"
            )
        out[name] = value.to(dtype)
    if length == 0:
        # A batch whose windows are all empty: one padding entry, so every reduction over
        # the entries has something to reduce (masked out like any padding).
        out = {k: torch.cat([v, v.new_zeros(b, 1, *v.shape[2:])], dim=1) for k, v in out.items()}
        out["track"] = out["track"] - 1
    return out


__all__ = ["BANK_KINDS", "WINDOW_KEYS", "bank_rows", "bank_window"]
