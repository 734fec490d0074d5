"""T-only relation head with a memory bank (AVA-Kinetics 2021 report, §2.2-2.3).

The T-only head (``RelationTransformerHead(mode="temporal")``) relates the actors of a
keyframe at every temporal position t of their RoI features. With memory, the person
features stored for the keyframes around t (``batch.bank["features"]``, [B, L, C], written
by ``bank_rows(stage1_tonly, "memory", ...)``: each person's tokens averaged over time)
"are concatenated and fed into the relation modeling module": at every temporal position
the sequence is [the keyframe's actor tokens ; its memory tokens], one transformer encoder
(weights shared across positions) relates them, and the actors' outputs averaged over the
positions are classified.

Choices where the report is silent, with reasons:

- Memory tokens get their own linear projection C_bank -> hidden_dim, so the encoder can
  tell a stored person from a current one (there is no other marker); when the bank width
  equals the head's input width, ``init_from_stage1`` starts it from the stage-1 token
  projection (the memory features live where the tokens live).
- Memory tokens carry no temporal position: they are pooled over time, and the report
  concatenates them as they are; the same memory tokens join every temporal position.
- The current keyframe's own entries are best excluded by the window reader ("previously
  stored person features of timestamps within a long range"; the current persons are
  tokens already); if included they are just more memory tokens.
- Padded memory entries and padded actor slots are masked out of the keys; a keyframe
  with an empty window is the plain T-only head (same weights, no memory keys).
- Encoder sizes, aggregation and dropouts are the T-only head's (``relation_transformer``).
- ``init_from_stage1`` loads a stage-1 T-only state (the report's "fine-tune the relation
  head and classifier" strategy, Table 2); without it the head is re-initialised.

``HeadOutput.features``: Tensor[N, hidden_dim]; ``attention["relation"]``: Tensor[N, T,
A + L], the last layer's weights of each actor over the keyframe's actor slots then its
memory entries (0 at padding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.heads.bank_features import bank_window
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head, constructor_arguments
from models.heads.ragged import pad_actors, unpad_actors
from models.heads.relation_transformer import RelationTransformerHead, attendable


class TOnlyMemoryHead(Head):
    """T-only relation transformer whose sequences also hold the memory window's persons.

    Reads ``batch.roi_t`` [N, C, T, 7, 7], ``batch.batch_index`` and ``batch.bank``:
    ``mask`` [B, L], ``features`` [B, L, bank_dim].
    """

    BANK_KIND = "memory"
    ONLINE_MEMORY = True
    reads = frozenset({"pooled", "roi_t"})

    @classmethod
    def memory_dim(cls, in_channels: int, kwargs: Mapping[str, Any]) -> int:
        # features = the relation module's output, hidden_dim wide
        return int(constructor_arguments(cls, in_channels, kwargs)["hidden_dim"])

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        bank_dim: int | None = None,
        hidden_dim: int = 512,
        num_layers: int = 1,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        aggregation: Literal["avg", "max"] = "avg",
        classifier_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.relation = RelationTransformerHead(
            in_channels=in_channels,
            num_classes=num_classes,
            mode="temporal",
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            aggregation=aggregation,
            classifier_dropout=classifier_dropout,
        )
        self.bank_dim = in_channels if bank_dim is None else bank_dim
        self.project_memory = nn.Linear(self.bank_dim, hidden_dim)

    # Read-only: the wrapped head's classifier (Head declares it as a plain attribute).
    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        """The final classifier (the wrapped T-only head's): what cRT re-trains."""
        return self.relation.classifier

    def init_from_stage1(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Start from a stage-1 T-only head (all of it); returns the keys left fresh."""
        self.relation.load_state_dict(dict(state_dict))
        if self.bank_dim == self.relation.in_channels:
            self.project_memory.load_state_dict(self.relation.project.state_dict())
            return []
        return sorted(f"project_memory.{k}" for k in self.project_memory.state_dict())

    def forward(self, batch: ActorBatch) -> HeadOutput:
        window = bank_window(batch, {"features": 1}, type(self).__name__)
        memory = window["features"]
        if memory.shape[-1] != self.bank_dim:
            raise ValueError(
                f"TOnlyMemoryHead(bank_dim={self.bank_dim}) got bank features {tuple(memory.shape)}"
            )
        rel = self.relation
        x = rel.project(rel._tokens(batch))  # (N, T, D)
        if batch.num_actors == 0:
            features = x.mean(dim=1)
            return HeadOutput(logits=rel.classifier(features), features=features)
        padded, mask = pad_actors(x, batch.batch_index, batch.num_keyframes)  # (B, A, T, D)
        b, a, p, d = padded.shape
        mem = self.project_memory(memory.to(x.dtype))  # (B, L, D)
        length = mem.shape[1]
        # one sequence [actors ; memory] per (keyframe, temporal position)
        actors = padded.permute(0, 2, 1, 3)  # (B, T, A, D)
        seq = torch.cat([actors, mem[:, None].expand(b, p, length, d)], dim=2)
        seq = seq.reshape(b * p, a + length, d)
        keep = torch.cat([mask, window["mask"]], dim=1)  # (B, A + L)
        ignore = attendable(keep[:, None].expand(b, p, a + length).reshape(b * p, a + length))
        weights = seq.new_zeros(b * p, a + length, a + length)
        for layer in rel.layers:
            seq, weights = layer(seq, ignore)
        out = seq[:, :a].reshape(b, p, a, d).permute(0, 2, 1, 3)  # (B, A, T, D)
        features = unpad_actors(out, mask).mean(dim=1)  # (N, D)
        attn = weights[:, :a].reshape(b, p, a, a + length).permute(0, 2, 1, 3)
        logits = rel.classifier(rel.dropout(features))
        return HeadOutput(
            logits=logits, features=features, attention={"relation": unpad_actors(attn, mask)}
        )
