"""ACAR-Net head: first-order maps F^i -> HR2O actor-context-actor reasoning (ACAR §3.2-3.3).

Two variants. ``"release"`` (the default) is ACAR-Net's released code, which differs from
the paper's text in several places (listed, with both sources, in
:mod:`models.heads.acar_release`); it loads ACAR-Net checkpoints. ``"paper"`` is the
reading of the paper described below, kept for the ACFB experiments built on it.

HR2O relates two actors through the same scene location: at every (x, y) the query of
actor i attends over the keys of the actors j of the same keyframe (eq. 1), and the
result goes through LayerNorm, ReLU, conv, dropout and a residual (eq. 2). Two such
modified non-local blocks are stacked (Table 1e), all maps d = 512 wide.

Choices where the paper is vague (reasons given):
- Q/K/V and the output conv use ``kernel_size`` x ``kernel_size`` convolutions (default 3,
  padding keeps H x W): §3.2 says the convolutions aggregate local information and make
  the operator position sensitive, which a 1x1 conv would not.
- Attention is single-head with scale 1/sqrt(d) (eq. 1 has one Att^{i,j} per location).
- "norm" in eq. 2 is LayerNorm over the d channels at each location (LFB's FBO, which §3.2
  follows, uses LayerNorm per feature vector); dropout 0.2 as in LFB's FBO.
- Padding (other keyframes' actor counts) is masked out of the keys; a query with no valid
  key at all (an empty bank window) gets H^i = 0, so its F^i passes through unchanged.
- Long-term use (eq. 5): queries come from the current F^i, keys/values from the bank maps
  L^j. In the stacked blocks the queries are updated layer by layer while the bank keys and
  values stay L^j (like LFB's FBO, whose bank is never rewritten); in self mode keys/values
  are the current, updated maps.
- RN instantiation (eqs. 3-4, ``hr2o="rn"``): f_theta = 1x1 conv (3r -> d) + ReLU + 3x3 conv
  (d -> d) on [A^i, A^j, X_{x,y}] with the reduced actor and context features; the 1x1 conv
  is evaluated as a sum of its three linear parts so the N^2 triplet concatenation is never
  materialised. H^i averages over the N real actors j (including j = i, as eq. 4 sums over
  all j) and is added to F^i once; RN has no attention map.
- Classifier: the single FC of §3.2 on [reduced A^i, spatial mean of F'^i] after dropout
  0.5, the same read-out as ``ACRNHead`` so both heads differ only by HR2O.

``HeadOutput.attention["hr2o"]``: Tensor[B, L, Nmax, M, H, W], the eq. 1 weights of each of
the L blocks (query actor slot, key actor slot, location), detached; padded slots are 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from models.heads.acar_release import (
    ReleaseEncoder,
    ReleaseHR2O,
    acar_net_head_state,
    masked_actor_attention,
    split_acar_net_state,
)
from models.heads.acrn import ActorContextRelation
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Attention, Head
from models.heads.position import ActorPosition, check_actor_position
from models.heads.ragged import pad_actors, unpad_actors

HR2OKind = Literal["nl", "rn"]
Variant = Literal["release", "paper"]


def _conv_per_actor(conv: nn.Conv2d, maps: Tensor) -> Tensor:
    """Apply a 2-D conv to every actor map of Tensor[B, N, C, H, W]."""
    b, n = maps.shape[:2]
    out = conv(maps.flatten(0, 1))
    return out.view(b, n, *out.shape[1:])


class NonLocalBlock(nn.Module):
    """One modified non-local block (eqs. 1-2), queries and keys/values from any two sets."""

    def __init__(self, *, dim: int = 512, kernel_size: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.query = nn.Conv2d(dim, dim, kernel_size, padding=pad)
        self.key = nn.Conv2d(dim, dim, kernel_size, padding=pad)
        self.value = nn.Conv2d(dim, dim, kernel_size, padding=pad)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Conv2d(dim, dim, kernel_size, padding=pad)
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, query: Tensor, key_value: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """query [B, Nq, d, H, W], key_value [B, M, d, H, W], key_mask Bool[B, M].

        Returns (F' = F + H: [B, Nq, d, H, W], Att: [B, Nq, M, H, W]).
        """
        q = _conv_per_actor(self.query, query)
        k = _conv_per_actor(self.key, key_value)
        v = _conv_per_actor(self.value, key_value)
        h, att = masked_actor_attention(q, k, v, key_mask, self.scale)  # [B, Nq, d, H, W]
        h = self.norm(h.movedim(2, -1)).movedim(-1, 2).relu()
        h = self.dropout(_conv_per_actor(self.out, h))
        has_key = key_mask.any(dim=1)[:, None, None, None, None]
        return query + h * has_key, att


class HR2O(nn.Module):
    """Stacked modified non-local blocks: {H^i} = HR2O({F^i}[, {L^j}])."""

    def __init__(
        self, *, dim: int = 512, num_layers: int = 2, kernel_size: int = 3, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            NonLocalBlock(dim=dim, kernel_size=kernel_size, dropout=dropout)
            for _ in range(num_layers)
        )

    def forward(
        self, query: Tensor, key_value: Tensor | None, key_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """query [B, Nq, d, H, W]; key_value [B, M, d, H, W] or None (self-attention, then
        ``key_mask`` is the query mask [B, Nq]); key_mask Bool[B, M].

        Returns (maps [B, Nq, d, H, W], attention [B, L, Nq, M, H, W]).
        """
        atts = []
        x = query
        for block in self.blocks:
            x, att = block(x, x if key_value is None else key_value, key_mask)
            atts.append(att)
        return x, torch.stack(atts, dim=1)


class RelationNetworkHR2O(nn.Module):
    """HR2O as a relation network over (A^i, A^j, X_{x,y}) triplets (eqs. 3-4)."""

    def __init__(self, *, reduce_dim: int = 1024, dim: int = 512) -> None:
        super().__init__()
        # The 1x1 conv over [A^i, A^j, X] split into its three input blocks.
        self.first_i = nn.Linear(reduce_dim, dim, bias=False)
        self.first_j = nn.Linear(reduce_dim, dim, bias=False)
        self.first_x = nn.Conv2d(reduce_dim, dim, kernel_size=1)
        self.second = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, actor: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        """actor [B, N, r] (padded), context [B, r, H, W], mask Bool[B, N] -> H [B, N, d, H, W]."""
        b, n = actor.shape[:2]
        a_i = self.first_i(actor)[:, :, None, :, None, None]  # [B, N, 1, d, 1, 1]
        a_j = self.first_j(actor)[:, None, :, :, None, None]  # [B, 1, N, d, 1, 1]
        x = self.first_x(context)[:, None, None]  # [B, 1, 1, d, H, W]
        pairs = (a_i + a_j + x).relu()  # [B, N, N, d, H, W]
        rel = self.second(pairs.flatten(0, 2)).view(b, n, n, *pairs.shape[3:])
        weight = mask[:, None, :, None, None, None].to(rel.dtype)
        count = mask.sum(dim=1).clamp(min=1).to(rel.dtype)[:, None, None, None, None]
        return (rel * weight).sum(dim=2) / count  # eq. 4: mean over the real actors j


class ACARHead(Head):
    """ACAR-Net: first-order actor-context maps -> HR2O -> pooled -> classifier.

    ``variant="release"`` (default): ACAR-Net's released head, difference by difference
    listed in :mod:`models.heads.acar_release`; it loads ACAR-Net checkpoints
    (:meth:`load_acar_net`). ``features`` = [ReLU(fc1(A^i)), GAP(F'^i)]: Tensor[N, 2d].

    ``variant="paper"``: bankflow's reading of the paper (module docstring above;
    LayerNorm, biases, padded 3x3, no down-sampling, one FC on [reduced A^i, mean F'^i]
    after dropout 0.5, and the relation-network HR2O as an option).
    ``features`` = Tensor[N, reduce_dim + dim].

    ``actor_position="box_mask"`` (release variant; default ``"none"`` as released): the
    actor's box as one more input channel of the first-order 1x1 conv
    (:mod:`models.heads.position`), so F^i — and HR2O, which relates F^i and F^j location
    by location — knows which cells are actor i's.
    """

    # ACFB: its first-order actor-context maps F^i (models/heads/bank_features.py).
    BANK_SOURCES = ("lfb", "acfb")
    # Each actor's last HR2O weights over the other actors, per location (ACAR Fig. 5).
    ATTENTION = Attention(maps=("hr2o",), style="actor_pairs")

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        reduce_dim: int = 1024,
        dim: int = 512,
        hr2o: HR2OKind = "nl",
        num_layers: int = 2,
        kernel_size: int = 3,
        hr2o_dropout: float = 0.2,
        dropout: float | None = None,
        variant: Variant = "release",
        roi_size: int = 7,
        downsample: bool = True,
        actor_position: ActorPosition = "none",
    ) -> None:
        super().__init__()
        check_actor_position(actor_position, "ACARHead")
        if actor_position != "none" and variant != "release":
            raise ValueError("ACARHead: actor_position is an option of variant='release'")
        if hr2o not in ("nl", "rn"):
            raise ValueError(
                f"hr2o must be 'nl' (non-local) or 'rn' (relation network), got {hr2o!r}"
            )
        if variant not in ("release", "paper"):
            raise ValueError(f"variant must be 'release' or 'paper', got {variant!r}")
        if variant == "release" and hr2o != "nl":
            raise ValueError(
                "the released ACAR-Net has the non-local HR2O only: use "
                "hr2o='nl', or variant='paper' for the relation network"
            )
        self.kind: HR2OKind = hr2o
        self.variant: Variant = variant
        # The release reads only the context map (it RoIAligns actors on its reduction).
        self.reads = frozenset({"context"} if variant == "release" else {"context", "pooled"})
        self.encoder: ReleaseEncoder | ActorContextRelation
        self.reasoning: nn.Module
        if variant == "release":
            self.encoder = ReleaseEncoder(
                in_channels=in_channels,
                reduce_dim=reduce_dim,
                dim=dim,
                roi_size=roi_size,
                downsample=downsample,
                box_mask=actor_position == "box_mask",
            )
            self.reasoning = ReleaseHR2O(
                dim=dim, num_layers=num_layers, kernel_size=kernel_size, dropout=hr2o_dropout
            )
            self.fc1 = nn.Linear(reduce_dim, dim, bias=False)
            self.dropout = nn.Dropout(0.0 if dropout is None else dropout)
            self.classifier = nn.Linear(2 * dim, num_classes, bias=False)
            return
        self.encoder = ActorContextRelation(in_channels=in_channels, reduce_dim=reduce_dim, dim=dim)
        if hr2o == "nl":
            self.reasoning = HR2O(
                dim=dim, num_layers=num_layers, kernel_size=kernel_size, dropout=hr2o_dropout
            )
        else:
            self.reasoning = RelationNetworkHR2O(reduce_dim=reduce_dim, dim=dim)
        self.dropout = nn.Dropout(0.5 if dropout is None else dropout)
        self.classifier = nn.Linear(reduce_dim + dim, num_classes)

    def actor_and_maps(self, batch: ActorBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(actor vectors [N, r], reduced context [B, r, H, W], first-order maps F^i
        [N, d, H', W']) — H' x W' = H x W in the paper variant, else the release's
        unpadded 3x3 conv and stride-2 pool of it."""
        if self.variant == "release":
            assert isinstance(self.encoder, ReleaseEncoder)
            actor, context = self.encoder.reduce(batch.context, batch.boxes, batch.batch_index)
            maps = self.encoder.relate(actor, context, batch.batch_index, batch.boxes)
            return actor, context, maps
        assert isinstance(self.encoder, ActorContextRelation)
        actor, context = self.encoder.reduce(batch)
        return actor, context, self.encoder.relate(actor, context, batch.batch_index)

    def bank_rows(self, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
        if kind == "acfb":
            return {"maps": self.first_order(batch)}
        return super().bank_rows(kind, batch)

    def first_order(self, batch: ActorBatch) -> Tensor:
        """First-order relation maps F^i: Tensor[N, dim, H', W'] (what the ACFB bank stores)."""
        return self.actor_and_maps(batch)[2]

    def read_out(self, actor: Tensor, refined: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [N, K], features) from actor vectors [N, r] and HR2O maps [N, d, H', W']."""
        pooled_maps = refined.mean(dim=(2, 3))
        if self.variant == "release":
            feats = torch.cat([self.fc1(actor).relu(), pooled_maps], dim=1)  # [N, 2d]
        else:
            feats = torch.cat([actor, pooled_maps], dim=1)  # [N, r + d]
        return self.classifier(self.dropout(feats)), feats

    def load_acar_net(
        self, state: Mapping[str, Tensor], backbone: nn.Module | None = None
    ) -> dict[str, dict[str, Tensor]]:
        """Load an ACAR-Net checkpoint's ``state_dict`` (backbone, neck and head in one dict,
        see :func:`models.heads.acar_release.split_acar_net_state`), strictly.

        The head part loads here. ACAR-Net's neck (``BasicNeck``) has no tensors; a neck
        part that has some is refused. With ``backbone`` (a
        :class:`~models.backbones.SlowFast` built with the checkpoint's architecture, e.g.
        ``build_backbone("slowfast_r50", source_config="acar-net/SLOWFAST_R50_ACAR_HR2O")``)
        the backbone part loads into it through the backbone loader (ACAR-Net naming,
        :func:`models.backbones.naming.acar_net_name`), strictly as well; the same file
        also loads as ``extract.weights`` / ``build_backbone(weights=...)``.

        Returns the parts split by name (``backbone`` with ACAR-Net's own names).
        """
        if self.variant != "release":
            raise ValueError("ACAR-Net checkpoints load into variant='release' heads")
        parts = split_acar_net_state(state)
        if parts["neck"]:
            raise ValueError(
                "ACAR-Net state has neck tensors (e.g. "
                f"{next(iter(parts['neck']))!r}); its released BasicNeck has none"
            )
        self.load_state_dict(acar_net_head_state(parts["head"]), strict=True)
        if backbone is not None:
            from models.backbones.checkpoint import load_slowfast_checkpoint

            whole = {f"backbone.module.{k}": v for k, v in parts["backbone"].items()}
            load_slowfast_checkpoint(backbone, whole, strict=True)
        return parts

    def hr2o(
        self, query_maps: Tensor, key_value_maps: Tensor | None, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Non-local HR2O on padded maps, for stage-2 heads reading an ACFB bank (eq. 5).

        Args:
            query_maps: Tensor[B, Nq, d, H, W], current first-order maps F^i.
            key_value_maps: Tensor[B, M, d, H, W], bank maps L^j, or None for self-attention.
            mask: Bool[B, M] real key/value slots (Bool[B, Nq] when ``key_value_maps`` is None).

        Returns:
            (maps F'^i Tensor[B, Nq, d, H, W], attention Tensor[B, L, Nq, M, H, W]).
        """
        if not isinstance(self.reasoning, HR2O | ReleaseHR2O):
            raise ValueError(
                "hr2o(query, key/value, mask) needs the non-local instantiation (hr2o='nl'); "
                "the relation-network one (eqs. 3-4) reads actor vectors, not maps"
            )
        kv = query_maps if key_value_maps is None else key_value_maps
        if kv.shape[:2] != mask.shape:
            raise ValueError(
                f"mask {tuple(mask.shape)} must match the key/value slots {tuple(kv.shape[:2])}"
            )
        return self.reasoning(query_maps, key_value_maps, mask)

    def forward(self, batch: ActorBatch) -> HeadOutput:
        actor, context, maps = self.actor_and_maps(batch)  # maps [N, d, H', W']
        padded, mask = pad_actors(maps, batch.batch_index, batch.num_keyframes)
        attention: dict[str, Tensor] = {}
        if isinstance(self.reasoning, HR2O | ReleaseHR2O):
            padded, att = self.reasoning(padded, None, mask)
            attention["hr2o"] = att.detach()
        else:
            actor_padded, _ = pad_actors(actor, batch.batch_index, batch.num_keyframes)
            padded = padded + self.reasoning(actor_padded, context, mask)
        refined = unpad_actors(padded, mask)  # [N, d, H', W']
        logits, feats = self.read_out(actor, refined)
        return HeadOutput(logits=logits, attention=attention, features=feats)
