"""``HEADS``: every head by the name pipeline configs use (``train.runs.<run>.head``).

A new head is one file (a :class:`models.heads.contract.Head`) and one line here; the bank
kinds are derived from what the heads declare (docs/design.md §9).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from models.heads.acar import ACARHead
from models.heads.acar_acfb import ACARACFBHead
from models.heads.acrn import ACRNHead
from models.heads.amcr import AMCR_SLIM, AMCRHead
from models.heads.amcr_hafb import AMCRHAFBHead
from models.heads.contract import Head, head_class
from models.heads.igmn import IGMNHead
from models.heads.igmn_dam import IGMNDAMHead
from models.heads.lfb import LFBHead
from models.heads.linear import LinearHead
from models.heads.pcca import PCCAHead
from models.heads.relation_transformer import RelationTransformerHead
from models.heads.tonly_memory import TOnlyMemoryHead

HEADS: dict[str, Callable[..., Head]] = {
    "linear": LinearHead,
    "acrn": ACRNHead,
    "acar": ACARHead,
    "amcr": AMCRHead,
    "amcr_slim": partial(AMCRHead, **AMCR_SLIM),
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


def _bank_kinds() -> tuple[str, ...]:
    kinds: dict[str, None] = {}
    for entry in HEADS.values():
        cls = head_class(entry)
        kinds.update(dict.fromkeys(cls.BANK_SOURCES))
        if cls.BANK_KIND is not None:
            kinds[cls.BANK_KIND] = None
    return tuple(kinds)


# Every bank kind: what the stage-1 heads fill (BANK_SOURCES) and stage-2 heads read
# (BANK_KIND), in HEADS order.
BANK_KINDS: tuple[str, ...] = _bank_kinds()
# The kinds a stage-2 head can also read from an online memory of its own features.
ONLINE_KINDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        str(head_class(e).BANK_KIND)
        for e in HEADS.values()
        if head_class(e).BANK_KIND is not None and head_class(e).ONLINE_MEMORY
    )
)


def build_head(name: str, *, in_channels: int, num_classes: int, **kwargs: Any) -> Head:
    """Build the head called ``name`` (a key of ``HEADS``) with the paper's defaults."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)
