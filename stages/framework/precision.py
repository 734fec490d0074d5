"""Mixed precision: the ``precision`` setting of extraction, finetune and head training.

``fp32`` (default), ``bf16`` (autocast to bfloat16: CPU or CUDA; fp32's exponent range, so
no loss scaling) or ``fp16`` (autocast to float16 with a gradient scaler; CUDA only). Only
the forward pass is autocast: weights, optimizer state and the loss stay fp32, and feature
stores keep their fp16 arrays whatever the precision (docs/design.md, "Mixed precision").
The setting enters the stage key: a bf16 run is another output than an fp32 one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from stages.framework.precision_names import Precision  # noqa: F401 (re-exported)


class PrecisionError(RuntimeError):
    """A precision the device cannot run (fp16 on CPU)."""


def autocast(precision: str, device: torch.device | str) -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError(
            f"precision fp16 needs a CUDA device (this run is on {device.type}); use bf16"
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str) -> Any:
    """fp16's gradient scaler (None otherwise)."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None


def cpu_bf16_backward_guard(precision: str, device: torch.device | str) -> Any:
    """oneDNN off while training a 3D CNN in bf16 on CPU.

    torch 2.14's oneDNN bf16 Conv3d weight gradient comes back NaN for some shapes
    (measured: Conv3d(80, 32, (3, 1, 1)) on a [2, 80, 2, 6, 8] input, which the finetune
    test's tiny SlowFast has; the same gradient without oneDNN is finite); docs/design.md.
    """
    if precision == "bf16" and torch.device(device).type == "cpu":
        return _mkldnn_off()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _mkldnn_off() -> Any:
    # Only this switch (torch.backends.mkldnn.flags also sets a TF32 flag and warns).
    before = torch.backends.mkldnn.enabled
    # torch's stubs type the module attribute as its ContextProp descriptor, not bool.
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
