"""The head contract: what every head of ``HEADS`` is, what it may declare, how it is built.

Every head is a :class:`Head` (an ``nn.Module``: ``head(ActorBatch) -> HeadOutput``). The
optional features the stages use are declared here with their defaults, so no stage looks
a head up by name, by ``getattr`` or by signature (docs/design.md §5):

==================== ======================= ===========================================
declaration          default                 used by
==================== ======================= ===========================================
``reads``            None (every array)      train: which feature-store arrays to read
``needs_labels``     False                   the loop: ``head(batch, labels=...)``
``BANK_KIND``        None (a stage-1 head)   train_bank: the bank kind it reads
``BANK_SOURCES``     ``("lfb",)``            dump: the kinds its ``bank_rows`` fills
``bank_rows``        lfb: ``features``       dump, infer (the bank over a new video)
``ONLINE_MEMORY``    False                   train_bank ``bank_mode: online``
``memory_dim``       (if ONLINE_MEMORY)      train_bank/infer: the online memory's width
``init_from_stage1`` None                    train_bank ``init: stage1``
``ATTENTION``        None (no picture)       ``bankflow attention``: which maps, drawn how
``classifier``       (required)              rebalance (cRT): the final ``nn.Linear``
``kwargs_from_data`` the bank's widths       the one constructor, :func:`build_from_data`
==================== ======================= ===========================================

A picture style also names what the head must have: ``context_tokens`` a
``context_scales`` attribute, ``enlarged_box`` ``context_scale`` and ``roi_size``.

Bank kinds are declared by the heads (``BANK_SOURCES`` of the producers, ``BANK_KIND`` of
the readers); :data:`models.heads.BANK_KINDS` is derived from them.

This module imports torch only; :func:`validate_head_kwargs` imports the registry (every
head module; torchvision waits for the first RoIAlign, :mod:`models.heads.ops`) when called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from models.heads.batch import ActorBatch

FEATURE_ARRAYS = frozenset({"context", "pooled", "roi", "roi_t"})
# Build arguments that come from the data, never from ``head_kwargs``.
DATA_ARGS = ("in_channels", "num_classes")
# How ``bankflow attention`` draws a head's maps (stages/tools/attention.py):
# actor_pairs: [B, L, Nmax, M, H, W] weights of actor j seen from actor i (ACAR's HR2O);
# context_tokens: [N, M] weights over context tokens of ``context_scales`` (AMCR's BHOI);
# enlarged_box: [N, R, R] maps over each actor's box enlarged by ``context_scale`` (IGMN).
PictureStyle = Literal["actor_pairs", "context_tokens", "enlarged_box"]


@dataclass(frozen=True)
class Attention:
    """A head's attention picture: its ``HeadOutput.attention`` keys and how to draw them."""

    maps: tuple[str, ...]
    style: PictureStyle


@dataclass(frozen=True)
class HeadData:
    """What the data (not the config) gives a head at build time.

    Attributes:
        in_channels: C, the feature store's pooled width.
        num_classes: K, the evaluated classes.
        exclusive: dense indices of the mutually exclusive (softmax, pose) classes.
        bank_arrays: per-row shapes of an offline bank's arrays (stage 2), e.g.
            ``{"features": (D,)}``; None without a bank.
        online_memory: stage 2 on an online memory of the head's own features: its
            ``bank_dim`` is set to :meth:`Head.memory_dim`.
    """

    in_channels: int
    num_classes: int
    exclusive: tuple[int, ...] = ()
    bank_arrays: Mapping[str, tuple[int, ...]] | None = None
    online_memory: bool = False


class Head(nn.Module):
    """The base of every head: the optional features, with their defaults (module doc)."""

    # Feature-store arrays the head looks at (a subset of FEATURE_ARRAYS; "pooled" is always
    # read). None: every array the store holds.
    reads: frozenset[str] | None = None
    # True: forward(batch, labels=multi-hot [N, K]) while training (auxiliary losses).
    needs_labels: ClassVar[bool] = False
    # Stage 2: the kind of long-term bank read from ``batch.bank``. None: a stage-1 head.
    BANK_KIND: ClassVar[str | None] = None
    # The bank kinds ``bank_rows`` fills when the head is a bank's stage-1 source.
    BANK_SOURCES: ClassVar[tuple[str, ...]] = ("lfb",)
    # Stage 2: the bank can also be an online memory of the head's own features (then
    # ``memory_dim`` gives its width).
    ONLINE_MEMORY: ClassVar[bool] = False
    # The attention picture ``bankflow attention`` draws (None: the head has none).
    ATTENTION: ClassVar[Attention | None] = None
    # Stage 2: ``init_from_stage1(state_dict) -> keys left at their fresh values``, or None
    # when the head cannot start from a stage-1 head.
    init_from_stage1: Callable[[Mapping[str, Tensor]], list[str]] | None = None
    # The final classifier: logits == classifier(its input) (cRT re-trains it).
    classifier: nn.Linear

    @classmethod
    def kwargs_from_data(cls, data: HeadData) -> dict[str, Any]:
        """Build arguments derived from the data; ``head_kwargs`` of the config win. The
        default: a stage-2 head's bank widths, ``bank_dim`` (the width of ``features``, or
        ``d`` of ``maps``) and ``<array>_dim``, where its constructor takes them."""
        if not data.bank_arrays:
            return {}
        params = constructor_parameters(cls)
        out: dict[str, Any] = {}
        for name, shape in data.bank_arrays.items():
            if f"{name}_dim" in params and shape:
                out[f"{name}_dim"] = int(shape[0])
        main = data.bank_arrays.get("features") or data.bank_arrays.get("maps")
        if "bank_dim" in params and main:
            out["bank_dim"] = int(main[0])
        return out

    @classmethod
    def memory_dim(cls, in_channels: int, kwargs: Mapping[str, Any]) -> int:
        """Width of ``HeadOutput.features`` when built with ``kwargs``: the row width of an
        online memory the head writes and reads back (its ``bank_dim``). Heads with
        ``ONLINE_MEMORY`` say."""
        raise ValueError(f"{cls.__name__} cannot read an online memory (ONLINE_MEMORY False)")

    def bank_rows(self, kind: str, batch: ActorBatch) -> dict[str, Tensor]:
        """The arrays of bank ``kind`` per actor of ``batch`` (rows in actor order). Called
        by :func:`models.heads.bank_features.bank_rows` (eval mode, no grad)."""
        if kind == "lfb" and "lfb" in self.BANK_SOURCES:
            out = self(batch)
            if out.features is None:
                raise ValueError(
                    f"bank kind 'lfb' stores HeadOutput.features, which {type(self).__name__} "
                    "leaves empty"
                )
            return {"features": out.features}
        raise ValueError(
            f"bank kind {kind!r} cannot be filled by {type(self).__name__} (it fills "
            f"{', '.join(self.BANK_SOURCES)})"
        )


def head_class(entry: Callable[..., nn.Module]) -> type[Head]:
    """The class a ``HEADS`` entry builds (the entry itself, or a ``partial`` of it)."""
    target = getattr(entry, "func", entry)  # functools.partial
    if not (isinstance(target, type) and issubclass(target, Head)):
        raise TypeError(f"HEADS entry {entry!r} does not build a models.heads.contract.Head")
    return target


def constructor_parameters(entry: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(entry).parameters


def constructor_arguments(
    entry: Callable[..., Any], in_channels: int, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Every argument ``entry`` is built with for ``kwargs`` (its defaults filled in)."""
    bound = inspect.signature(entry).bind(in_channels=in_channels, num_classes=1, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def validate_head_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Check ``head_kwargs`` against the constructor of head ``name`` (at config load).

    Raises:
        ValueError: unknown head, a key the head does not take (names it and the keys it
            takes), or a key that comes from the data (``in_channels``, ``num_classes``).
    """
    from models.heads.registry import HEADS

    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    params = constructor_parameters(HEADS[name])
    taken = sorted(p for p in params if p not in DATA_ARGS)
    for key in kwargs:
        if key in DATA_ARGS:
            raise ValueError(
                f"head_kwargs: {key!r} comes from the data (the feature store / label map); "
                "remove it"
            )
        if key not in params:
            raise ValueError(
                f"head_kwargs: head {name!r} takes no {key!r} (it takes {', '.join(taken)})"
            )


def completed_kwargs(name: str, data: HeadData, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with what the data gives head ``name`` filled in where not given."""
    from models.heads.registry import HEADS

    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}")
    return {**head_class(HEADS[name]).kwargs_from_data(data), **kwargs}


def build_from_data(
    name: str, data: HeadData, kwargs: Mapping[str, Any]
) -> tuple[Head, dict[str, Any]]:
    """The one constructor: head ``name`` for ``data`` with the config's ``kwargs``.

    Returns the head and the complete build arguments (what ``head.pt`` records, so the
    head is rebuilt with :func:`models.heads.build_head` alone).
    """
    from models.heads.registry import HEADS, build_head

    full = completed_kwargs(name, data, kwargs)
    if data.online_memory:
        full["bank_dim"] = head_class(HEADS[name]).memory_dim(data.in_channels, full)
    head = build_head(name, in_channels=data.in_channels, num_classes=data.num_classes, **full)
    return head, full


def head_reads(head: nn.Module) -> frozenset[str]:
    """The feature-store arrays ``head`` looks at (its ``reads``; every array for a module
    that does not say). The trainer reads only these, so a head on pooled features does
    not pay for reading context maps."""
    reads = getattr(head, "reads", None)  # any nn.Module (tests, older heads)
    if reads is None:
        return FEATURE_ARRAYS
    unknown = set(reads) - FEATURE_ARRAYS
    if unknown:
        raise ValueError(
            f"{type(head).__name__}.reads names unknown arrays {sorted(unknown)}; "
            f"expected a subset of {sorted(FEATURE_ARRAYS)}"
        )
    return frozenset(reads) | {"pooled"}


def aux_class_mask(data: HeadData) -> list[bool]:
    """Per class: True unless exclusive (the pose classes IGMN's auxiliary losses skip)."""
    exclusive = set(data.exclusive)
    return [k not in exclusive for k in range(data.num_classes)]
