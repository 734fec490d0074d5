"""What every head reads: a batch of keyframes with a ragged set of actors each.

Built by the trainer from the feature store (``featurestore``) — heads never see files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class ActorBatch:
    """B keyframes holding N actors in total (actor ``i`` belongs to ``batch_index[i]``).

    Attributes:
        context: Tensor[B, C, H, W], the keyframe's temporally pooled backbone map.
        pooled: Tensor[N, C], RoIAlign 7x7 + spatial max-pool of each actor box.
        boxes: Tensor[N, 4], normalized ``x1, y1, x2, y2`` in [0, 1].
        batch_index: LongTensor[N], the keyframe (0..B-1) of each actor, non-decreasing.
        roi: optional Tensor[N, C, 7, 7], the actor's RoIAlign map (ACRN, DAM, PCCA).
        roi_t: optional Tensor[N, C, T, 7, 7], temporal RoI maps (T-only head).
        track: optional LongTensor[N], identity of each actor (-1 unknown).
        bank: long-term bank window of each KEYFRAME for stage-2 heads (their docs say
            which keys they read): ``mask`` Bool[B, L], ``dt`` float[B, L] (seconds from
            the keyframe), ``track`` long[B, L], ``current`` Bool[B, L], and the bank's
            arrays, e.g. ``features`` [B, L, D] or ``maps`` [B, L, d, H, W]
            (:mod:`stages.train.window` builds it).
    """

    context: Tensor
    pooled: Tensor
    boxes: Tensor
    batch_index: Tensor
    roi: Tensor | None = None
    roi_t: Tensor | None = None
    track: Tensor | None = None
    bank: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_keyframes(self) -> int:
        return int(self.context.shape[0])

    @property
    def num_actors(self) -> int:
        return int(self.pooled.shape[0])

    def to(self, device: torch.device | str) -> ActorBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            context=self.context.to(device),
            pooled=self.pooled.to(device),
            boxes=self.boxes.to(device),
            batch_index=self.batch_index.to(device),
            roi=move(self.roi),
            roi_t=move(self.roi_t),
            track=move(self.track),
            bank={k: v.to(device) for k, v in self.bank.items()},
        )


@dataclass
class HeadOutput:
    """Logits for every actor plus whatever a head wants to expose.

    Attributes:
        logits: Tensor[N, K], one score per class (before sigmoid/softmax).
        aux_losses: named extra loss terms the trainer adds (e.g. IGMN's spatial priors).
        attention: named attention maps for the pictures of the report (shapes per head).
        features: optional Tensor[N, D], the actor representation before the classifier
            (what a long-term bank stores).
    """

    logits: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    attention: dict[str, Tensor] = field(default_factory=dict)
    features: Tensor | None = None
