"""What the stage-2 head tests share: random bank windows in the window reader's layout.

A window for B keyframes with ``sizes[b]`` real entries each, padded to L = max(sizes)
(``mask`` False, ``dt`` 0, ``track`` -1, arrays 0 at the padding), as the bank contract in
``models/heads/batch.py`` describes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from models.heads.batch import ActorBatch


def random_window(
    sizes: list[int],
    arrays: dict[str, tuple[int, ...]],
    *,
    seed: int = 0,
    pad_to: int | None = None,
    tracks: int = 3,
) -> dict[str, Tensor]:
    """Random bank window: ``arrays`` maps a name to its per-entry shape (``(D,)``, ...).

    Entries of keyframe b get ``dt`` in whole seconds (-2, -1, 0, 1, ... cycling over the
    entries) and track ids ``entry % tracks``; ``pad_to`` widens L with extra padding.
    """
    g = torch.Generator().manual_seed(seed)
    b = len(sizes)
    length = max([*sizes, 0]) if pad_to is None else pad_to
    mask = torch.zeros(b, length, dtype=torch.bool)
    dt = torch.zeros(b, length)
    track = torch.full((b, length), -1, dtype=torch.long)
    out: dict[str, Tensor] = {}
    for name, shape in arrays.items():
        out[name] = torch.zeros(b, length, *shape)
    for k, n in enumerate(sizes):
        mask[k, :n] = True
        dt[k, :n] = torch.arange(n, dtype=torch.float32) // tracks - 1
        track[k, :n] = torch.arange(n) % tracks
        for name, shape in arrays.items():
            out[name][k, :n] = torch.randn(n, *shape, generator=g)
    current = mask & (dt == 0)
    return {"mask": mask, "dt": dt, "track": track, "current": current, **out}


def with_bank(batch: ActorBatch, window: dict[str, Tensor]) -> ActorBatch:
    """``batch`` carrying ``window`` as its bank."""
    return replace(batch, bank=dict(window))


def poison_padding(window: dict[str, Tensor], arrays: list[str], value: float = 1e3):
    """A copy of ``window`` whose padded entries hold ``value`` in ``arrays`` (and odd dt/track)."""
    out = {k: v.clone() for k, v in window.items()}
    pad = ~window["mask"]
    for name in arrays:
        out[name][pad] = value
    out["dt"][pad] = 77.0
    out["track"][pad] = 5
    return out


def keyframe_window(window: dict[str, Tensor], keyframe: int) -> dict[str, Tensor]:
    """The window of one keyframe alone (B = 1)."""
    return {k: v[keyframe : keyframe + 1] for k, v in window.items()}
