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
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

ActorPosition = Literal["none", "box_mask"]
ACTOR_POSITIONS: tuple[str, ...] = get_args(ActorPosition)


def check_actor_position(value: str, head: str) -> None:
    if value not in ACTOR_POSITIONS:
        raise ValueError(
            f"{head}: actor_position must be one of {list(ACTOR_POSITIONS)}, got {value!r}"
        )


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
