"""Actor features from a backbone map: RoIAlign and a spatial pool (SlowFast-Det).

The RoIAlign settings differ between the reference implementations, and a checkpoint's
head only reproduces its published numbers on features pooled the way it was trained:

==============  ======  =======  ========  =====  =============
source          grid    aligned  sampling  pool   spatial scale
==============  ======  =======  ========  =====  =============
bankflow        7 x 7   True     0         max    map / input, per axis
PySlowFast      7 x 7   True     0         max    1/16
MMAction2       8 x 8   True     0         max    1/16
==============  ======  =======  ========  =====  =============

PySlowFast: ``ResNetRoIHead`` (``ROI_XFORM_RESOLUTION`` 7, ``DETECTION.ALIGNED``,
``SPATIAL_SCALE_FACTOR`` 16, then ``MaxPool2d``). MMAction2: ``SingleRoIExtractor3D``
(``output_size=8`` in its AVA configs, ``featmap_stride=16``, ``sampling_ratio=0``,
``aligned=True``) and ``BBoxHeadAVA`` (``spatial_pool_type='max'``). Both take the box
in input pixels times one fixed 1/16 for x and y; bankflow's default measures the
stride on each axis from the map it got, which is the same thing when H and W are
multiples of 16 and the right thing when they are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import roi_align


@dataclass(frozen=True)
class RoIAlignSpec:
    """How actor boxes are pooled from a map.

    Attributes:
        output_size: RoIAlign grid side (7 SlowFast-Det, 8 MMAction2).
        aligned: torchvision's half-pixel offset (True in both references).
        sampling_ratio: samples per bin side; 0 = adaptive (ceil of bin size).
        pool: spatial pool of the grid to one vector, ``"max"`` or ``"avg"``.
        spatial_scale: None = map size / input size on each axis separately; a
            number = that scale on both axes, boxes in input pixels (the references'
            fixed ``1 / 16``).
    """

    output_size: int = 7
    aligned: bool = True
    sampling_ratio: int = 0
    pool: Literal["max", "avg"] = "max"
    spatial_scale: float | None = None

    def __post_init__(self) -> None:
        if self.output_size < 1:
            raise ValueError(f"RoIAlign output_size must be >= 1, got {self.output_size}")
        if self.sampling_ratio < 0:
            raise ValueError(f"RoIAlign sampling_ratio must be >= 0, got {self.sampling_ratio}")
        if self.pool not in ("max", "avg"):
            raise ValueError(f"RoI pool must be 'max' or 'avg', got {self.pool!r}")
        if self.spatial_scale is not None and not self.spatial_scale > 0:
            raise ValueError(f"RoIAlign spatial_scale must be > 0, got {self.spatial_scale}")


# The references' settings (see the module docstring).
ROI_PRESETS: dict[str, RoIAlignSpec] = {
    "bankflow": RoIAlignSpec(),
    "pyslowfast": RoIAlignSpec(output_size=7, spatial_scale=1 / 16),
    "mmaction2": RoIAlignSpec(output_size=8, spatial_scale=1 / 16),
}


def boxes_to_rois(boxes: Tensor, batch_index: Tensor, height: float, width: float) -> Tensor:
    """Normalized boxes -> torchvision RoIs scaled by (width, height).

    Args:
        boxes: Tensor[N, 4] normalized x1, y1, x2, y2.
        batch_index: LongTensor[N], the image of each box.
        height, width: the size the boxes are scaled to (input pixels, or map cells).

    Returns:
        Tensor[N, 5] ``(batch index, x1, y1, x2, y2)``.
    """
    scale = boxes.new_tensor([width, height, width, height])
    return torch.cat([batch_index.to(boxes.dtype)[:, None], boxes * scale], dim=1)


def actor_rois(
    fmap: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    *,
    input_size: tuple[int, int],
    output_size: int | None = None,
    spec: RoIAlignSpec | None = None,
) -> tuple[Tensor, Tensor]:
    """RoIAlign each actor box on the feature map, then pool it spatially.

    Args:
        fmap: Tensor[B, C, h, w], the backbone map of B clips of ``input_size``.
        boxes: Tensor[N, 4], normalized x1, y1, x2, y2 (clipped to [0, 1] here).
        batch_index: LongTensor[N], the clip of each box.
        input_size: (H, W) of the clips in pixels.
        output_size: overrides ``spec.output_size`` (kept for callers that only set it).
        spec: the RoIAlign settings (default :class:`RoIAlignSpec`: bankflow's).

    Returns:
        (roi Tensor[N, C, s, s], pooled Tensor[N, C]).
    """
    spec = spec or RoIAlignSpec()
    size = spec.output_size if output_size is None else output_size
    height, width = input_size
    clipped = boxes.clamp(0.0, 1.0)
    if spec.spatial_scale is None:
        # Map cells per input pixel measured on each axis (x and y may differ when H
        # or W is not a multiple of the stride): boxes go straight to map cells.
        rois = boxes_to_rois(clipped, batch_index, fmap.shape[-2], fmap.shape[-1])
        scale = 1.0
    else:
        rois = boxes_to_rois(clipped, batch_index, height, width)
        scale = spec.spatial_scale
    roi = roi_align(
        fmap,
        rois.to(fmap.dtype),
        output_size=size,
        spatial_scale=scale,
        sampling_ratio=spec.sampling_ratio,
        aligned=spec.aligned,
    )
    pooled = roi.amax(dim=(2, 3)) if spec.pool == "max" else roi.mean(dim=(2, 3))
    return roi, pooled
