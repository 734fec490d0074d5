"""Box operations, written once: IoU of aligned pairs and of every pair, in numpy (stages:
evaluation, tracking, proposals, ensembling, label assignment) and in torch (heads).

Boxes are ``x1, y1, x2, y2``. ``plus_one`` selects the pixel convention of ACT/MOC (width =
x2 - x1 + 1); the union is ``area(a) + area(b) - intersection``, as the reference evaluators
compute it, and a pair with an empty union has IoU 0 (not NaN). Importing this module costs
numpy only; torch is imported by the torch function when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["iou_aligned", "iou_matrix", "iou_matrix_torch"]


def _iou(a: np.ndarray, b: np.ndarray, one: float) -> np.ndarray:
    iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one)
    ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one)
    inter = ih * iw
    area_a = (a[..., 3] - a[..., 1] + one) * (a[..., 2] - a[..., 0] + one)
    area_b = (b[..., 3] - b[..., 1] + one) * (b[..., 2] - b[..., 0] + one)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a + area_b - inter)
    return np.where(np.isfinite(iou), iou, 0.0)


def iou_aligned(a: np.ndarray, b: np.ndarray, *, plus_one: bool = False) -> np.ndarray:
    """IoU [N] of row-aligned pairs ``a[i]``, ``b[i]`` (float [N, 4])."""
    return _iou(a, b, 1.0 if plus_one else 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray, *, plus_one: bool = False) -> np.ndarray:
    """IoU [N, M] between every box of ``a`` [N, 4] and every box of ``b`` [M, 4]."""
    return _iou(a[:, None, :], b[None, :, :], 1.0 if plus_one else 0.0)


def iou_matrix_torch(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes a [..., P, 4] with b [..., Q, 4] -> [..., P, Q] (0 for empty unions);
    differentiable, on the boxes' device."""
    import torch

    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
