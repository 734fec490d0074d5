"""ACRN: first-order actor-context relation maps (ACAR-Net §3.2, after Sun et al. 2018).

Two variants: ``"mmaction2"`` (default) is MMAction2's released ACRN and AVA bbox head,
which loads its checkpoints (:mod:`models.heads.acrn_mmaction2` lists how it differs
from the reading below); ``"paper"`` is bankflow's reading of ACAR §3.2, kept because
the ACAR ``variant="paper"`` head shares its encoder (``ActorContextRelation``).

Every actor feature A^i [C] is tiled over the H x W locations of the keyframe's context
map X [C, H, W], concatenated with it and convolved into a relation map F^i [d, H, W]
that says, per location, how the actor relates to that piece of the scene.

Choices where ACAR §3.2 / §4.1 are vague:
- Both inputs are first reduced to ``reduce_dim`` channels (1x1 conv for X, a linear layer
  for A^i, the same map on a vector) so the concatenation is 2 * reduce_dim wide rather
  than 2C = 4608 on SlowFast res5; default 1024.
- "Applying convolutions": a 1x1 conv (2 * reduce_dim -> d) + ReLU, then a 3x3 conv
  (d -> d, padding 1 so F^i keeps X's H x W layout that HR2O attends over) + ReLU; d = 512
  as for all ACAR feature maps. The 1x1 conv on the concatenation is computed as
  ``W_a A^i + W_x X`` (it is linear), so the tiled [N, 2r, H, W] tensor is never built.
- Classifier input (``features``): the reduced actor feature concatenated with the
  spatial average of F^i, [N, reduce_dim + d]: ACRN keeps the actor's own appearance next
  to its relation features; dropout 0.5 before the single FC (SlowFast-Det).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from models.heads.acrn_mmaction2 import MMAction2ACRN, mmaction2_acrn_state
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head
from models.heads.position import ActorPosition, check_actor_position


class ActorContextRelation(nn.Module):
    """The first-order relation encoder shared by ACRN and ACAR (Fig. 2, "ACAR-Net*")."""

    def __init__(self, *, in_channels: int, reduce_dim: int = 1024, dim: int = 512) -> None:
        super().__init__()
        self.reduce_context = nn.Conv2d(in_channels, reduce_dim, kernel_size=1)
        self.reduce_actor = nn.Linear(in_channels, reduce_dim)
        # The 1x1 conv over [A^i tiled, X], split into its actor and context halves.
        self.relate_actor = nn.Linear(reduce_dim, dim, bias=False)
        self.relate_context = nn.Conv2d(reduce_dim, dim, kernel_size=1)
        self.refine = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=False)

    def reduce(self, batch: ActorBatch) -> tuple[Tensor, Tensor]:
        """(actor Tensor[N, reduce_dim], context Tensor[B, reduce_dim, H, W])."""
        if batch.pooled.shape[0] != batch.batch_index.shape[0]:
            raise ValueError(
                f"pooled has {batch.pooled.shape[0]} actors but batch_index has "
                f"{batch.batch_index.shape[0]}"
            )
        return self.reduce_actor(batch.pooled), self.reduce_context(batch.context)

    def relate(self, actor: Tensor, context: Tensor, batch_index: Tensor) -> Tensor:
        """F^i = ReLU(conv3x3(ReLU(conv1x1([A^i tiled, X_b(i)])))): Tensor[N, d, H, W]."""
        ctx = self.relate_context(context)[batch_index.long()]  # [N, d, H, W]
        act = self.relate_actor(actor)[:, :, None, None]  # [N, d, 1, 1], tiled by broadcast
        return self.relu(self.refine(self.relu(ctx + act)))

    def forward(self, batch: ActorBatch) -> Tensor:
        actor, context = self.reduce(batch)
        return self.relate(actor, context, batch.batch_index)


class ACRNHead(Head):
    """Actor-centric relation head: classify each actor from its first-order relation map.

    ``variant="mmaction2"`` (default): MMAction2's ACRN and AVA bbox head
    (:mod:`models.heads.acrn_mmaction2`), which loads its checkpoints
    (:meth:`load_mmaction2`); ``features`` = spatial max of the map, Tensor[N, dim];
    ``dim`` defaults to ``in_channels`` (its AVA config: 2 x 2304 -> 2304).
    ``variant="paper"``: the reading above; ``features`` = Tensor[N, reduce_dim + dim].

    ``actor_position="box_mask"`` (mmaction2 variant; default ``"none"`` as released):
    the actor's box as one more input channel of the first 1x1 conv
    (:mod:`models.heads.position`), so F^i knows which cells are actor i's.
    """

    # The feature-store arrays this head reads (the trainer reads nothing else).
    reads = frozenset({"context", "pooled"})
    # ACFB: its first-order actor-context maps F^i (models/heads/bank_features.py).
    BANK_SOURCES = ("lfb", "acfb")

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        reduce_dim: int | None = None,
        dim: int | None = None,
        dropout: float = 0.5,
        variant: Literal["mmaction2", "paper"] = "mmaction2",
        stride: int = 1,
        num_convs: int = 1,
        actor_position: ActorPosition = "none",
    ) -> None:
        super().__init__()
        if variant not in ("mmaction2", "paper"):
            raise ValueError(f"variant must be 'mmaction2' or 'paper', got {variant!r}")
        check_actor_position(actor_position, "ACRNHead")
        if actor_position != "none" and variant != "mmaction2":
            raise ValueError("ACRNHead: actor_position is an option of variant='mmaction2'")
        self.variant = variant
        self.dropout = nn.Dropout(dropout)
        self.encoder: MMAction2ACRN | ActorContextRelation
        if variant == "mmaction2":
            if reduce_dim is not None:
                raise ValueError(
                    "MMAction2's ACRN has no reduce step: leave out reduce_dim, or use "
                    "variant='paper'"
                )
            dim = in_channels if dim is None else dim
            self.encoder = MMAction2ACRN(
                in_channels=in_channels,
                dim=dim,
                stride=stride,
                num_convs=num_convs,
                box_mask=actor_position == "box_mask",
            )
            self.classifier = nn.Linear(dim, num_classes)
            return
        reduce_dim, dim = reduce_dim or 1024, dim or 512
        self.encoder = ActorContextRelation(in_channels=in_channels, reduce_dim=reduce_dim, dim=dim)
        self.classifier = nn.Linear(reduce_dim + dim, num_classes)

    def bank_rows(self, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
        if kind == "acfb":
            return {"maps": self.first_order(batch)}
        return super().bank_rows(kind, batch)

    def first_order(self, batch: ActorBatch) -> Tensor:
        """First-order relation maps F^i: Tensor[N, dim, H, W] (what the ACFB bank stores)."""
        if self.variant == "mmaction2":
            return self.encoder(batch.pooled, batch.context, batch.batch_index, batch.boxes)
        return self.encoder(batch)

    def load_mmaction2(
        self, state: Mapping[str, Tensor], *, class_index: Sequence[int] | None = None
    ) -> dict[str, Tensor]:
        """Load an MMAction2 ACRN detector's ``state_dict`` (shared head and ``fc_cls``)
        strictly; returns the other keys (the backbone's)."""
        if self.variant != "mmaction2":
            raise ValueError("MMAction2 ACRN checkpoints load into variant='mmaction2' heads")
        head, rest = mmaction2_acrn_state(state, class_index=class_index)
        self.load_state_dict(head, strict=True)
        return rest

    def forward(self, batch: ActorBatch) -> HeadOutput:
        if self.variant == "mmaction2":
            maps = self.first_order(batch)  # [N, d, H, W]
            feats = maps.amax(dim=(2, 3))  # BBoxHeadAVA's spatial max
        else:
            assert isinstance(self.encoder, ActorContextRelation)  # variant 'paper'
            actor, context = self.encoder.reduce(batch)
            maps = self.encoder.relate(actor, context, batch.batch_index)  # [N, d, H, W]
            feats = torch.cat([actor, maps.mean(dim=(2, 3))], dim=1)  # [N, r + d]
        logits = self.classifier(self.dropout(feats))
        return HeadOutput(logits=logits, features=feats)
