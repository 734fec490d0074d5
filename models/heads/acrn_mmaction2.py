"""MMAction2's ACRN (``ACRNHead`` shared head + ``BBoxHeadAVA``), and its checkpoint keys.

MMAction2 (``mmaction/models/roi_heads/shared_heads/acrn_head.py``, AVA config
``slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_ava22-rgb.py``), on the
temporally pooled map [B, C, H, W] and each actor's RoIAlign max-pooled to [C]:

- the actor vector is tiled over H x W and concatenated **before** the context map
  ([A^i, X], 2C channels; no reduction of either);
- 1x1 conv (2C -> d, no bias) + BatchNorm + ReLU, then a 3x3 conv (d -> d, padding 1,
  ``stride``, no bias) + BatchNorm + ReLU, then ``num_convs - 1`` more 3x3 + BN + ReLU
  (its 3-D convs have temporal kernel 1 on a map of temporal size 1: 2-D here);
- ``BBoxHeadAVA``: temporal average (a no-op on one frame), **spatial max** of the map,
  dropout 0.5, ``fc_cls`` (d -> classes, with bias).

Sun et al. ("Actor-Centric Relation Network", ECCV 2018, §3.2) describe the tiling, the
concatenation and "a 1x1 conv then 3x3 convs"; where they leave order, norm and pooling
open, MMAction2's release decides here (ACAR-Net §3.2 cites the same design).

Checkpoint keys: ``roi_head.shared_head.conv1.conv`` / ``.bn`` -> ``conv1`` / ``bn1``,
``conv2.conv`` / ``.bn`` -> ``conv2`` / ``bn2``, ``convs.{i}.conv`` / ``.bn`` ->
``convs.{i}.0`` / ``.1``, ``roi_head.bbox_head.fc_cls`` -> ``classifier``; 3-D weights
[d, c, 1, k, k] lose their temporal axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from models.heads.position import box_masks

SHARED = "roi_head.shared_head."
FC_CLS = "roi_head.bbox_head.fc_cls."


class MMAction2ACRN(nn.Module):
    """The relation maps of MMAction2's ACRN: Tensor[N, d, H', W'] (H' = H / stride)."""

    def __init__(
        self,
        *,
        in_channels: int,
        dim: int,
        stride: int = 1,
        num_convs: int = 1,
        box_mask: bool = False,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.conv1 = nn.Conv2d(2 * in_channels, dim, 1, bias=False)
        # Opt-in (not in MMAction2): conv1's column for the actor's box mask
        # (models.heads.position), so conv1 sees [A^i tiled, X, M^i].
        self.position = nn.Conv2d(1, dim, 1, bias=False) if box_mask else None
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim))
            for _ in range(num_convs - 1)
        )

    def forward(
        self, actor: Tensor, context: Tensor, batch_index: Tensor, boxes: Tensor | None = None
    ) -> Tensor:
        """actor [N, C] (max-pooled RoI), context [B, C, H, W], batch_index [N]; boxes
        [N, 4] normalized (read only with the box mask).

        ``conv1`` on [A^i tiled, X] is its actor half on each vector plus its context half
        on each keyframe's map (it is linear, BN comes after the sum).
        """
        c = actor.shape[1]
        weight = self.conv1.weight  # [d, 2C, 1, 1]: actor channels first, then context
        ctx = nn.functional.conv2d(context, weight[:, c:])[batch_index.long()]
        x = ctx + (actor @ weight[:, :c, 0, 0].t())[:, :, None, None]
        if self.position is not None:
            if boxes is None:
                raise ValueError("an ACRN with the box mask needs the actors' boxes")
            x = x + self.position(box_masks(boxes, *context.shape[-2:])[:, None])
        x = self.bn1(x).relu()
        x = self.bn2(self.conv2(x)).relu()
        for conv in self.convs:
            x = conv(x).relu()
        return x


def mmaction2_acrn_state(
    state: Mapping[str, Tensor], *, class_index: Sequence[int] | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(ACRNHead state with the ``encoder.`` and ``classifier.`` keys, other keys).

    ``class_index``: the rows of ``fc_cls`` to keep, in the head's class order (for AVA
    the row is the action id; row 0 is the background class); None = all rows.
    """
    head: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(FC_CLS):
            rows = value if class_index is None else value[list(class_index)]
            head["classifier." + key[len(FC_CLS) :]] = rows
        elif key.startswith(SHARED):
            name = key[len(SHARED) :]
            for old, new in (
                ("conv1.conv.", "conv1."),
                ("conv1.bn.", "bn1."),
                ("conv2.conv.", "conv2."),
                ("conv2.bn.", "bn2."),
            ):
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            else:
                parts = name.split(".")
                if parts[0] != "convs" or len(parts) < 4 or parts[2] not in ("conv", "bn"):
                    raise ValueError(f"MMAction2 ACRN key {key!r} has no counterpart in ACRNHead")
                parts[2] = "0" if parts[2] == "conv" else "1"
                name = ".".join(parts)
            head["encoder." + name] = value[:, :, 0] if value.dim() == 5 else value
        else:
            rest[key] = value
    return head, rest
