"""The parts of ACAR-Net's released head (Siyu-C/ACAR-Net, ``models/heads/acar.py``).

Used by :class:`models.heads.acar.ACARHead` with ``variant="release"`` (the default). The
release and the paper (Pan et al., "Actor-Context-Actor Relation Network for
Spatio-Temporal Action Localization", CVPR 2021, §3.2-3.3 and §4.1) disagree in places;
the release wins here, and these are the differences:

- Actor feature: the paper's RoIAlign of the backbone map; the release reduces the map
  first (1x1 conv C -> r, no bias), then RoIAligns *that* (7 x 7, ``aligned=False``,
  adaptive sampling, boxes scaled by the map's own width and height) and max-pools it.
- First-order relations: [context tiled, actor tiled] (context first) -> 1x1 conv
  (2r -> d) -> ReLU -> 3x3 conv **without padding** (H x W -> H-2 x W-2) -> ReLU, all
  convs without bias; then a 3x3 / stride 2 / padding 1 max-pool before HR2O.
- HR2O (eqs. 1-2): Q, K, V and the output conv are 3x3 (padding 1) without bias, the
  attention is single-head scaled by 1/sqrt(d), and "norm" is ``GroupNorm(1, d)`` —
  one group, so the statistics run over all of d x H x W of each actor's map — with an
  affine transform; ReLU; conv; dropout 0.2; residual. Two blocks (``depth``).
- Read-out: ``fc1`` (r -> d, no bias) + ReLU on the actor feature, concatenated with the
  global average of the HR2O maps, optional dropout (0 in the release), ``fc2`` (2d -> K,
  no bias). The paper has a single FC.
- The release crops each keyframe's map to the part covered by the (unpadded) image
  before relating; bankflow's clips are never padded, so the crop is the whole map.

Loading a release checkpoint: its file (``ckpt_N.pth.tar``) holds ``{"state_dict": ...}``
with keys ``module.backbone.module.*``, ``module.neck.module.*`` and
``module.head.module.*`` (a DDP-wrapped ``AVA_model`` whose parts wrap their networks).
:func:`split_acar_net_state` separates the three and :func:`acar_net_head_state` renames
the head's keys to this head's names (``conv_reduce``/``conv1``/``conv2`` ->
``encoder.*``, ``hr2o.{i}`` -> ``reasoning.blocks.{i}``, ``fc2`` -> ``classifier``). The
neck ("basic") has no parameters; the backbone part goes to the backbone loaders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from models.heads.ops import roi_align
from models.heads.position import box_masks


def _per_actor(module: nn.Module, maps: Tensor) -> Tensor:
    """Apply a 2-D module to every actor map of Tensor[B, N, C, H, W]."""
    b, n = maps.shape[:2]
    out = module(maps.flatten(0, 1))
    return out.view(b, n, *out.shape[1:])


def masked_actor_attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Attention across actors at each map location (HR2O's, in both ACAR variants).

    q [B, Nq, d, H, W]; k, v [B, M, d, H, W]; key_mask Bool[B, M].
    Returns (attended values [B, Nq, d, H, W], attention [B, Nq, M, H, W]).
    """
    logits = torch.einsum("bidyx,bjdyx->bijyx", q, k) * scale  # [B, Nq, M, H, W]
    valid = key_mask[:, None, :, None, None]
    # finfo.min rather than -inf: a row without any valid key stays finite (no NaN).
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    att = torch.softmax(logits, dim=2) * valid
    return torch.einsum("bijyx,bjdyx->bidyx", att, v), att


class ReleaseNonLocalBlock(nn.Module):
    """``HR2O_NL`` of the release, with padded actor slots masked out of the keys."""

    def __init__(self, *, dim: int = 512, kernel_size: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv_q = nn.Conv2d(dim, dim, kernel_size, padding=pad, bias=False)
        self.conv_k = nn.Conv2d(dim, dim, kernel_size, padding=pad, bias=False)
        self.conv_v = nn.Conv2d(dim, dim, kernel_size, padding=pad, bias=False)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=pad, bias=False)
        self.norm = nn.GroupNorm(1, dim, affine=True)
        self.dp = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, query: Tensor, key_value: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """query [B, Nq, d, H, W], key_value [B, M, d, H, W], key_mask Bool[B, M].

        Returns (query + H: [B, Nq, d, H, W], attention [B, Nq, M, H, W]).
        """
        q = _per_actor(self.conv_q, query)
        k = _per_actor(self.conv_k, key_value)
        v = _per_actor(self.conv_v, key_value)
        h, att = masked_actor_attention(q, k, v, key_mask, self.scale)
        h = _per_actor(self.norm, h).relu()
        h = self.dp(_per_actor(self.conv, h))
        has_key = key_mask.any(dim=1)[:, None, None, None, None]
        return query + h * has_key, att


class ReleaseHR2O(nn.Module):
    """``depth`` release blocks; keys/values are the updated maps (self) or a fixed bank."""

    def __init__(
        self, *, dim: int = 512, num_layers: int = 2, kernel_size: int = 3, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ReleaseNonLocalBlock(dim=dim, kernel_size=kernel_size, dropout=dropout)
            for _ in range(num_layers)
        )

    def forward(
        self, query: Tensor, key_value: Tensor | None, key_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """As :class:`models.heads.acar.HR2O`: (maps [B, Nq, d, H, W], att [B, L, Nq, M, H, W])."""
        atts = []
        x = query
        for block in self.blocks:
            x, att = block(x, x if key_value is None else key_value, key_mask)
            atts.append(att)
        return x, torch.stack(atts, dim=1)


class ReleaseEncoder(nn.Module):
    """Reduced map, RoIAligned actor vectors and first-order maps, as the release does."""

    def __init__(
        self,
        *,
        in_channels: int,
        reduce_dim: int = 1024,
        dim: int = 512,
        roi_size: int = 7,
        downsample: bool = True,
        box_mask: bool = False,
    ) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.conv_reduce = nn.Conv2d(in_channels, reduce_dim, 1, bias=False)
        self.conv1 = nn.Conv2d(reduce_dim * 2, dim, 1, bias=False)
        # Opt-in (not in the release): conv1's column for the actor's box mask
        # (models.heads.position), so conv1 sees [X, A^i tiled, M^i].
        self.position = nn.Conv2d(1, dim, 1, bias=False) if box_mask else None
        self.conv2 = nn.Conv2d(dim, dim, 3, bias=False)
        self.downsample = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if downsample else nn.Identity()
        )

    def reduce(self, context: Tensor, boxes: Tensor, batch_index: Tensor) -> tuple[Tensor, Tensor]:
        """(actor Tensor[N, r], reduced context Tensor[B, r, H, W]).

        context [B, C, H, W]; boxes [N, 4] normalized x1 y1 x2 y2; batch_index [N].
        """
        feats = self.conv_reduce(context)
        h, w = feats.shape[-2:]
        scale = boxes.new_tensor([w, h, w, h])
        rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes * scale], dim=1)
        roi = roi_align(feats, rois.to(feats.dtype), (self.roi_size, self.roi_size))
        return roi.amax(dim=(2, 3)), feats

    def relate(
        self, actor: Tensor, context: Tensor, batch_index: Tensor, boxes: Tensor | None = None
    ) -> Tensor:
        """First-order maps [N, d, H', W'] from actor [N, r] and reduced context [B, r, H, W]
        (boxes [N, 4] normalized: read only with the box mask).

        ``conv1`` on [context, actor tiled] is computed as its context half on each
        keyframe's map plus its actor half on each vector (it is linear), so the
        [N, 2r, H, W] concatenation is never built.
        """
        r = context.shape[1]
        weight = self.conv1.weight  # [d, 2r, 1, 1]: context channels first, then actor
        ctx = nn.functional.conv2d(context, weight[:, :r])[batch_index.long()]
        act = actor @ weight[:, r:, 0, 0].t()
        x = ctx + act[:, :, None, None]
        if self.position is not None:
            if boxes is None:
                raise ValueError("an ACAR encoder with the box mask needs the actors' boxes")
            x = x + self.position(box_masks(boxes, *context.shape[-2:])[:, None])
        x = x.relu()
        return self.downsample(self.conv2(x).relu())


def split_acar_net_state(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """An ACAR-Net checkpoint's ``state_dict`` -> ``{"backbone", "neck", "head"}`` parts.

    Its keys read ``module.<part>.module.<name>``: DDP's ``module.``, the ``AVA_model``
    part, and the ``module`` attribute each part wraps its network in. Both ``module.``
    are optional here (a checkpoint saved without DDP). Keys of no part are refused.
    """
    parts: dict[str, dict[str, Tensor]] = {"backbone": {}, "neck": {}, "head": {}}
    for key, value in state.items():
        name = key.removeprefix("module.")
        part, _, rest = name.partition(".")
        rest = rest.removeprefix("module.")
        if part not in parts or not rest:
            raise ValueError(
                f"ACAR-Net state key {key!r} is not under backbone., neck. or head. "
                "(expected the state_dict of ACAR-Net's AVA_model)"
            )
        parts[part][rest] = value
    return parts


_HEAD_RENAMES = (
    ("conv_reduce.", "encoder.conv_reduce."),
    ("conv1.", "encoder.conv1."),
    ("conv2.", "encoder.conv2."),
    ("hr2o.", "reasoning.blocks."),
    ("fc2.", "classifier."),
)


def acar_net_head_state(head_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a release head's keys (``head.*`` part, prefix removed) to ACARHead's."""
    out = {}
    for key, value in head_state.items():
        for old, new in _HEAD_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out
