"""The actor's place in the context map, as an opt-in input of the map relation heads.

ACRN (Sun et al. 2018, §3.2; MMAction2's ``ACRNHead``) and ACAR-Net (Pan et al. 2021,
§3.2; its released ``models/heads/acar.py``) build the first-order map F^i from the actor
vector A^i *tiled over every cell* and the context map X: as published and released,
nothing in that input tells the convolutions which cells are actor i's, so F^i can find
i only by matching its appearance. The relational probes show the cost
(docs/findings-probes.md): on "an object just above *this* actor" both stay at the score
of a model that only counts the scene's objects.

``actor_position="box_mask"`` (default ``"none"``: the papers and releases) adds one input
channel to the first 1x1 convolution, the actor's box as a soft mask over the map
(:func:`box_masks`), so the concatenation is [A^i tiled, X, M^i] (ACRN) or
[X, A^i tiled, M^i] (ACAR release order). Like the releases' split of that convolution
into its actor and context halves, the mask's column is its own 1x1 convolution
(``position``, 1 -> d, no bias) added before the norm / ReLU, so a head with the option
still loads the released weights of the other columns.

AMCRNet (Zhu et al. 2023, §3.2) is a token model: there is no map for a mask column. Its
opt-in, ``actor_position="box_bias"``, is an attention bias (:class:`BoxBias`): each
actor's attention logit to every token gets a learned function of where that token lies
relative to the actor's box (the offsets of the token's region to the box edges), so
"the token just above *this* box" is one bias pattern shared by all actors, instead of
something the absolute positional embeddings would have to encode in a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

ActorPosition = Literal["none", "box_mask"]
ACTOR_POSITIONS: tuple[str, ...] = get_args(ActorPosition)
TokenActorPosition = Literal["none", "box_bias"]
TOKEN_ACTOR_POSITIONS: tuple[str, ...] = get_args(TokenActorPosition)


def check_actor_position(value: str, head: str, allowed: Sequence[str] = ACTOR_POSITIONS) -> None:
    if value not in allowed:
        raise ValueError(f"{head}: actor_position must be one of {list(allowed)}, got {value!r}")


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Float[N, H, W]: the fraction of each map cell covered by each normalized box [N, 4].

    Soft coverage (1 inside, fractions on the edges) rather than a 0/1 test of the cell
    centres, so a box smaller than a cell still marks the cells it touches.
    """

    def coverage(lo: Tensor, hi: Tensor, n: int) -> Tensor:  # [N] edges -> [N, n]
        edges = torch.arange(n + 1, dtype=boxes.dtype, device=boxes.device) / n
        left, right = edges[:-1][None], edges[1:][None]
        overlap = torch.minimum(hi[:, None], right) - torch.maximum(lo[:, None], left)
        return overlap.clamp(min=0) * n

    in_x = coverage(boxes[:, 0], boxes[:, 2], width)  # [N, W]
    in_y = coverage(boxes[:, 1], boxes[:, 3], height)  # [N, H]
    return in_y[:, :, None] * in_x[:, None, :]


def pool_cell_boxes(height: int, width: int, sizes: Sequence[tuple[int, int]]) -> Tensor:
    """Float[M, 4]: the normalized region (x1, y1, x2, y2) of every output cell of adaptive
    pools of an H x W map to each ``(h, w)`` of ``sizes``, in pool order, each row-major.

    Adaptive pooling's cell r of n outputs over H inputs spans rows floor(r H / n) to
    ceil((r + 1) H / n).
    """

    def bins(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
        r = torch.arange(n_out)
        return (r * n_in) // n_out / n_in, -((-(r + 1) * n_in) // n_out) / n_in

    out = []
    for h, w in sizes:
        (y1, y2), (x1, x2) = bins(height, h), bins(width, w)
        grid = [x1[None].expand(h, w), y1[:, None].expand(h, w)]
        grid += [x2[None].expand(h, w), y2[:, None].expand(h, w)]
        out.append(torch.stack(grid, dim=-1).reshape(-1, 4))
    return torch.cat(out).float()


def box_offsets(queries: Tensor, keys: Tensor) -> Tensor:
    """Float[B, A, L, 8]: where each key region [B, L, 4] lies relative to each query box
    [B, A, 4] (normalized x1, y1, x2, y2): the key's edges minus the box's edges (4) and
    the key's centre minus the box's left, right, top and bottom edges (4)."""
    q = queries[:, :, None, :]
    k = keys[:, None, :, :]
    qx1, qy1, qx2, qy2 = q.unbind(-1)
    kx1, ky1, kx2, ky2 = k.unbind(-1)
    kx, ky = (kx1 + kx2) / 2, (ky1 + ky2) / 2
    return torch.stack(
        [kx1 - qx1, ky1 - qy1, kx2 - qx2, ky2 - qy2, kx - qx1, kx - qx2, ky - qy1, ky - qy2],
        dim=-1,
    )


class BoxBias(nn.Module):
    """Attention bias of each actor to every token from the token's offset to its box.

    A small MLP (8 -> ``hidden`` -> ``num_maps``, ReLU) maps :func:`box_offsets` (scaled
    by ``scale``, so a cell's offset is of order 1) to one bias per attention map (block x
    head), as Swin-v2's continuous relative position bias maps coordinate offsets.

    Args:
        num_maps: biases per (actor, token) pair, e.g. blocks x heads.
        hidden: width of the MLP.
        scale: factor on the normalized offsets.
    """

    def __init__(self, *, num_maps: int, hidden: int = 64, scale: float = 4.0) -> None:
        super().__init__()
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, num_maps))

    def forward(self, boxes: Tensor, keys: Tensor) -> Tensor:
        """boxes [B, A, 4], keys [B, L, 4] -> bias [B, A, L, num_maps]."""
        return self.mlp(self.scale * box_offsets(boxes, keys))
