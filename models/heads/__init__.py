"""Relation heads: ``head(ActorBatch) -> HeadOutput`` (logits for every actor).

``build_head(name, in_channels=C, num_classes=K, **paper_hyper_parameters)``; the names
are the ones pipeline configs use (``train.runs.<run>.head``). What a head is and may
declare: :mod:`models.heads.contract`; the names: :mod:`models.heads.registry`.
"""

from __future__ import annotations

from models.heads.bank_features import bank_rows
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import (
    FEATURE_ARRAYS,
    Head,
    HeadData,
    build_from_data,
    head_class,
    head_reads,
    validate_head_kwargs,
)
from models.heads.registry import BANK_KINDS, HEADS, ONLINE_KINDS, build_head

__all__ = [
    "BANK_KINDS",
    "FEATURE_ARRAYS",
    "HEADS",
    "ONLINE_KINDS",
    "ActorBatch",
    "Head",
    "HeadData",
    "HeadOutput",
    "bank_rows",
    "build_from_data",
    "build_head",
    "head_class",
    "head_reads",
    "validate_head_kwargs",
]
