"""SlowFast-Det baseline head: pooled actor feature -> dropout -> fully connected."""

from __future__ import annotations

from torch import nn

from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head


class LinearHead(Head):
    """Classify each actor from its RoIAlign + max-pooled feature alone.

    ``features`` is the pooled actor feature itself ([N, C]); dropout 0.5 as in
    SlowFast-Det (Feichtenhofer et al., "SlowFast Networks", §5 AVA).
    """

    # The feature-store arrays this head reads (the trainer reads nothing else).
    reads = frozenset({"pooled"})

    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, batch: ActorBatch) -> HeadOutput:
        feats = batch.pooled  # [N, C]
        logits = self.classifier(self.dropout(feats))  # [N, K]
        return HeadOutput(logits=logits, features=feats)
