"""Actor features from a backbone map: RoIAlign 7×7 and a spatial max-pool (SlowFast-Det)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align


def boxes_to_rois(boxes: Tensor, batch_index: Tensor, height: int, width: int) -> Tensor:
    """Normalized boxes -> torchvision RoIs in input-pixel coordinates.

    Args:
        boxes: Tensor[N, 4] normalized x1, y1, x2, y2.
        batch_index: LongTensor[N], the image of each box.
        height, width: input (clip) size in pixels.

    Returns:
        Tensor[N, 5] ``(batch index, x1, y1, x2, y2)`` in pixels.
    """
    scale = boxes.new_tensor([width, height, width, height])
    return torch.cat([batch_index.to(boxes.dtype)[:, None], boxes * scale], dim=1)


def actor_rois(
    fmap: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    *,
    input_size: tuple[int, int],
    output_size: int = 7,
) -> tuple[Tensor, Tensor]:
    """RoIAlign each actor box on the feature map, then max-pool it spatially.

    Args:
        fmap: Tensor[B, C, h, w], the backbone map of B clips of ``input_size``.
        boxes: Tensor[N, 4], normalized x1, y1, x2, y2 (clipped to [0, 1] here).
        batch_index: LongTensor[N], the clip of each box.
        input_size: (H, W) of the clips in pixels; the map's stride is derived from it.
        output_size: RoIAlign grid (7 as in SlowFast-Det and every seed paper).

    Returns:
        (roi Tensor[N, C, s, s], pooled Tensor[N, C]).
    """
    height, width = input_size
    spatial_scale = fmap.shape[-1] / width  # 1 / stride, from the actual map size
    rois = boxes_to_rois(boxes.clamp(0.0, 1.0), batch_index, height, width)
    roi = roi_align(
        fmap, rois.to(fmap.dtype), output_size=output_size, spatial_scale=spatial_scale,
        sampling_ratio=0, aligned=True,
    )  # fmt: skip
    return roi, roi.amax(dim=(2, 3))
