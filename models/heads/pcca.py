"""PCCA: person-context cross attention (Ning et al., MultiSports 2021 report, §2.2).

Each actor's pooled feature A_i is the single query token; its context is an h x w
RoIAlign (9 x 9) of the keyframe map V over the actor box enlarged x2 about its centre.
D = 3 post-norm cross-attention layers (8 heads, d = 1024), eqs. 1-3:
    Q^0 = A_i;  X^j = LN(MultiHead(Q^{j-1}, C_i, C_i) + Q^{j-1});  Q^j = LN(FFN(X^j) + X^j)
The context tokens C_i are the same in every layer (only the query is refined).

Context RoIAlign: the enlarged box (centre kept, width and height x ``box_scale``, clipped
to the image [0, 1]) is scaled by (W, H) into feature-map coordinates and pooled with
``torchvision.ops.roi_align(spatial_scale=1.0, aligned=True)`` — aligned=True because the
map covers the continuous range [0, W] x [0, H] with cell centres at +0.5.

Choices where the report is vague (reasons given):
- A_i [C] and the C-wide context tokens are linearly projected to d before layer 1 (the
  report's "projection dimension is 1024"); the tokens are projected once, never updated.
- Learned position embeddings are added to the h*w context tokens (``position_embedding``):
  attention alone is blind to token order, and where a token lies relative to the person
  (centre vs. surroundings of the x2 box) is what the enlarged window is for.
- FFN hidden width 4d with ReLU and dropout 0.1, the Transformer defaults the report cites
  ([15]); dropout 0.5 before the linear classifier, as in the SlowFast-Det baseline.
- ``features`` = Q^D [N, d]; ``attention["pcca"]`` = Tensor[N, D, heads, h, w], the per-head
  attention of each actor's query over its context window in every layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head
from models.heads.ops import roi_align


def enlarged_box_rois(
    boxes: Tensor, batch_index: Tensor, height: int, width: int, scale: float
) -> Tensor:
    """RoIs Tensor[N, 5] (keyframe, x1, y1, x2, y2 in feature-map cells) of boxes x ``scale``.

    ``boxes`` are normalized [N, 4]; the enlarged box keeps the centre and is clipped to
    the image before scaling by (W, H).
    """
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    big = torch.cat([centre - half, centre + half], dim=1).clamp(0.0, 1.0)
    size = boxes.new_tensor([width, height, width, height])
    return torch.cat([batch_index.to(boxes.dtype)[:, None], big * size], dim=1)


class CrossAttentionLayer(nn.Module):
    """One post-norm layer of eqs. 2-3: query [N, 1, d] attends to context [N, T, d]."""

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, query: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (Q^j [N, 1, d], attention weights [N, heads, 1, T])."""
        attended, weights = self.attn(
            query, context, context, need_weights=True, average_attn_weights=False
        )
        x = self.norm1(self.drop1(attended) + query)  # eq. 2
        return self.norm2(self.drop2(self.ffn(x)) + x), weights  # eq. 3


class PCCAHead(Head):
    """Person-context cross-attention transformer head (reads ``context``, ``pooled``, ``boxes``)."""

    # The feature-store arrays this head reads (the trainer reads nothing else).
    reads = frozenset({"context", "pooled"})

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        dim: int = 1024,
        num_layers: int = 3,
        num_heads: int = 8,
        ffn_dim: int | None = None,
        context_size: int = 9,
        box_scale: float = 2.0,
        position_embedding: bool = True,
        attn_dropout: float = 0.1,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if box_scale <= 0:
            raise ValueError(f"box_scale must be positive, got {box_scale}")
        self.context_size = context_size
        self.box_scale = box_scale
        self.query_proj = nn.Linear(in_channels, dim)
        self.context_proj = nn.Linear(in_channels, dim)
        self.position = (
            nn.Parameter(torch.randn(context_size * context_size, dim) * 0.02)
            if position_embedding
            else None
        )
        self.layers = nn.ModuleList(
            CrossAttentionLayer(
                dim=dim, num_heads=num_heads, ffn_dim=ffn_dim or 4 * dim, dropout=attn_dropout
            )
            for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def context_tokens(self, batch: ActorBatch) -> Tensor:
        """C_i: Tensor[N, h*w, C], RoIAlign of each actor's enlarged box on ``batch.context``."""
        _, _, height, width = batch.context.shape
        rois = enlarged_box_rois(batch.boxes, batch.batch_index, height, width, self.box_scale)
        pooled = roi_align(
            batch.context,
            rois.to(batch.context.dtype),
            output_size=self.context_size,
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )  # [N, C, h, w]
        return pooled.flatten(2).transpose(1, 2)

    def forward(self, batch: ActorBatch) -> HeadOutput:
        context = self.context_proj(self.context_tokens(batch))  # [N, h*w, d]
        if self.position is not None:
            context = context + self.position
        query = self.query_proj(batch.pooled)[:, None]  # [N, 1, d], eq. 1
        maps = []
        for layer in self.layers:
            query, weights = layer(query, context)
            maps.append(weights[:, :, 0].unflatten(-1, (self.context_size, self.context_size)))
        feats = query[:, 0]  # [N, d]
        logits = self.classifier(self.dropout(feats))
        attention = {"pcca": torch.stack(maps, dim=1).detach()}  # [N, D, heads, h, w]
        return HeadOutput(logits=logits, attention=attention, features=feats)
