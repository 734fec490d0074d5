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
from models.heads.acar_acfb import ACARACFBHead
from models.heads.acrn import ACRNHead
from models.heads.amcr import AMCRHead, amcr_slim_head
from models.heads.amcr_hafb import AMCRHAFBHead
from models.heads.bank_features import BANK_KINDS, bank_rows
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.igmn import IGMNHead
from models.heads.igmn_dam import IGMNDAMHead
from models.heads.lfb import LFBHead
from models.heads.linear import LinearHead
from models.heads.pcca import PCCAHead
from models.heads.relation_transformer import RelationTransformerHead
from models.heads.tonly_memory import TOnlyMemoryHead

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
    # stage 2: read a long-term bank window (BANK_KIND says which bank)
    "lfb": LFBHead,
    "acar_acfb": ACARACFBHead,
    "tonly_memory": TOnlyMemoryHead,
    "amcr_hafb": AMCRHAFBHead,
    "igmn": IGMNHead,
}


def build_head(name: str, *, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the head called ``name`` (a key of ``HEADS``) with the paper's defaults."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)


FEATURE_ARRAYS = frozenset({"context", "pooled", "roi", "roi_t"})


def head_reads(head: nn.Module) -> frozenset[str]:
    """The feature-store arrays ``head`` looks at (its ``reads`` attribute; every array for
    a head that does not say). The trainer reads only these, so a head on pooled features
    does not pay for reading context maps."""
    reads = getattr(head, "reads", None)
    if reads is None:
        return FEATURE_ARRAYS
    unknown = set(reads) - FEATURE_ARRAYS
    if unknown:
        raise ValueError(
            f"{type(head).__name__}.reads names unknown arrays {sorted(unknown)}; "
            f"expected a subset of {sorted(FEATURE_ARRAYS)}"
        )
    return frozenset(reads) | {"pooled"}


__all__ = [
    "BANK_KINDS",
    "FEATURE_ARRAYS",
    "HEADS",
    "ActorBatch",
    "HeadOutput",
    "bank_rows",
    "build_head",
    "head_reads",
]
