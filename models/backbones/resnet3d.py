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
        pt, ph, pw = (d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=(pt, ph, pw),
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


class NonLocal(nn.Module):
    """Non-local block (Wang et al., CVPR 2018) as PySlowFast places it after a bottleneck.

    ``theta``, ``phi``, ``g``: 1×1×1 convs (with bias) to ``inner`` channels; ``phi`` and
    ``g`` read a max-pooled map (kernel = stride = ``pool``); the affinity
    ``theta^T phi`` over all ``T·H·W`` positions is normalised by ``softmax`` (after scaling
    by ``inner^-1/2``) or, for ``dot_product``, divided by the number of pooled positions;
    ``out`` (1×1×1, bias) and a BN map back to ``channels``, added to the input.
    ``[B, C, T, H, W] -> [B, C, T, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        inner: int,
        *,
        pool: tuple[int, int, int],
        instantiation: str,
        frozen_bn: bool,
    ) -> None:
        super().__init__()
        if instantiation not in ("softmax", "dot_product"):
            raise ValueError(
                f"non-local instantiation must be softmax or dot_product, got {instantiation!r}"
            )
        self.inner, self.instantiation = inner, instantiation
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.out = nn.Conv3d(inner, channels, 1)
        self.bn = make_norm(channels, frozen=frozen_bn)
        self.pool: nn.Module | None = None
        if any(p > 1 for p in pool):
            self.pool = nn.MaxPool3d(kernel_size=pool, stride=pool)

    def forward(self, x: Tensor) -> Tensor:
        b, _, t, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, inner, THW)
        pooled = x if self.pool is None else self.pool(x)
        phi = self.phi(pooled).flatten(2)  # (B, inner, P)
        g = self.g(pooled).flatten(2)  # (B, inner, P)
        affinity = torch.einsum("bci,bcj->bij", theta, phi)  # (B, THW, P)
        if self.instantiation == "softmax":
            affinity = torch.softmax(affinity * self.inner**-0.5, dim=2)
        else:
            affinity = affinity / affinity.shape[2]
        y = torch.einsum("bij,bcj->bci", affinity, g).reshape(b, self.inner, t, h, w)
        return x + self.bn(self.out(y))


class ResStage(nn.Module):
    """Bottlenecks ``0..depth-1`` (only the first strides and changes the channel count),
    each optionally followed by a :class:`NonLocal` block named ``nonlocal{i}``.

    Block ``i`` uses ``temporal_kernels[i]``. ``stage[i]`` and ``len(stage)`` address the
    bottlenecks only. ``[B, C_in, T, H, W] -> [B, C_out, T, H/stride, W/stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        inner_channels: int,
        out_channels: int,
        *,
        temporal_kernels: tuple[int, ...],
        spatial_stride: int,
        dilation: int,
        frozen_bn: bool,
        nonlocal_blocks: tuple[int, ...] = (),
        nonlocal_pool: tuple[int, int, int] = (1, 2, 2),
        nonlocal_instantiation: str = "dot_product",
    ) -> None:
        super().__init__()
        self.depth = len(temporal_kernels)
        for i, kernel in enumerate(temporal_kernels):
            block = Bottleneck(
                in_channels if i == 0 else out_channels,
                inner_channels,
                out_channels,
                temporal_kernel=kernel,
                spatial_stride=spatial_stride if i == 0 else 1,
                dilation=dilation,
                frozen_bn=frozen_bn,
            )
            self.add_module(str(i), block)
            if i in nonlocal_blocks:
                block_nl = NonLocal(
                    out_channels,
                    out_channels // 2,
                    pool=nonlocal_pool,
                    instantiation=nonlocal_instantiation,
                    frozen_bn=frozen_bn,
                )
                self.add_module(f"nonlocal{i}", block_nl)

    def __len__(self) -> int:
        return self.depth

    def __getitem__(self, index: int) -> Bottleneck:
        return getattr(self, str(range(self.depth)[index]))

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.depth):
            x = getattr(self, str(i))(x)
            block_nl = getattr(self, f"nonlocal{i}", None)
            if block_nl is not None:
                x = block_nl(x)
        return x


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
) -> ResStage:
    """``depth`` bottlenecks of one temporal kernel, no non-local blocks."""
    return ResStage(
        in_channels,
        inner_channels,
        out_channels,
        temporal_kernels=(temporal_kernel,) * depth,
        spatial_stride=spatial_stride,
        dilation=dilation,
        frozen_bn=frozen_bn,
    )


def conv_weights_init(module: nn.Module) -> None:
    """He (fan-out) init for convs, unit gamma / zero beta for BN, as the ResNet papers do;
    a non-local block's final BN starts at zero gamma, so the block starts as the identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()
    for m in module.modules():
        if isinstance(m, NonLocal):
            nn.init.zeros_(m.bn.weight)
