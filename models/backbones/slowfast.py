"""SlowFast network (Feichtenhofer et al., ICCV 2019) as an action-detection backbone.

Two ResNet pathways over the same clip: the Slow pathway sees ``t_slow`` frames with full
channel width, the Fast pathway sees ``alpha`` times more frames with ``beta = 1/beta_inv``
of the channels. Lateral connections (time-strided ``k×1×1`` convs with stride ``alpha``,
``2·beta·C`` output channels) carry Fast features into the Slow pathway after the stem
and after res2, res3 and res4, where they are concatenated on channels. Temporal kernels
follow the paper's Table 1: the Slow pathway uses temporal kernel 1 in res2-res3 and 3 in
res4-res5, the Fast pathway 3 everywhere and a 5×7×7 stem. For detection, res5 has spatial
stride 1 and dilation 2, so the output stride is 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.resnet3d import Stem, conv_weights_init, make_norm, make_res_stage

NUM_STAGES = 4  # res2..res5


@dataclass(frozen=True)
class SlowFastConfig:
    """Architecture of one SlowFast network. Defaults: SlowFast-R50 8×8, detection variant."""

    depths: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottlenecks in res2..res5 (R50)
    width: int = 64  # Slow stem channels; res2 inner width (doubles per stage, ×4 out)
    alpha: int = 4  # frame-rate ratio Fast/Slow (also the lateral conv's temporal stride)
    beta_inv: int = 8  # Fast pathway has width / beta_inv channels
    t_slow: int = 8  # Slow frames per clip; the Fast clip has t_slow * alpha frames
    frame_stride: int = 2  # source-frame stride of the Fast clip (tau / alpha); metadata only
    fusion_kernel: int = 5  # temporal kernel of the lateral convs (PySlowFast 8×8 uses 7)
    fusion_ratio: int = 2  # lateral output channels = fusion_ratio * Fast channels
    lateral_norm: bool = True  # BN + ReLU after each lateral conv (PySlowFast; not MMAction2)
    slow_temporal_kernels: tuple[int, int, int, int] = (1, 1, 3, 3)  # res2..res5
    fast_temporal_kernels: tuple[int, int, int, int] = (3, 3, 3, 3)  # res2..res5
    slow_stem_temporal_kernel: int = 1
    fast_stem_temporal_kernel: int = 5
    spatial_strides: tuple[int, int, int, int] = (1, 2, 2, 1)  # res5 not strided ...
    dilations: tuple[int, int, int, int] = (1, 1, 1, 2)  # ... but dilated instead
    in_channels: int = 3
    frozen_bn: bool = False  # inference-only BN statistics, for small-batch fine-tuning

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "depths",
            "slow_temporal_kernels",
            "fast_temporal_kernels",
            "spatial_strides",
            "dilations",
        ):
            value = getattr(self, name)
            if len(value) != NUM_STAGES or any(int(v) < 1 for v in value):
                problems.append(f"{name} must be {NUM_STAGES} positive ints, got {value}")
        for name in ("width", "alpha", "beta_inv", "t_slow", "fusion_ratio", "frame_stride"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.beta_inv != 0:
            problems.append(f"width {self.width} must be divisible by beta_inv {self.beta_inv}")
        for name in ("fusion_kernel", "slow_stem_temporal_kernel", "fast_stem_temporal_kernel"):
            if getattr(self, name) < 1 or getattr(self, name) % 2 == 0:
                problems.append(f"{name} must be a positive odd int, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid SlowFastConfig: " + "; ".join(problems))

    @property
    def fast_width(self) -> int:
        """Fast stem channels (``beta · width``)."""
        return self.width // self.beta_inv

    @property
    def t_fast(self) -> int:
        """Frames of the input clip (the Fast pathway's clip length)."""
        return self.t_slow * self.alpha

    @property
    def slow_channels(self) -> int:
        """Channels of the Slow res5 map (2048 for width 64)."""
        return self.width * 4 * 2 ** (NUM_STAGES - 1)

    @property
    def fast_channels(self) -> int:
        """Channels of the Fast res5 map (256 for width 64, beta 1/8)."""
        return self.fast_width * 4 * 2 ** (NUM_STAGES - 1)

    @property
    def out_channels(self) -> int:
        return self.slow_channels + self.fast_channels

    @property
    def stride(self) -> int:
        """Output stride in input pixels: 4 from the stem times the stage strides."""
        return 4 * math.prod(self.spatial_strides)


class Lateral(nn.Module):
    """Fast→Slow fusion: ``k×1×1`` conv, temporal stride ``alpha`` (+ BN, ReLU if enabled).

    ``[B, C, T_fast, H, W] -> [B, fusion_ratio·C, ceil(T_fast/alpha), H, W]``.
    """

    def __init__(self, channels: int, config: SlowFastConfig) -> None:
        super().__init__()
        out_channels = channels * config.fusion_ratio
        self.conv = nn.Conv3d(
            channels,
            out_channels,
            (config.fusion_kernel, 1, 1),
            stride=(config.alpha, 1, 1),
            padding=(config.fusion_kernel // 2, 0, 0),
            bias=False,
        )
        self.bn: nn.Module | None = None
        if config.lateral_norm:
            self.bn = make_norm(out_channels, frozen=config.frozen_bn)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = F.relu(self.bn(x), inplace=True)
        return x


class Pathway(nn.Module):
    """One pathway's stem and res2..res5 stages (run by :class:`SlowFast`, which fuses)."""

    def __init__(
        self,
        *,
        width: int,
        stem_temporal_kernel: int,
        temporal_kernels: tuple[int, ...],
        lateral_channels: tuple[int, ...],
        config: SlowFastConfig,
    ) -> None:
        super().__init__()
        self.stem = Stem(
            config.in_channels, width, stem_temporal_kernel, frozen_bn=config.frozen_bn
        )
        stages = []
        in_channels = width
        for i in range(NUM_STAGES):
            inner = width * 2**i
            stages.append(
                make_res_stage(
                    in_channels + lateral_channels[i],
                    inner,
                    inner * 4,
                    depth=config.depths[i],
                    temporal_kernel=temporal_kernels[i],
                    spatial_stride=config.spatial_strides[i],
                    dilation=config.dilations[i],
                    frozen_bn=config.frozen_bn,
                )
            )
            in_channels = inner * 4
        self.stages = nn.ModuleList(stages)


class SlowFast(nn.Module):
    """SlowFast backbone returning a temporally pooled res5 map.

    Input: the Fast clip ``[B, 3, T_fast, H, W]`` (float, normalized); the Slow clip is
    taken from it as every ``alpha``-th frame starting at frame 0 (``x[:, :, ::alpha]``).
    A ``(slow, fast)`` pair ``([B, 3, T_s, H, W], [B, 3, T_f, H, W])`` is accepted too,
    for callers that sample the pathways themselves; then ``ceil(T_f / alpha)`` must equal
    ``T_s``.

    ``forward(x)`` -> ``[B, out_channels, H/16, W/16]`` (time-averaged Slow and Fast res5
    maps concatenated on channels, Slow first; 2304 channels for R50/R101).
    ``forward(x, return_temporal=True)`` -> ``(slow [B, C_s, T_s, h, w],
    fast [B, C_f, T_f, h, w])``, the un-pooled maps for temporal RoI features.
    """

    def __init__(self, config: SlowFastConfig) -> None:
        super().__init__()
        self.config = config
        fast_out = [config.fast_width] + [config.fast_width * 4 * 2**i for i in range(3)]
        self.slow = Pathway(
            width=config.width,
            stem_temporal_kernel=config.slow_stem_temporal_kernel,
            temporal_kernels=config.slow_temporal_kernels,
            lateral_channels=tuple(c * config.fusion_ratio for c in fast_out),
            config=config,
        )
        self.fast = Pathway(
            width=config.fast_width,
            stem_temporal_kernel=config.fast_stem_temporal_kernel,
            temporal_kernels=config.fast_temporal_kernels,
            lateral_channels=(0, 0, 0, 0),
            config=config,
        )
        # laterals[0] fuses after the stems, laterals[i] after res(i+1), i = 1..3.
        self.laterals = nn.ModuleList(Lateral(c, config) for c in fast_out)
        conv_weights_init(self)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def stride(self) -> int:
        return self.config.stride

    def _split(self, x: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if isinstance(x, tuple | list):
            if len(x) != 2:
                raise ValueError(f"expected a (slow, fast) pair of clips, got {len(x)} tensors")
            slow, fast = x
        else:
            slow, fast = None, x
        if fast.dim() != 5 or fast.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a clip [B, {self.config.in_channels}, T, H, W], got {tuple(fast.shape)}"
            )
        if slow is None:
            return fast[:, :, :: self.config.alpha], fast
        if slow.dim() != 5 or slow.shape[:2] != fast.shape[:2] or slow.shape[3:] != fast.shape[3:]:
            raise ValueError(
                f"slow clip {tuple(slow.shape)} must match fast clip {tuple(fast.shape)} "
                "in batch, channels, height and width"
            )
        return slow, fast

    def _fuse(self, index: int, slow: Tensor, fast: Tensor) -> Tensor:
        lateral = self.laterals[index](fast)
        if lateral.shape[2] != slow.shape[2]:
            raise ValueError(
                f"fast pathway gives {lateral.shape[2]} frames after the alpha={self.config.alpha}"
                f" lateral, slow pathway has {slow.shape[2]}: the slow clip must hold every"
                " alpha-th frame of the fast clip"
            )
        return torch.cat([slow, lateral], dim=1)

    def forward_pathways(self, x: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Un-pooled res5 maps: ``(slow [B, C_s, T_s, h, w], fast [B, C_f, T_f, h, w])``."""
        slow, fast = self._split(x)
        slow, fast = self.slow.stem(slow), self.fast.stem(fast)
        slow = self._fuse(0, slow, fast)
        for i in range(NUM_STAGES):
            slow = self.slow.stages[i](slow)
            fast = self.fast.stages[i](fast)
            if i < NUM_STAGES - 1:  # no fusion after res5
                slow = self._fuse(i + 1, slow, fast)
        return slow, fast

    def forward(
        self, x: Tensor | tuple[Tensor, Tensor], *, return_temporal: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        slow, fast = self.forward_pathways(x)
        if return_temporal:
            return slow, fast
        return pool_pathways(slow, fast)


def pool_pathways(slow: Tensor, fast: Tensor) -> Tensor:
    """Average each pathway over time and concatenate: ``[B, C_s + C_f, h, w]``."""
    return torch.cat([slow.mean(dim=2), fast.mean(dim=2)], dim=1)
