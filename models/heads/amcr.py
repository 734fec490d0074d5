"""AMCRNet stage-1 head: PosNet + multi-scale context + BHOI (Zhu et al., IJCAI-23, §3.2).

Pipeline for one batch of B keyframes with N actors:

1. **PosNet** (eq. 2): a learned input ``Input_pos`` [1, 1, h0, w0] goes through narrow
   stacked dilated 3x3 convolutions whose receptive field covers the map, then a 3x3
   convolution to C channels: ``Pos`` [1, C, H, W]. Zero padding is what lets the
   convolutions encode absolute position (Islam et al., cited by the paper).
2. **Actor tokens** (eq. 3): ``A_i + Pos_person_i`` where ``Pos_person_i`` is the
   average of a RoIAlign (``roi_size`` x ``roi_size``) of ``Pos`` over the actor box.
3. **Context module** (eq. 4): adaptive average pools with output sizes 3, 5, 7 over the
   context map and over ``Pos``: M = 9 + 25 + 49 = 83 context tokens ``Context_j +
   Pos_context_j`` per keyframe.
4. **BHOI** (eq. 5): ``num_layers`` multi-head self-attention blocks over the sequence
   [actors (padded to the keyframe maximum, masked) ; contexts]; the actor tokens of the
   last block give the high-order interaction feature H (``HeadOutput.features``), the
   classifier maps them to logits.

Choices where the paper is vague, with reasons:

* Actor feature ``A``: the paper average-pools an 8x8 RoIAlign; the feature store keeps the
  7x7 RoIAlign + max-pool (``batch.pooled``), which we use as is.
* ``hidden_dim=1280``: eq. 5 computes Q, K, V with a 1x1 conv but gives no width. Table 1's
  head sizes (AMCRNet R50 148-149 M, slim 73.2-73.4 M, SlowFast-R50 backbone ~34 M) fit a
  token width d ~ 1280: 6 blocks x 12 d^2 (MLP ratio 4) ~ 118 M and 4 blocks x 6 d^2 (ratio
  1) ~ 39 M. So a shared linear layer projects the C-wide tokens (after adding the positional
  embeddings, which are C-wide per eq. 2) to d before the blocks.
* Depth and MLP ratio: 6 blocks, ratio 4 by default; "slim" = 4 blocks, ratio 1 (§4.2),
  built by ``amcr_slim_head``.
* Blocks are pre-norm (ViT style, as "MHSA module with MLP dilation" suggests), 8 heads
  (not given), with a final LayerNorm; no dropout inside (not mentioned), dropout 0.5 before
  the classifier as the SlowFast AVA heads use.
* PosNet: the release's ``convpos`` (AMCRNet GitHub, ``pose_net.py`` and its R50 config:
  ``dims=[1, 2, 2, 2, 2, 4, 16]``, 6 blocks of two 3x3 convs with dilations 1 and 2, each
  conv followed by a norm and a ReLU, then a 3x3 conv + norm + ReLU to C): the paper says
  only "narrow (channel size of 2)" dilated blocks. The norm matters: bankflow's earlier
  reading (2-channel convs with ReLU and no norm, a linear 1x1 conv to C) starts almost
  constant over the map and dies in training, leaving Pos one constant vector, i.e. no
  position at all (docs/findings-probes.md). The release's BatchNorm sees a batch of one
  map, i.e. normalises each channel over the map in training; a GroupNorm with one
  channel per group does the same in training and evaluation. The release draws a new
  random input (uniform 1..10) at every forward; here the input is a learned parameter
  (the paper: "randomly initialize a tensor"), so inference is deterministic. Because
  maps differ in size across datasets, the learned input (``pos_input_size``, default the
  AVA res5 size 16x22) is bilinearly resized to the context map's H x W before PosNet;
  the paper argues against interpolating a fixed *embedding*, and resizing the *input*
  keeps the embedding computed by convolutions at the actual size.
* ``actor_position="box_bias"`` (opt-in, default ``"none"`` as the paper): each actor's
  attention logits get a learned bias from where every token lies relative to its box
  (``models/heads/position.py``, :class:`~models.heads.position.BoxBias`).
* Context pools are average pools ("self-adapted pooling layers", no kind given), with
  output sizes 3, 5, 7. The release's config instead pools to round(H / k) x round(W / k)
  for k = 3, 5, 7 (``pool_ratio``; 5x7 + 3x4 + 2x3 = 53 tokens on a 16x22 map, which fits
  the paper's "6 times" fewer tokens than kernel size 1 better than 83); not changed here.

RoI pooling uses ``torchvision.ops.roi_align`` with the normalized boxes scaled by
(W, H) into feature-map coordinates, ``spatial_scale=1.0`` and ``aligned=True``
(pixel-centre model: a box edge at x covers sampling points from x - 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Attention, Head
from models.heads.ops import roi_align
from models.heads.position import (
    TOKEN_ACTOR_POSITIONS,
    BoxBias,
    TokenActorPosition,
    check_actor_position,
    pool_cell_boxes,
)
from models.heads.ragged import pad_actors, unpad_actors
from models.heads.relation_transformer import RelationEncoderLayer


def feature_map_rois(boxes: Tensor, batch_index: Tensor, height: int, width: int) -> Tensor:
    """Normalized boxes [N, 4] -> RoIs [N, 5] ``(k, x1, y1, x2, y2)`` in map coordinates."""
    scale = boxes.new_tensor([width, height, width, height])
    return torch.cat([batch_index.to(boxes.dtype).unsqueeze(1), boxes * scale], dim=1)


class PosNet(nn.Module):
    """Learned positional embedding of a feature map (AMCRNet eq. 2, its release's
    ``convpos``).

    Blocks of two 3x3 convolutions (dilations 1 and 2), each followed by a per-channel
    normalisation over the map and a ReLU, widen the one-channel input through ``widths``
    (the release: 2, 2, 2, 2, 4, 16); a 3x3 convolution + normalisation + ReLU maps the
    last width to C. The normalisation keeps every channel alive: without it the narrow
    ReLU stack dies (all-zero channels) and Pos collapses to a constant, i.e. no position
    at all (docs/findings-probes.md).

    Args:
        out_channels: C, the width of the embedding.
        widths: output channels of the blocks (paper: "narrow (channel size of 2)").
        input_size: (h0, w0) of the learned input, resized to the requested map size.
    """

    def __init__(
        self, *, out_channels: int, widths: Sequence[int], input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"posnet_widths must be positive channel counts, got {widths}")
        self.input = nn.Parameter(torch.randn(1, 1, *input_size))
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            for k, dilation in enumerate((1, 2)):
                layers += _conv_norm_relu(channels if k == 0 else width, width, dilation)
            channels = width
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Sequential(*_conv_norm_relu(channels, out_channels, 1))

    def forward(self, height: int, width: int) -> Tensor:
        """Returns Pos: Tensor[1, C, height, width]."""
        x: Tensor = self.input
        if tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return self.out(self.blocks(x))


def _conv_norm_relu(cin: int, cout: int, dilation: int) -> list[nn.Module]:
    """3x3 conv (same size) + per-channel normalisation over the map + ReLU.

    The release normalises with BatchNorm over a batch of one map, i.e. each channel over
    its H x W cells in training; a GroupNorm with one channel per group does the same in
    training and in evaluation (no running statistics to drift).
    """
    return [
        nn.Conv2d(cin, cout, kernel_size=3, padding=dilation, dilation=dilation),
        nn.GroupNorm(cout, cout),
        nn.ReLU(),
    ]


class AMCRHead(Head):
    """AMCRNet short-term head (PosNet, multi-scale context, BHOI).

    Reads ``batch.context`` [B, C, H, W], ``batch.pooled`` [N, C], ``batch.boxes`` [N, 4],
    ``batch.batch_index`` [N]. Returns logits [N, K]; ``features`` [N, hidden_dim], the
    high-order interaction feature (BHOI output of each actor, what HR-AFB stores together
    with the movement feature ``batch.pooled``); ``attention["bhoi"]`` [N, M], the last
    block's head-averaged attention from each actor to the M context tokens, ordered
    scale by scale (3x3, then 5x5, then 7x7, each row-major).
    """

    # The feature-store arrays this head reads (the trainer reads nothing else).
    reads = frozenset({"context", "pooled"})
    # HR-AFB: the BHOI interaction feature H and the RoI movement feature A.
    BANK_SOURCES = ("lfb", "hrafb")
    # Each actor's attention to the multi-scale context tokens (AMCRNet Fig. 4).
    ATTENTION = Attention(maps=("bhoi",), style="context_tokens")

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
        actor_position: TokenActorPosition = "none",
    ) -> None:
        super().__init__()
        check_actor_position(actor_position, "AMCRHead", TOKEN_ACTOR_POSITIONS)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not context_scales or min(context_scales) < 1:
            raise ValueError(f"context_scales must be positive sizes, got {context_scales}")
        self.in_channels = in_channels
        self.context_scales = tuple(int(s) for s in context_scales)
        self.roi_size = roi_size
        self.posnet = PosNet(
            out_channels=in_channels, widths=posnet_widths, input_size=pos_input_size
        )
        self.project = nn.Linear(in_channels, hidden_dim)
        self.blocks = nn.ModuleList(
            RelationEncoderLayer(
                dim=hidden_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                norm_first=True,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        # opt-in (default off, as the paper): each actor's attention biased by where every
        # token lies relative to its box (models/heads/position.py)
        self.box_bias = (
            BoxBias(num_maps=num_layers * num_heads) if actor_position == "box_bias" else None
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    @property
    def num_context_tokens(self) -> int:
        return sum(s * s for s in self.context_scales)

    def _check(self, batch: ActorBatch) -> None:
        c = self.in_channels
        if batch.context.dim() != 4 or batch.context.shape[1] != c:
            raise ValueError(
                f"AMCRHead: batch.context must be [B, {c}, H, W], got {tuple(batch.context.shape)}"
            )
        if batch.pooled.dim() != 2 or batch.pooled.shape[1] != c:
            raise ValueError(
                f"AMCRHead: batch.pooled must be [N, {c}], got {tuple(batch.pooled.shape)}"
            )
        if batch.boxes.shape != (batch.num_actors, 4):
            raise ValueError(
                f"AMCRHead: batch.boxes must be [{batch.num_actors}, 4], "
                f"got {tuple(batch.boxes.shape)}"
            )

    def multiscale_context(self, context: Tensor, pos: Tensor) -> Tensor:
        """Eq. 4: context [B, C, H, W] + Pos [1, C, H, W] -> tokens [B, M, C]."""
        tokens = []
        for s in self.context_scales:
            pooled = F.adaptive_avg_pool2d(context, s) + F.adaptive_avg_pool2d(pos, s)
            tokens.append(pooled.flatten(2))  # (B, C, s*s)
        return torch.cat(tokens, dim=2).transpose(1, 2)

    def actor_positions(self, pos: Tensor, boxes: Tensor) -> Tensor:
        """Eq. 3: average of the RoIAlign of Pos [1, C, H, W] over each box -> [N, C]."""
        _, _, h, w = pos.shape
        rois = feature_map_rois(boxes, boxes.new_zeros(boxes.shape[0]), h, w)
        crops = roi_align(pos, rois, self.roi_size, spatial_scale=1.0, aligned=True)
        return crops.mean(dim=(2, 3))

    def attention_bias(self, batch: ActorBatch, height: int, width: int, slots: int) -> Tensor:
        """``actor_position="box_bias"``: Tensor[num_layers, B * num_heads, A + M, A + M],
        each actor's (query row's) bias to every token from the token's region relative to
        the actor's box (actors: their boxes; context tokens: their pooling cells); the
        context tokens' rows get none."""
        assert self.box_bias is not None
        b, a = batch.num_keyframes, slots
        boxes, _ = pad_actors(batch.boxes, batch.batch_index, b)  # (B, A, 4)
        sizes = [(s, s) for s in self.context_scales]
        cells = pool_cell_boxes(height, width, sizes).to(boxes)  # (M, 4)
        keys = torch.cat([boxes, cells[None].expand(b, -1, -1)], dim=1)  # (B, A+M, 4)
        rows = self.box_bias(boxes, keys)  # (B, A, A+M, layers*heads)
        first = self.blocks[0]
        assert isinstance(first, RelationEncoderLayer)
        layers, heads = len(self.blocks), first.attn.num_heads
        length = keys.shape[1]
        rows = rows.reshape(b, a, length, layers, heads).permute(3, 0, 4, 1, 2)
        bias = rows.new_zeros(layers, b, heads, length, length)
        bias[:, :, :, :a] = rows
        return bias.reshape(layers, b * heads, length, length)

    def bank_rows(self, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
        if kind == "hrafb":
            interaction, _ = self.interaction(batch)
            return {"interaction": interaction, "movement": batch.pooled}
        return super().bank_rows(kind, batch)

    def interaction(self, batch: ActorBatch) -> tuple[Tensor, Tensor]:
        """BHOI short-term part: the high-order interaction feature H of every actor
        [N, hidden_dim] (what HR-AFB stores) and its last-block attention to the M context
        tokens [N, M]."""
        self._check(batch)
        context = batch.context
        _, _, h, w = context.shape
        pos = self.posnet(h, w).to(context.dtype)  # (1, C, H, W)
        actors = batch.pooled + self.actor_positions(pos, batch.boxes)  # (N, C)
        ctx = self.multiscale_context(context, pos)  # (B, M, C)
        padded, mask = pad_actors(actors, batch.batch_index, batch.num_keyframes)  # (B, A, C)
        a, m = padded.shape[1], ctx.shape[1]
        x = self.project(torch.cat([padded, ctx], dim=1))  # (B, A+M, D)
        # padded actor slots are ignored as keys; context tokens are always real
        ignore = torch.cat([~mask, mask.new_zeros(mask.shape[0], m)], dim=1)
        biases = self.attention_bias(batch, h, w, a) if self.box_bias is not None else None
        weights = x.new_zeros(x.shape[0], a + m, a + m)
        for k, block in enumerate(self.blocks):
            x, weights = block(x, ignore, None if biases is None else biases[k])
        x = self.norm(x)
        features = unpad_actors(x[:, :a], mask)  # (N, D)
        to_context = unpad_actors(weights[:, :a, a:], mask)  # (N, M)
        return features, to_context

    def forward(self, batch: ActorBatch) -> HeadOutput:
        features, to_context = self.interaction(batch)
        logits = self.classifier(self.dropout(features))
        return HeadOutput(logits=logits, features=features, attention={"bhoi": to_context})


# AMCRNet-slim (§4.2): 4 MHSA blocks instead of 6 and MLP ratio 1 instead of 4.
AMCR_SLIM: dict[str, Any] = {"num_layers": 4, "mlp_ratio": 1.0}


def amcr_slim_head(*, in_channels: int, num_classes: int, **overrides: Any) -> AMCRHead:
    """AMCRNet-slim (§4.2): 4 MHSA blocks instead of 6 and MLP ratio 1 instead of 4."""
    kwargs: dict[str, Any] = {**AMCR_SLIM, **overrides}
    return AMCRHead(in_channels=in_channels, num_classes=num_classes, **kwargs)
