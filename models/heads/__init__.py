"""Relation heads: ``head(ActorBatch) -> HeadOutput`` (logits for every actor).

``build_head(name, in_channels=C, num_classes=K, **paper_hyper_parameters)``; the names
are the ones pipeline configs use (``train.runs.<run>.head``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from models.heads.acar import ACARHead
from models.heads.acrn import ACRNHead
from models.heads.amcr import AMCRHead, amcr_slim_head
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.igmn_dam import IGMNDAMHead
from models.heads.linear import LinearHead
from models.heads.pcca import PCCAHead
from models.heads.relation_transformer import RelationTransformerHead

HEADS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearHead,
    "acrn": ACRNHead,
    "acar": ACARHead,
    "amcr": AMCRHead,
    "amcr_slim": amcr_slim_head,
    "pcca": PCCAHead,
    "sonly": partial(RelationTransformerHead, mode="spatial"),
    "tonly": partial(RelationTransformerHead, mode="temporal"),
    "igmn_dam": IGMNDAMHead,
}


def build_head(name: str, *, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the head called ``name`` (a key of ``HEADS``) with the paper's defaults."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)


__all__ = ["HEADS", "ActorBatch", "HeadOutput", "build_head"]
