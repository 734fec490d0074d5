"""IGMN Dual Attention Module head, the short-term half of IGMN (Ni et al., §3.3-3.5).

For each actor i of a keyframe (the *representative* actor; the other actors of the same
keyframe are the *interference* actors):

1. ``f^i`` [C, K, K]: RoIAlign of ``batch.context`` over the box enlarged x1.25 about its
   centre (the paper's test-time enlargement "for more context"), clipped to the image.
2. Geometry embedding (eq. 1) ``f_geo^i`` [4, K, K] at each RoI cell centre ``(x_r, y_r)``:
   ``(x_r, y_r, alpha^i / pi, alpha_bar^i / pi)`` where ``alpha^i`` is the polar angle of
   the cell centre around actor i's box centre and ``alpha_bar^i`` the average polar angle
   around the interference actors whose (un-enlarged) box contains the cell, weighted by
   the indicators ``p^j`` (0 where no other actor covers the cell, thanks to epsilon).
3. ``f_dam = concat(f, f_geo)`` [C+4, K, K]; ``omega_sem = sigmoid(FFN_sem(f_dam))`` and
   ``omega_idt = sigmoid(FFN_idt(f_dam))`` [1, K, K], each FFN two 1x1 convolutions (eq. 2).
4. ``f_sem = mean_xy(f_dam * omega_sem)`` and ``f_idt = mean_xy(f_dam * omega_sem *
   omega_idt)`` [C+4] (eq. 3, with the paper's improved identity map).
5. Logits: ``f_fuse = f_idt`` (the long-term ``f_mem`` of HGNN is not part of this head; eq. 9)
   through two layers (1x1 convolutions on a 1x1 map = linear layers) with a ReLU between;
   ``HeadOutput.features`` is the hidden layer, ``head.classifier`` the last.

Auxiliary losses (``HeadOutput.aux_losses``), each already multiplied by
``aux_weight`` = lambda_aux = 0.5 (§4.1) *here in the head*, so the trainer only adds their
sum to its own classification loss on the logits (eq. 10 with ``L_cls^fuse`` = the
trainer's loss):

* ``prior_idt`` (eq. 6) and ``prior_sem`` (eq. 8, margin ``prior_margin``) need no labels
  and are always returned; ``p_hat`` (eq. 7) is 1 where another actor's box covers a cell
  and, as the paper says, everywhere in the enlarged ring outside the actor's own box.
* ``cls_sem`` (relaxed BCE, eq. 4) and ``cls_idt`` (BCE, eq. 5) need the labels: pass
  ``labels`` [N, K] to ``forward`` (``head.needs_labels`` is True). The paper ignores the
  pose classes in these two (softmax classes); ``aux_class_mask`` selects the classes used.

Choices where the paper is vague, with reasons:

* Margin ``prior_margin=0.1``: §3.3 defines eq. 8 with "a small margin gamma=0.1" while §4.1
  says "gamma to 1"; with omega in (0, 1) the eq. 8 difference lies in (-1, 1), so
  gamma=1 would keep the hinge always active and is likely a typo for lambda/gamma.
* Polar angles are taken in feature-map cells (x*W, y*H), not normalized coordinates,
  because the map's grid is isotropic in pixels; relative coordinates are the cell centres
  (k + 0.5) / K in [0, 1].
* Losses sum over classes and average over actors, exactly as eqs. 4-6 are written.
* FFN widths ``attention_hidden=512`` and ``fuse_hidden=1024``: not given in the paper.
* Without an HGNN memory feature (``memory_channels=0``, the stage-1 head), ``f_dam`` has
  no ``f_mem`` part. The full IGMN head (``models/heads/igmn.py``) builds this head with
  ``memory_channels`` and passes ``forward(..., memory=f_mem)``: ``f_mem`` is tiled and
  concatenated last into ``f_dam`` (eq. 2) and ``f_fuse = f_idt + f_mem`` (eq. 9) adds it to
  the ``f_mem`` channels of ``f_idt`` (the two widths differ, eq. 9 does not say how they
  meet; this keeps both the attended and the raw memory feature).

RoIAlign: ``torchvision.ops.roi_align`` with the normalized boxes scaled by (W, H) into
feature-map coordinates, ``spatial_scale=1.0``, ``aligned=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.boxes import iou_matrix_torch
from models.heads.amcr import feature_map_rois
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Attention, Head, HeadData, aux_class_mask
from models.heads.ops import roi_align
from models.heads.ragged import actor_slots, pad_actors


def enlarge_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale normalized boxes [N, 4] about their centres and clip them to [0, 1]."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=1).clamp(0.0, 1.0)


def relaxed_targets(labels: Tensor, boxes: Tensor, batch_index: Tensor) -> Tensor:
    """E(y) of IGMN eq. 4: ``E(y_c^i) = max_j IoU(b^i, b^j) * y_c^j`` over the actors j of
    the same keyframe (j = i included, so E = 1 wherever y = 1).

    Args:
        labels: Tensor[N, K] in {0, 1}; boxes: Tensor[N, 4]; batch_index: LongTensor[N].

    Returns:
        Tensor[N, K] in [0, 1].
    """
    if labels.shape[0] == 0:
        return labels.clone()
    num_keyframes = int(batch_index.max()) + 1
    padded_boxes, mask = pad_actors(boxes, batch_index, num_keyframes)  # (B, A, 4)
    padded_labels, _ = pad_actors(labels, batch_index, num_keyframes)  # (B, A, K)
    iou = iou_matrix_torch(boxes[:, None, :], padded_boxes[batch_index])[:, 0]  # (N, A)
    iou = iou * mask[batch_index]
    return (iou[:, :, None] * padded_labels[batch_index]).amax(dim=1)


def relaxed_bce(
    logits: Tensor,
    labels: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    class_mask: Tensor | None = None,
) -> Tensor:
    """IGMN eq. 4: BCE whose negative term is down-weighted by ``1 - E(y)``.

    ``-(1/N) sum_i sum_c [y log p + (1 - E(y)) log(1 - p)]`` with ``p = sigmoid(logits)``.
    A negative class of actor i costs less when an overlapping actor of the same keyframe
    is positive for it (its features may rightly respond inside i's box).

    Args:
        logits: Tensor[N, K]; labels: Tensor[N, K] in {0, 1}; boxes: Tensor[N, 4]
            normalized; batch_index: LongTensor[N] non-decreasing.
        class_mask: optional BoolTensor[K], classes that count (others ignored).

    Returns:
        scalar Tensor (0 for N = 0).
    """
    labels = labels.to(logits.dtype)
    relaxed = relaxed_targets(labels, boxes, batch_index)
    per = -(labels * F.logsigmoid(logits) + (1 - relaxed) * F.logsigmoid(-logits))
    return _sum_classes_mean_actors(per, class_mask)


def standard_bce(logits: Tensor, labels: Tensor, class_mask: Tensor | None = None) -> Tensor:
    """IGMN eq. 5: BCE summed over classes and averaged over actors."""
    per = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return _sum_classes_mean_actors(per, class_mask)


def _sum_classes_mean_actors(per: Tensor, class_mask: Tensor | None) -> Tensor:
    if class_mask is not None:
        per = per * class_mask.to(per.dtype)
    if per.shape[0] == 0:
        return per.sum()
    return per.sum(dim=1).mean()


class IGMNDAMHead(Head):
    """IGMN's Dual Attention Module as a stage-1 head (see the module docstring).

    Reads ``batch.context`` [B, C, H, W], ``batch.boxes`` [N, 4], ``batch.batch_index``.
    ``forward(batch, labels=None)`` returns logits [N, K], ``features`` [N, fuse_hidden],
    ``attention["semantic"]`` and ``attention["identity"]`` [N, R, R] (omega_sem and the raw
    omega_idt over the enlarged box, R = ``roi_size``), and ``aux_losses`` weighted by
    ``aux_weight`` (``prior_sem``, ``prior_idt`` always; ``cls_sem``, ``cls_idt`` when
    ``labels`` [N, K] is given). With ``memory_channels`` > 0 (inside the full IGMN head)
    ``forward(batch, labels, memory=f_mem)`` takes the HGNN feature [N, memory_channels].
    """

    aux_class_mask: Tensor  # Bool[K] buffer (registered in __init__)

    # The feature-store arrays this head reads (the trainer reads nothing else).
    reads = frozenset({"context", "pooled"})

    needs_labels = True
    # identity: the max-pooled RoIAlign node features of §3.2.1.
    BANK_SOURCES = ("lfb", "identity")
    # The semantic and identity maps over each enlarged box (IGMN Fig. 6).
    ATTENTION = Attention(maps=("semantic", "identity"), style="enlarged_box")

    @classmethod
    def kwargs_from_data(cls, data: HeadData) -> dict[str, Any]:
        # IGMN leaves the softmax (pose) classes out of its two auxiliary classification
        # losses (§3.3); which classes those are is the dataset's business, not the config's.
        return {**super().kwargs_from_data(data), "aux_class_mask": aux_class_mask(data)}

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        roi_size: int = 7,
        context_scale: float = 1.25,
        attention_hidden: int = 512,
        fuse_hidden: int = 1024,
        aux_weight: float = 0.5,
        prior_margin: float = 0.1,
        aux_class_mask: Sequence[bool] | None = None,
        eps: float = 1e-6,
        memory_channels: int = 0,
    ) -> None:
        super().__init__()
        if aux_class_mask is not None and len(aux_class_mask) != num_classes:
            raise ValueError(
                f"aux_class_mask must have one entry per class ({num_classes}), "
                f"got {len(aux_class_mask)}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.roi_size = roi_size
        self.context_scale = context_scale
        self.aux_weight = aux_weight
        self.prior_margin = prior_margin
        self.eps = eps
        self.memory_channels = memory_channels
        mask = torch.ones(num_classes, dtype=torch.bool)
        if aux_class_mask is not None:
            mask = torch.tensor(list(aux_class_mask), dtype=torch.bool)
        self.register_buffer("aux_class_mask", mask, persistent=False)
        dam = in_channels + 4 + memory_channels
        self.ffn_sem = _attention_ffn(dam, attention_hidden)
        self.ffn_idt = _attention_ffn(dam, attention_hidden)
        self.classifier_sem = nn.Linear(dam, num_classes)
        self.classifier_idt = nn.Linear(dam, num_classes)
        self.fuse = nn.Sequential(nn.Linear(dam, fuse_hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(fuse_hidden, num_classes)

    def geometry(
        self, boxes: Tensor, batch_index: Tensor, num_keyframes: int, h: int, w: int
    ) -> tuple[Tensor, Tensor]:
        """Eq. 1 and eq. 7 on the enlarged RoI grid of each actor.

        Args:
            boxes: Tensor[N, 4] normalized (un-enlarged); batch_index: LongTensor[N];
            num_keyframes: B; h, w: context map size (angles are measured in its cells).

        Returns (f_geo Tensor[N, 4, R, R], p_hat Tensor[N, R, R] in {0, 1}).
        """
        r = self.roi_size
        big = enlarge_boxes(boxes, self.context_scale)
        cells = (torch.arange(r, device=boxes.device, dtype=boxes.dtype) + 0.5) / r  # (R,)
        # absolute normalized coordinates of every cell centre: (N, R, R), rows = y
        n = boxes.shape[0]
        xa = big[:, 0, None, None] + cells[None, None, :] * (big[:, 2] - big[:, 0])[:, None, None]
        ya = big[:, 1, None, None] + cells[None, :, None] * (big[:, 3] - big[:, 1])[:, None, None]
        xa, ya = xa.expand(n, r, r), ya.expand(n, r, r)
        xr = cells[None, None, :].expand(n, r, r)
        yr = cells[None, :, None].expand(n, r, r)

        def polar(cx: Tensor, cy: Tensor) -> Tensor:
            # angle in feature-map cells (isotropic), in [-pi, pi]
            return torch.atan2((ya[:, None] - cy) * h, (xa[:, None] - cx) * w)

        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        alpha = polar(centres[:, 0, None, None, None], centres[:, 1, None, None, None])[:, 0]

        padded, mask = pad_actors(boxes, batch_index, num_keyframes)  # (B, A, 4)
        others = padded[batch_index]  # (N, A, 4)
        slot, _ = actor_slots(batch_index, num_keyframes)
        valid = mask[batch_index].clone()
        valid[torch.arange(boxes.shape[0], device=boxes.device), slot] = False  # j != i
        ox1, oy1, ox2, oy2 = (others[..., k, None, None] for k in range(4))  # (N, A, 1, 1)
        inside = (
            (xa[:, None] >= ox1)
            & (xa[:, None] <= ox2)
            & (ya[:, None] >= oy1)
            & (ya[:, None] <= oy2)
        ) & valid[:, :, None, None]  # (N, A, R, R)
        p = inside.to(boxes.dtype)
        alpha_j = polar((ox1 + ox2) / 2, (oy1 + oy2) / 2)  # (N, A, R, R)
        alpha_bar = (p * alpha_j).sum(1) / (p.sum(1) + self.eps)

        own = (
            (xa >= boxes[:, 0, None, None])
            & (xa <= boxes[:, 2, None, None])
            & (ya >= boxes[:, 1, None, None])
            & (ya <= boxes[:, 3, None, None])
        )
        p_hat = (inside.any(dim=1) | ~own).to(boxes.dtype)
        f_geo = torch.stack([xr, yr, alpha / math.pi, alpha_bar / math.pi], dim=1)
        return f_geo, p_hat

    def actor_maps(self, batch: ActorBatch) -> Tensor:
        """f^i: RoIAlign of ``batch.context`` over the enlarged boxes, Tensor[N, C, R, R]."""
        _, _, h, w = batch.context.shape
        boxes = enlarge_boxes(batch.boxes, self.context_scale)
        rois = feature_map_rois(boxes, batch.batch_index, h, w)
        return roi_align(batch.context, rois, self.roi_size, spatial_scale=1.0, aligned=True)

    def bank_rows(self, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
        if kind == "identity":
            return {"features": self.node_features(batch)}
        return super().bank_rows(kind, batch)

    def node_features(self, batch: ActorBatch) -> Tensor:
        """HGNN node features f_hat^i = max_xy f^i (IGMN §3.2.1): Tensor[N, C]."""
        return self.actor_maps(batch).amax(dim=(2, 3))

    def forward(
        self, batch: ActorBatch, labels: Tensor | None = None, memory: Tensor | None = None
    ) -> HeadOutput:
        context, boxes, batch_index = batch.context, batch.boxes, batch.batch_index
        m = self.memory_channels
        if (memory is None) != (m == 0) or (
            memory is not None and memory.shape != (batch.num_actors, m)
        ):
            got = None if memory is None else tuple(memory.shape)
            raise ValueError(
                f"IGMNDAMHead(memory_channels={m}) needs memory "
                f"{'None' if m == 0 else [batch.num_actors, m]}, got {got}"
            )
        if context.dim() != 4 or context.shape[1] != self.in_channels:
            raise ValueError(
                f"IGMNDAMHead: batch.context must be [B, {self.in_channels}, H, W], "
                f"got {tuple(context.shape)}"
            )
        if boxes.shape != (batch.num_actors, 4):
            raise ValueError(
                f"IGMNDAMHead: batch.boxes must be [{batch.num_actors}, 4], "
                f"got {tuple(boxes.shape)}"
            )
        if labels is not None and labels.shape != (batch.num_actors, self.num_classes):
            raise ValueError(
                f"IGMNDAMHead: labels must be [{batch.num_actors}, {self.num_classes}], "
                f"got {tuple(labels.shape)}"
            )
        _, _, h, w = context.shape
        rois = feature_map_rois(enlarge_boxes(boxes, self.context_scale), batch_index, h, w)
        f = roi_align(context, rois, self.roi_size, spatial_scale=1.0, aligned=True)
        f_geo, p_hat = self.geometry(boxes, batch_index, batch.num_keyframes, h, w)
        f_dam = torch.cat([f, f_geo.to(f.dtype)], dim=1)  # (N, C+4, R, R)
        if memory is not None:  # eq. 2: f_mem tiled over the RoI grid, concatenated last
            tiled = memory.to(f.dtype)[:, :, None, None].expand(-1, -1, *f.shape[2:])
            f_dam = torch.cat([f_dam, tiled], dim=1)  # (N, C+4+m, R, R)
        w_sem = torch.sigmoid(self.ffn_sem(f_dam))  # (N, 1, R, R)
        w_idt = torch.sigmoid(self.ffn_idt(f_dam))
        f_sem = (f_dam * w_sem).mean(dim=(2, 3))  # (N, C+4)
        f_idt = (f_dam * (w_sem * w_idt)).mean(dim=(2, 3))
        f_fuse = f_idt
        if memory is not None:  # eq. 9: f_fuse = f_mem + f_idt, on f_idt's memory channels
            f_fuse = torch.cat([f_idt[:, :-m], f_idt[:, -m:] + memory.to(f.dtype)], dim=1)
        features = self.fuse(f_fuse)
        logits = self.classifier(features)

        sem, idt, p_hat = w_sem[:, 0], w_idt[:, 0], p_hat.to(f.dtype)
        prior_idt = ((1 - p_hat) * (idt - 1) ** 2).mean(dim=(1, 2))  # eq. 6, (N,)
        contrast = (p_hat * sem - (1 - p_hat) * sem).mean(dim=(1, 2))
        prior_sem = F.relu(self.prior_margin - contrast)  # eq. 8, (N,)
        aux = {
            "prior_sem": self.aux_weight * _mean_or_zero(prior_sem),
            "prior_idt": self.aux_weight * _mean_or_zero(prior_idt),
        }
        if labels is not None:
            cls_sem = relaxed_bce(
                self.classifier_sem(f_sem), labels, boxes, batch_index, self.aux_class_mask
            )
            cls_idt = standard_bce(self.classifier_idt(f_idt), labels, self.aux_class_mask)
            aux["cls_sem"] = self.aux_weight * cls_sem
            aux["cls_idt"] = self.aux_weight * cls_idt
        return HeadOutput(
            logits=logits,
            features=features,
            aux_losses=aux,
            attention={"semantic": sem, "identity": idt},
        )


def _attention_ffn(channels: int, hidden: int) -> nn.Sequential:
    """FFN of eq. 2: two 1x1 convolutions, [N, channels, R, R] -> [N, 1, R, R] (pre-sigmoid)."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, 1, kernel_size=1),
    )


def _mean_or_zero(x: Tensor) -> Tensor:
    return x.mean() if x.numel() else x.sum()
