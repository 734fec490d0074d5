"""S-only / T-only person relation heads (Feng et al., AVA-Kinetics 2021 report, §2.2).

Each actor's RoI feature map is cut into tokens along one axis and a transformer encoder
relates the *actors of the same keyframe* at each position:

* ``mode="spatial"`` (S-only): from ``batch.roi`` [N, C, 7, 7] (already aggregated over
  time by the store), one sequence per spatial position (h, w), i.e. 49 sequences of the
  keyframe's actors ``{agg_t P^i_{t,h,w} | i in I}``.
* ``mode="temporal"`` (T-only): from ``batch.roi_t`` [N, C, T, 7, 7] aggregated over space
  (``agg_h agg_w``), one sequence per temporal position t, i.e. T sequences of actors.

The encoder's weights are shared across positions; its outputs are averaged over the
positions into the actor representation (``HeadOutput.features``) and a linear classifier
gives the logits.

Choices where the report is silent (it gives no widths or depths), with reasons:

* ``hidden_dim=512``: a linear projection C -> 512 before the encoder, as the other
  relation heads of this family use (ACAR's HR2O d=512); 2304-wide tokens would cost 20x
  the attention parameters for no reported gain.
* ``num_layers=1``: the report speaks of "a transformer encoder block" per position.
* ``num_heads=8``, ``mlp_ratio=4``, ``dropout=0.1``, post-norm: the Vaswani et al.
  encoder the report cites.
* No positional encoding on the actor axis: actors form a set, so the head stays
  permutation-equivariant across actors (permuting the actors permutes the logits).
* ``aggregation="avg"`` for T-only's pooling over space (the report allows average or max);
  S-only's pooling over time is the store's (``roi`` is temporally averaged at extraction).
* The report's fusion of person features with the video map (concatenation + convolutions,
  §2.1, unspecified) is left out: the tokens are the stored RoI features themselves.
* ``classifier_dropout=0.5`` before the classifier, as the SlowFast AVA heads use.

Padded actors are excluded with a key-padding mask, so a keyframe's outputs do not depend
on the other keyframes of the batch.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head
from models.heads.ragged import pad_actors, unpad_actors

Mode = Literal["spatial", "temporal"]


class RelationEncoderLayer(nn.Module):
    """One transformer encoder layer that also returns its attention weights.

    ``torch.nn.TransformerEncoderLayer`` hides the attention map, which the report's
    figures need, hence this small layer (same maths: MHSA + MLP with residuals).

    Args:
        dim: token width D.
        num_heads: attention heads (D must be divisible by it).
        mlp_ratio: hidden width of the MLP as a multiple of D.
        dropout: dropout on attention weights and residual branches.
        norm_first: pre-norm (ViT style) if True, post-norm (Vaswani) if False.
    """

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float, dropout: float, norm_first: bool
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"token width {dim} must be divisible by num_heads={num_heads}")
        self.norm_first = norm_first
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        hidden = max(1, round(dim * mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None, attn_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x: [S, L, D]; key_padding_mask: BoolTensor[S, L], True = ignore that key;
        attn_bias: optional Tensor[S * num_heads, L, L] added to the attention logits.

        Returns the new tokens [S, L, D] and the head-averaged attention [S, L, L].
        """
        h = self.norm1(x) if self.norm_first else x
        if attn_bias is not None and key_padding_mask is not None:
            # one float mask: torch refuses a float attn_mask beside a bool padding mask
            heads = attn_bias.shape[0] // x.shape[0]
            pad = key_padding_mask.repeat_interleave(heads, dim=0)[:, None, :]
            attn_bias = attn_bias.masked_fill(pad, float("-inf"))
            key_padding_mask = None
        attended, weights = self.attn(
            h, h, h, key_padding_mask=key_padding_mask, attn_mask=attn_bias, need_weights=True
        )
        x = x + self.drop(attended)
        if not self.norm_first:
            x = self.norm1(x)
        h = self.norm2(x) if self.norm_first else x
        x = x + self.drop(self.mlp(h))
        if not self.norm_first:
            x = self.norm2(x)
        return x, weights


def attendable(mask: Tensor) -> Tensor:
    """Key-padding mask (True = ignore) from an actor mask [S, L] (True = real actor).

    A keyframe without actors would have every key masked and produce NaN (also in the
    backward pass); its slot 0 is left attendable instead. That slot is padding, so its
    output is never read back.
    """
    ignore = ~mask
    if ignore.shape[1] > 0:
        ignore[:, 0] = False
    return ignore


class RelationTransformerHead(Head):
    """S-only (``mode="spatial"``) or T-only (``mode="temporal"``) relation head.

    Reads ``batch.roi`` [N, C, 7, 7] (spatial) or ``batch.roi_t`` [N, C, T, 7, 7]
    (temporal) and ``batch.batch_index``. Returns logits [N, K], ``features`` [N, D]
    (position-averaged encoder output) and ``attention["relation"]`` [N, P, Nmax]: for
    each actor and position, the last layer's attention over the keyframe's actor slots
    (padding slots get weight 0).
    """

    # memory: the pooled person tokens (AVA-Kinetics report §2.3).
    BANK_SOURCES = ("lfb", "memory")

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        mode: Mode = "spatial",
        hidden_dim: int = 512,
        num_layers: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        aggregation: Literal["avg", "max"] = "avg",
        classifier_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if mode not in ("spatial", "temporal"):
            raise ValueError(f"mode must be 'spatial' or 'temporal', got {mode!r}")
        if aggregation not in ("avg", "max"):
            raise ValueError(f"aggregation must be 'avg' or 'max', got {aggregation!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.mode: Mode = mode
        # The feature-store arrays this head reads (the trainer reads nothing else).
        self.reads = frozenset({"pooled", "roi" if mode == "spatial" else "roi_t"})
        self.aggregation = aggregation
        self.in_channels = in_channels
        self.project = nn.Linear(in_channels, hidden_dim)
        self.layers = nn.ModuleList(
            RelationEncoderLayer(
                dim=hidden_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                norm_first=False,
            )
            for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def _tokens(self, batch: ActorBatch) -> Tensor:
        """Per-actor tokens [N, P, C]: P = 7*7 spatial or T temporal positions."""
        if self.mode == "spatial":
            roi = batch.roi
            if roi is None:
                raise ValueError(
                    "RelationTransformerHead(mode='spatial') reads batch.roi [N, C, 7, 7], "
                    "but the batch has none: extract the feature store with the optional "
                    "'roi' array"
                )
            if roi.dim() != 4 or roi.shape[1] != self.in_channels:
                raise ValueError(
                    f"batch.roi must be [N, {self.in_channels}, H, W], got {tuple(roi.shape)}"
                )
            return roi.flatten(2).transpose(1, 2)  # (N, H*W, C)
        roi_t = batch.roi_t
        if roi_t is None:
            raise ValueError(
                "RelationTransformerHead(mode='temporal') reads batch.roi_t [N, C, T, 7, 7], "
                "but the batch has none: extract the feature store with the optional "
                "'roi_t' array"
            )
        if roi_t.dim() != 5 or roi_t.shape[1] != self.in_channels:
            raise ValueError(
                f"batch.roi_t must be [N, {self.in_channels}, T, H, W], got {tuple(roi_t.shape)}"
            )
        flat = roi_t.flatten(3)  # (N, C, T, H*W)
        agg = flat.mean(dim=3) if self.aggregation == "avg" else flat.amax(dim=3)
        return agg.transpose(1, 2)  # (N, T, C)

    def bank_rows(self, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
        if kind == "memory":
            return {"features": self.memory_features(batch)}
        return super().bank_rows(kind, batch)

    def memory_features(self, batch: ActorBatch) -> Tensor:
        """Pooled person features Tensor[N, C]: the input tokens averaged over positions
        (what the memory bank of the AVA-Kinetics report, §2.3, stores)."""
        return self._tokens(batch).mean(dim=1)

    def forward(self, batch: ActorBatch) -> HeadOutput:
        tokens = self._tokens(batch)
        x = self.project(tokens)  # (N, P, D)
        if batch.num_actors == 0:
            features = x.mean(dim=1)
            attn = x.new_zeros(0, x.shape[1], 0)
            return HeadOutput(
                logits=self.classifier(features), features=features, attention={"relation": attn}
            )
        padded, mask = pad_actors(x, batch.batch_index, batch.num_keyframes)  # (B, A, P, D)
        b, a, p, d = padded.shape
        # one sequence of actors per (keyframe, position); weights shared across positions
        seq = padded.permute(0, 2, 1, 3).reshape(b * p, a, d)
        seq_mask = mask.unsqueeze(1).expand(b, p, a).reshape(b * p, a)
        ignore = attendable(seq_mask)
        weights = seq.new_zeros(b * p, a, a)  # (B*P, A, A), replaced by the last layer
        for layer in self.layers:
            seq, weights = layer(seq, ignore)
        seq = seq.reshape(b, p, a, d).permute(0, 2, 1, 3)  # (B, A, P, D)
        per_actor = unpad_actors(seq, mask)  # (N, P, D)
        features = per_actor.mean(dim=1)  # (N, D)
        attn = unpad_actors(weights.reshape(b, p, a, a).permute(0, 2, 1, 3), mask)
        logits = self.classifier(self.dropout(features))
        return HeadOutput(logits=logits, features=features, attention={"relation": attn})
