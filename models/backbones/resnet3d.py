"""3D ResNet parts shared by both SlowFast pathways: conv+BN units, the stem, bottleneck stages.

All tensors are ``[B, C, T, H, W]``. Temporal strides are always 1 (SlowFast keeps the
time axis of each pathway untouched), spatial strides and dilations are per stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d that always normalizes with its stored statistics and never learns.

    Fine-tuning a detector-sized clip batch (1-2 clips per GPU) makes batch statistics
    useless, so detection fine-tuning freezes BN. Subclassing ``BatchNorm3d`` keeps the
    parameter/buffer names identical, so checkpoints load the same way in both modes.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )


def make_norm(channels: int, *, frozen: bool, eps: float = 1e-5) -> nn.BatchNorm3d:
    """A BatchNorm3d over ``channels``; frozen (inference statistics only) when asked."""
    if frozen:
        return FrozenBatchNorm3d(channels, eps=eps)
    return nn.BatchNorm3d(channels, eps=eps)


class ConvBN(nn.Module):
    """Conv3d (no bias) followed by BatchNorm3d; the activation is left to the caller.

    ``kernel``/``stride``/``dilation`` are ``(t, h, w)``; padding keeps "same" size along
    every axis whose stride is 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int],
        *,
        stride: tuple[int, int, int] = (1, 1, 1),
        dilation: tuple[int, int, int] = (1, 1, 1),
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        )
        self.bn = make_norm(out_channels, frozen=frozen_bn)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class Stem(ConvBN):
    """``t×7×7`` conv with spatial stride 2, BN, ReLU, then a ``1×3×3`` max-pool (stride 2).

    ``[B, 3, T, H, W] -> [B, C, T, H/4, W/4]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, temporal_kernel: int, *, frozen_bn: bool
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            (temporal_kernel, 7, 7),
            stride=(1, 2, 2),
            frozen_bn=frozen_bn,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)), inplace=True)
        return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


class Bottleneck(nn.Module):
    """ResNet bottleneck: ``t×1×1`` reduce (a), ``1×3×3`` spatial (b, strided/dilated),
    ``1×1×1`` expand (c), plus a projection shortcut when the shape changes.

    The temporal kernel sits on the first 1×1 conv as in the SlowFast paper (Table 1).
    """

    def __init__(
        self,
        in_channels: int,
        inner_channels: int,
        out_channels: int,
        *,
        temporal_kernel: int,
        spatial_stride: int,
        dilation: int,
        frozen_bn: bool,
    ) -> None:
        super().__init__()
        self.a = ConvBN(in_channels, inner_channels, (temporal_kernel, 1, 1), frozen_bn=frozen_bn)
        self.b = ConvBN(
            inner_channels,
            inner_channels,
            (1, 3, 3),
            stride=(1, spatial_stride, spatial_stride),
            dilation=(1, dilation, dilation),
            frozen_bn=frozen_bn,
        )
        self.c = ConvBN(inner_channels, out_channels, (1, 1, 1), frozen_bn=frozen_bn)
        self.shortcut: ConvBN | None = None
        if spatial_stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBN(
                in_channels,
                out_channels,
                (1, 1, 1),
                stride=(1, spatial_stride, spatial_stride),
                frozen_bn=frozen_bn,
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.a(x), inplace=True)
        y = F.relu(self.b(y), inplace=True)
        y = self.c(y)
        return F.relu(y + identity, inplace=True)


def make_res_stage(
    in_channels: int,
    inner_channels: int,
    out_channels: int,
    *,
    depth: int,
    temporal_kernel: int,
    spatial_stride: int,
    dilation: int,
    frozen_bn: bool,
) -> nn.Sequential:
    """``depth`` bottlenecks; only the first one strides and changes the channel count."""
    blocks = [
        Bottleneck(
            in_channels if i == 0 else out_channels,
            inner_channels,
            out_channels,
            temporal_kernel=temporal_kernel,
            spatial_stride=spatial_stride if i == 0 else 1,
            dilation=dilation,
            frozen_bn=frozen_bn,
        )
        for i in range(depth)
    ]
    return nn.Sequential(*blocks)


def conv_weights_init(module: nn.Module) -> None:
    """He (fan-out) init for convs, unit gamma / zero beta for BN, as the ResNet papers do."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()
