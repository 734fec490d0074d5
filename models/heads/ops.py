"""``roi_align`` for the heads, with torchvision imported on first use.

``torchvision.ops.roi_align`` itself; importing torchvision costs about as much as torch,
and the head registry is also read where no head runs (``head_kwargs`` are validated when
a config loads), so the import waits until a head pools.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def roi_align(*args: Any, **kwargs: Any) -> Tensor:
    """``torchvision.ops.roi_align(*args, **kwargs)``."""
    from torchvision.ops import roi_align as torchvision_roi_align

    return torchvision_roi_align(*args, **kwargs)
