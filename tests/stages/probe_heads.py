"""A diagnostic head for the relational probes: ACRN told where its actor is.

MMAction2's ACRN (:mod:`models.heads.acrn_mmaction2`) tiles the actor vector over the
context map; nothing in that input says which cells are the actor's own. This variant
adds one input channel, the actor's box as a 0/1 mask over the map, and is otherwise the
same (1x1 conv + BN + ReLU, 3x3 conv + BN + ReLU, spatial max, dropout 0.5, FC). The
probes use it to show what the missing location costs (docs/findings-probes.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.heads.batch import ActorBatch, HeadOutput


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Float[N, H, W]: 1 at the cells whose centre lies in each normalized box [N, 4]."""
    ys = (torch.arange(height, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, dtype=boxes.dtype) + 0.5) / width
    in_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] <= boxes[:, 2:3])  # [N, W]
    in_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] <= boxes[:, 3:4])  # [N, H]
    return (in_y[:, :, None] & in_x[:, None, :]).to(boxes.dtype)


class BoxMaskACRN(nn.Module):
    """ACRN on [actor tiled, context, actor box mask]: logits [N, K], features [N, dim]."""

    reads = frozenset({"context", "pooled"})

    def __init__(self, *, in_channels: int, num_classes: int, dim: int = 32) -> None:
        super().__init__()
        self.relate = nn.Sequential(
            nn.Conv2d(2 * in_channels + 1, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, batch: ActorBatch) -> HeadOutput:
        _, _, h, w = batch.context.shape
        context = batch.context[batch.batch_index]  # [N, C, H, W]
        actor = batch.pooled[:, :, None, None].expand(-1, -1, h, w)  # [N, C, H, W]
        mask = box_masks(batch.boxes, h, w)[:, None]  # [N, 1, H, W]
        maps = self.relate(torch.cat([actor, context, mask], dim=1))  # [N, d, H, W]
        feats = maps.amax(dim=(2, 3))
        return HeadOutput(logits=self.classifier(self.dropout(feats)), features=feats)
