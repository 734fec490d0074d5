"""AMCRNet with its History Feature Bank and Interaction Module (AMCRNet §3.3, eq. 6).

The short-term AMCR head (PosNet, multi-scale context, BHOI; ``models/heads/amcr.py``,
without its classifier) gives every current actor its high-order interaction feature H;
its movement feature A is the RoIAlign actor feature (``batch.pooled``). The HR-AFB bank
window (``batch.bank["interaction"]`` F and ``["movement"]`` M, [B, L, .], written by
``bank_rows(stage1_amcr, "hrafb", ...)``) holds the same two features of the actors of the
2W clips around t. Two history BHOI submodules then relate, per keyframe,

    Q, K, V = proj({H, F} + temporal_pos),  Attn = softmax(QK^T / sqrt(C) + HMask)   (eq. 6)

over the sequence [current actors ; bank entries] (HMask: padding, i.e. padded actor slots
and padded bank entries are never keys), giving O for every current actor; the movement
branch does the same with {A, M} and gives P. ``concat(O, P)`` -> dropout -> FC classifies.

Choices where the paper is vague, with reasons:

- temporal_pos: a learned embedding per clip offset round(dt / ``clip_seconds``) in
  [-W, W] (W = 7, 2W + 1 = 15 clips, Table 2e), dt = 0 for the current actors; one table
  per branch. Offsets beyond W are clamped (a wider window would share the edge rows).
- The "BHOI submodule" is ``history_layers`` = 2 pre-norm MHSA blocks of the stage-1 BHOI
  kind (8 heads, the head's MLP ratio, final LayerNorm): the paper gives no depth, and a
  submodule on top of the 6-block BHOI suggests a shallow one.
- Movement features are C wide (2304 on SlowFast); a linear layer (shared by current and
  bank movement, which live in the same space) maps them to ``hidden_dim`` first so the
  branch has the same width and head count as the interaction branch.
- Bank interaction features narrower or wider than ``hidden_dim`` (another stage-1 width)
  get a linear projection; by default they are the same width and used as they are.
- The window excludes the current clip (2W clips, "before and after the current one");
  its actors are the live H and A. An empty window reduces both branches to relations
  among the current actors (no NaN).
- Fusion is concatenation of O and P (the paper: the two are "fused"; concatenation keeps
  both and lets the classifier weigh them), dropout 0.5 as the stage-1 head.
- ``init_from_stage1`` loads the stage-1 AMCR state (its classifier is not part of this
  head); the history modules start fresh.

``HeadOutput.features``: Tensor[N, 2 * hidden_dim] = [O, P]; ``attention["history"]``:
Tensor[N, A + L], the last interaction block's head-averaged weights of each actor over the
keyframe's actor slots then its bank entries (0 at padding); ``attention["bhoi"]`` as AMCR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.heads.amcr import AMCRHead
from models.heads.bank_features import bank_window
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head
from models.heads.position import TokenActorPosition
from models.heads.ragged import pad_actors, unpad_actors
from models.heads.relation_transformer import RelationEncoderLayer, attendable


class HistoryInteraction(nn.Module):
    """One branch of eq. 6: [current ; bank] tokens + temporal positions -> MHSA blocks."""

    def __init__(
        self,
        *,
        dim: int,
        window: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.window = window
        self.temporal_pos = nn.Parameter(torch.zeros(2 * window + 1, dim))
        nn.init.trunc_normal_(self.temporal_pos, std=0.02)
        self.blocks = nn.ModuleList(
            RelationEncoderLayer(
                dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, current: Tensor, actor_mask: Tensor, bank: Tensor, offsets: Tensor, bank_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """current [B, A, D], actor_mask Bool[B, A], bank [B, L, D], offsets Long[B, L] clip
        offsets of the entries, bank_mask Bool[B, L] -> (O [B, A, D], weights [B, A, A + L])."""
        a = current.shape[1]
        index = offsets.clamp(-self.window, self.window) + self.window
        x = torch.cat(
            [current + self.temporal_pos[self.window], bank + self.temporal_pos[index]], dim=1
        )
        ignore = attendable(torch.cat([actor_mask, bank_mask], dim=1))  # HMask
        weights = x.new_zeros(x.shape[0], x.shape[1], x.shape[1])
        for block in self.blocks:
            x, weights = block(x, ignore)
        return self.norm(x[:, :a]), weights[:, :a]


class AMCRHAFBHead(Head):
    """AMCR short-term interaction + HR-AFB history interaction and movement -> FC.

    Reads ``batch.context``, ``batch.pooled``, ``batch.boxes``, ``batch.batch_index`` and
    ``batch.bank``: ``mask`` [B, L], ``dt`` [B, L] (seconds), ``interaction``
    [B, L, interaction_dim], ``movement`` [B, L, movement_dim].
    """

    BANK_KIND = "hrafb"
    reads = frozenset({"context", "pooled"})

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 1280,
        num_layers: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        context_scales: Sequence[int] = (3, 5, 7),
        posnet_widths: Sequence[int] = (2, 2, 2, 2, 4, 16),
        pos_input_size: tuple[int, int] = (16, 22),
        roi_size: int = 7,
        dropout: float = 0.0,
        classifier_dropout: float = 0.5,
        interaction_dim: int | None = None,
        movement_dim: int | None = None,
        window: int = 7,
        clip_seconds: float = 1.0,
        history_layers: int = 2,
        actor_position: TokenActorPosition = "none",
    ) -> None:
        super().__init__()
        if history_layers < 1:
            raise ValueError(f"history_layers must be >= 1, got {history_layers}")
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        self.amcr = AMCRHead(
            in_channels=in_channels,
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            context_scales=context_scales,
            posnet_widths=posnet_widths,
            pos_input_size=pos_input_size,
            roi_size=roi_size,
            dropout=dropout,
            actor_position=actor_position,
        )
        # The short-term part only: this head classifies [O, P] with its own layer.
        del self.amcr.classifier, self.amcr.dropout
        self.clip_seconds = clip_seconds
        self.interaction_dim = hidden_dim if interaction_dim is None else interaction_dim
        self.movement_dim = in_channels if movement_dim is None else movement_dim
        self.bank_interaction_in: nn.Module = (
            nn.Identity()
            if self.interaction_dim == hidden_dim
            else nn.Linear(self.interaction_dim, hidden_dim)
        )
        self.movement_in = nn.Linear(in_channels, hidden_dim)
        self.bank_movement_in: nn.Module | None = (
            None if self.movement_dim == in_channels else nn.Linear(self.movement_dim, hidden_dim)
        )
        branch: dict[str, Any] = {
            "dim": hidden_dim,
            "window": window,
            "num_layers": history_layers,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
        }
        self.history = HistoryInteraction(**branch)
        self.movement = HistoryInteraction(**branch)
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(2 * hidden_dim, num_classes)

    def init_from_stage1(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Start the short-term part from a stage-1 AMCR head; returns the keys left fresh."""
        state = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        self.amcr.load_state_dict(state)
        return sorted(k for k in self.state_dict() if not k.startswith("amcr."))

    def forward(self, batch: ActorBatch) -> HeadOutput:
        window = bank_window(batch, {"interaction": 1, "movement": 1}, type(self).__name__)
        for name, dim in (("interaction", self.interaction_dim), ("movement", self.movement_dim)):
            if window[name].shape[-1] != dim:
                raise ValueError(
                    f"AMCRHAFBHead({name}_dim={dim}) got bank {name} {tuple(window[name].shape)}"
                )
        h, to_context = self.amcr.interaction(batch)  # (N, D)
        b = batch.num_keyframes
        offsets = torch.round(window["dt"] / self.clip_seconds).long()  # (B, L)
        bank_mask = window["mask"]

        current, actor_mask = pad_actors(h, batch.batch_index, b)  # (B, A, D)
        f = self.bank_interaction_in(window["interaction"].to(h.dtype))  # (B, L, D)
        o, weights = self.history(current, actor_mask, f, offsets, bank_mask)

        a_cur, _ = pad_actors(self.movement_in(batch.pooled), batch.batch_index, b)
        bank_movement = window["movement"].to(h.dtype)
        move_in = self.movement_in if self.bank_movement_in is None else self.bank_movement_in
        p, _ = self.movement(a_cur, actor_mask, move_in(bank_movement), offsets, bank_mask)

        feats = torch.cat([unpad_actors(o, actor_mask), unpad_actors(p, actor_mask)], dim=1)
        logits = self.classifier(self.dropout(feats))
        attention = {"history": unpad_actors(weights, actor_mask), "bhoi": to_context}
        return HeadOutput(logits=logits, attention=attention, features=feats)
