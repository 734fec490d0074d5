"""ACAR-Net with its Actor-Context Feature Bank (ACAR §3.3, eq. 5, Fig. 3).

Stage 2 of ACAR: the current keyframe's first-order actor-context maps F^i (ACRN part of
the head, ``ACARHead.first_order``) are the HR2O *queries*; the keys and values come from the
first-order maps L^j archived by a separately trained stage-1 ACAR-Net for every actor of
every keyframe in the window [t - w, t + w] (``batch.bank["maps"]``, written by
``bank_rows(stage1_acar, "acfb", ...)``):

    Q^i = conv2D(F^i),   K^j, V^j = conv2D(L^j)                                   (eq. 5)

and the rest of the operator is HR2O as in the stage-1 head (eqs. 1-2, two blocks, d = 512,
norm, ReLU, conv, dropout 0.2, residual), followed by the same read-out. ``variant`` is the
stage-1 head's (``models.heads.acar``): ``"release"`` (default; ACAR-Net's released head,
GroupNorm, fc1 + fc2 read-out; ACAR-Net released no ACFB code, so the bank attention is
bankflow's, built from the release's blocks) or ``"paper"``.

Choices where the paper is vague, with reasons:

- "The self-attention mechanism is replaced with the attention between current and
  long-term" features: there is no separate self-attention among the current actors. The
  window includes t itself (the paper's [t - w, t + w]), so the current actors relate to
  each other through their own archived maps L; the window reader must include the
  current keyframe (its default for ACFB), and the window is 2w + 1 = 21 s (§4.3).
- Stacked blocks update the queries while the bank keys/values stay L^j (what
  ``ACARHead.hr2o`` does: the bank is never rewritten, as in LFB's FBO).
- A keyframe whose window is empty (all-False mask) keeps F'^i = F^i (``hr2o`` adds
  nothing without a key), so the head degrades to ACRN, never to NaN.
- The bank maps must have the current maps' d x H x W: the archived maps come from the
  same feature store (same context size) and an ACAR head of the same width (``dim``
  defaults to ``bank_dim`` when only that is given, else d = 512).
- ``init_from_stage1`` loads a stage-1 ``ACARHead`` state (all of it) or an ``ACRNHead``
  state (encoder and classifier; HR2O keeps its fresh initialisation), the "fine-tune"
  strategy of the AVA-Kinetics report's Table 2; without it the head starts afresh.

``HeadOutput.features``: the stage-1 head's (``read_out``); ``attention["hr2o"]``: Tensor[B,
layers, Nmax, L, H, W], each block's weights over the window's entries (0 at padding).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from models.heads.acar import ACARHead, Variant
from models.heads.bank_features import bank_window
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head
from models.heads.ragged import pad_actors, unpad_actors


class ACARACFBHead(Head):
    """Current first-order maps query the ACFB window through HR2O -> pooled -> FC.

    Reads ``batch.context`` [B, C, H, W], ``batch.pooled`` [N, C], ``batch.batch_index`` and
    ``batch.bank``: ``mask`` [B, L], ``maps`` [B, L, dim, H, W].
    """

    BANK_KIND = "acfb"
    reads: frozenset[str] | None = frozenset({"context", "pooled"})

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        reduce_dim: int = 1024,
        dim: int | None = None,
        bank_dim: int | None = None,
        num_layers: int = 2,
        kernel_size: int = 3,
        hr2o_dropout: float = 0.2,
        dropout: float | None = None,
        variant: Variant = "release",
    ) -> None:
        super().__init__()
        if dim is None:
            dim = 512 if bank_dim is None else bank_dim
        if bank_dim is not None and bank_dim != dim:
            raise ValueError(
                f"ACFB maps are the stage-1 ACAR's F^i: bank_dim ({bank_dim}) must equal "
                f"dim ({dim})"
            )
        self.dim = dim
        self.acar = ACARHead(
            in_channels=in_channels,
            num_classes=num_classes,
            reduce_dim=reduce_dim,
            dim=dim,
            hr2o="nl",
            num_layers=num_layers,
            kernel_size=kernel_size,
            hr2o_dropout=hr2o_dropout,
            dropout=dropout,
            variant=variant,
        )
        self.reads = self.acar.reads

    # Read-only: the wrapped head's classifier (Head declares it as a plain attribute).
    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        """The final classifier (the wrapped ACAR's): what cRT re-trains."""
        return self.acar.classifier

    def init_from_stage1(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Start from a stage-1 ACAR (or ACRN) head's weights; returns the keys left fresh."""
        missing, unexpected = self.acar.load_state_dict(dict(state_dict), strict=False)
        if unexpected or any(not key.startswith("reasoning.") for key in missing):
            raise ValueError(
                "init_from_stage1 expects a stage-1 ACARHead or ACRNHead state_dict of the "
                f"same sizes; missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        return sorted(missing)

    def forward(self, batch: ActorBatch) -> HeadOutput:
        window = bank_window(batch, {"maps": 3}, type(self).__name__)
        actor, _, maps = self.acar.actor_and_maps(batch)  # maps (N, d, H', W')
        bank = window["maps"]  # (B, L, d, H, W)
        if tuple(bank.shape[2:]) != (self.dim, *maps.shape[2:]):
            raise ValueError(
                f"ACARACFBHead: bank maps {tuple(bank.shape)} must be [B, L, {self.dim}, "
                f"{maps.shape[2]}, {maps.shape[3]}] like the current first-order maps"
            )
        query, mask = pad_actors(maps, batch.batch_index, batch.num_keyframes)  # (B, A, d, H, W)
        refined, att = self.acar.hr2o(query, bank.to(query.dtype), window["mask"])
        refined = unpad_actors(refined, mask)  # (N, d, H', W')
        logits, feats = self.acar.read_out(actor, refined)
        return HeadOutput(logits=logits, attention={"hr2o": att.detach()}, features=feats)
