"""SlowFast network (Feichtenhofer et al., ICCV 2019) as an action-detection backbone.

Two ResNet pathways over the same clip: the Slow pathway sees ``t_slow`` frames with full
channel width, the Fast pathway sees ``alpha`` times more frames with ``beta = 1/beta_inv``
of the channels. Lateral connections (time-strided ``k×1×1`` convs with stride ``alpha``,
``2·beta·C`` output channels) carry Fast features into the Slow pathway after the stem
and after res2, res3 and res4, where they are concatenated on channels. Temporal kernels
follow the paper's Table 1: the Slow pathway uses temporal kernel 1 in res2-res3 and 3 in
res4-res5, the Fast pathway 3 everywhere and a 5×7×7 stem. For detection, res5 has spatial
stride 1 and dilation 2, so the output stride is 16.

Every choice on which the published checkpoints differ is a :class:`SlowFastConfig` field:
per-stage dilations (MMAction2's AVA configs keep res5 at dilation 1), per-block temporal
kernels (PySlowFast R101: kernel 3 only in the first 6 res4 blocks), non-local blocks and
their placement, lateral kernel and norm, how the Slow frames are taken from the clip
(``x[:, :, ::alpha]`` or PySlowFast's ``linspace``), and no Fast pathway at all (SlowOnly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.resnet3d import ResStage, Stem, conv_weights_init, make_norm

NUM_STAGES = 4  # res2..res5
SLOW_SAMPLINGS = ("stride", "linspace")
NONLOCAL_INSTANTIATIONS = ("dot_product", "softmax")
_TUPLE_FIELDS = (
    "depths",
    "spatial_strides",
    "dilations",
    "nonlocal_pool",
    "input_mean",
    "input_std",
)
_NESTED_FIELDS = (
    "slow_temporal_kernels",
    "fast_temporal_kernels",
    "slow_nonlocal",
    "fast_nonlocal",
)


def _tupled(value: object) -> object:
    """Lists (from YAML / JSON) as tuples, recursively, so configs compare and hash."""
    if isinstance(value, list | tuple):
        return tuple(_tupled(v) for v in value)
    return value


@dataclass(frozen=True)
class SlowFastConfig:
    """Architecture of one SlowFast (or SlowOnly) network. Defaults: SlowFast-R50 8×8,
    detection variant (res5 dilated)."""

    depths: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottlenecks in res2..res5 (R50)
    width: int = 64  # Slow stem channels; res2 inner width (doubles per stage, ×4 out)
    alpha: int = 4  # frame-rate ratio Fast/Slow (also the lateral conv's temporal stride)
    beta_inv: int = 8  # Fast pathway has width / beta_inv channels
    t_slow: int = 8  # Slow frames per clip; the Fast clip has t_slow * alpha frames
    frame_stride: int = 2  # source-frame stride of the Fast clip (tau / alpha); metadata only
    fusion_kernel: int = 5  # temporal kernel of the lateral convs (PySlowFast 8×8 uses 7)
    fusion_ratio: int = 2  # lateral output channels = fusion_ratio * Fast channels
    lateral_norm: bool = True  # BN + ReLU after each lateral conv (PySlowFast; not MMAction2)
    # Temporal kernel of each bottleneck's first conv, res2..res5: one int per stage, or a
    # tuple with one int per block (PySlowFast R101: (3,)*6 + (1,)*17 in res4).
    slow_temporal_kernels: tuple = (1, 1, 3, 3)
    fast_temporal_kernels: tuple = (3, 3, 3, 3)
    slow_stem_temporal_kernel: int = 1
    fast_stem_temporal_kernel: int = 5
    spatial_strides: tuple[int, int, int, int] = (1, 2, 2, 1)  # res5 not strided ...
    dilations: tuple[int, int, int, int] = (1, 1, 1, 2)  # ... but dilated instead
    # Non-local blocks: per stage, the indices of the bottlenecks they follow
    # (PySlowFast R101 AVA: ((), (), (6, 13, 20), ()) on the Slow pathway).
    slow_nonlocal: tuple = ((), (), (), ())
    fast_nonlocal: tuple = ((), (), (), ())
    nonlocal_pool: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) max-pool of phi and g
    nonlocal_instantiation: str = "dot_product"  # or "softmax"
    # Slow frames from a single clip: "stride" = x[:, :, ::alpha] (MMAction2, pytorchvideo
    # models), "linspace" = round-down linspace(0, T-1, T // alpha) (PySlowFast's loader).
    slow_sampling: str = "stride"
    fast_pathway: bool = True  # False: SlowOnly (no Fast pathway, no laterals; alpha 1)
    # Input normalisation the weights were trained with (0-1 pixel units); None: not known.
    input_mean: tuple[float, float, float] | None = None
    input_std: tuple[float, float, float] | None = None
    in_channels: int = 3
    frozen_bn: bool = False  # inference-only BN statistics, for small-batch fine-tuning

    def __post_init__(self) -> None:
        for name in (*_TUPLE_FIELDS, *_NESTED_FIELDS):
            object.__setattr__(self, name, _tupled(getattr(self, name)))
        problems = []
        for name in ("depths", "spatial_strides", "dilations"):
            value = getattr(self, name)
            if len(value) != NUM_STAGES or any(int(v) < 1 for v in value):
                problems.append(f"{name} must be {NUM_STAGES} positive ints, got {value}")
        if not problems:
            problems += self._block_problems()
        for name in ("width", "alpha", "beta_inv", "t_slow", "fusion_ratio", "frame_stride"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.beta_inv != 0:
            problems.append(f"width {self.width} must be divisible by beta_inv {self.beta_inv}")
        for name in ("fusion_kernel", "slow_stem_temporal_kernel", "fast_stem_temporal_kernel"):
            if getattr(self, name) < 1 or getattr(self, name) % 2 == 0:
                problems.append(f"{name} must be a positive odd int, got {getattr(self, name)}")
        if self.slow_sampling not in SLOW_SAMPLINGS:
            problems.append(
                f"slow_sampling must be one of {SLOW_SAMPLINGS}, got {self.slow_sampling!r}"
            )
        if self.nonlocal_instantiation not in NONLOCAL_INSTANTIATIONS:
            problems.append(
                f"nonlocal_instantiation must be one of {NONLOCAL_INSTANTIATIONS},"
                f" got {self.nonlocal_instantiation!r}"
            )
        if not self.fast_pathway and self.alpha != 1:
            problems.append(
                f"a SlowOnly network (fast_pathway=False) takes alpha=1, got {self.alpha}"
            )
        if problems:
            raise ValueError("invalid SlowFastConfig: " + "; ".join(problems))

    def _block_problems(self) -> list[str]:
        problems = []
        for name in _NESTED_FIELDS:
            value = getattr(self, name)
            if len(value) != NUM_STAGES:
                problems.append(f"{name} must have {NUM_STAGES} entries (res2..res5), got {value}")
                continue
            for stage, (entry, depth) in enumerate(zip(value, self.depths, strict=True)):
                if name.endswith("temporal_kernels"):
                    kernels = (entry,) * depth if isinstance(entry, int) else entry
                    if len(kernels) != depth or any(k < 1 or k % 2 == 0 for k in kernels):
                        problems.append(
                            f"{name}[{stage}] must be a positive odd int or {depth} of them,"
                            f" got {entry}"
                        )
                elif any(not 0 <= i < depth for i in entry):
                    problems.append(
                        f"{name}[{stage}] holds block indices outside 0..{depth - 1}: {entry}"
                    )
        return problems

    def block_temporal_kernels(self, pathway: str, stage: int) -> tuple[int, ...]:
        """The temporal kernel of every bottleneck of one stage (``pathway``: slow | fast)."""
        entry = getattr(self, f"{pathway}_temporal_kernels")[stage]
        return (entry,) * self.depths[stage] if isinstance(entry, int) else tuple(entry)

    @property
    def fast_width(self) -> int:
        """Fast stem channels (``beta · width``; 0 for SlowOnly)."""
        return self.width // self.beta_inv if self.fast_pathway else 0

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
        name: str,
        width: int,
        stem_temporal_kernel: int,
        lateral_channels: tuple[int, ...],
        config: SlowFastConfig,
    ) -> None:
        super().__init__()
        self.stem = Stem(
            config.in_channels, width, stem_temporal_kernel, frozen_bn=config.frozen_bn
        )
        stages = []
        in_channels = width
        nonlocal_blocks = getattr(config, f"{name}_nonlocal")
        for i in range(NUM_STAGES):
            inner = width * 2**i
            stages.append(
                ResStage(
                    in_channels + lateral_channels[i],
                    inner,
                    inner * 4,
                    temporal_kernels=config.block_temporal_kernels(name, i),
                    spatial_stride=config.spatial_strides[i],
                    dilation=config.dilations[i],
                    frozen_bn=config.frozen_bn,
                    nonlocal_blocks=nonlocal_blocks[i],
                    nonlocal_pool=config.nonlocal_pool,
                    nonlocal_instantiation=config.nonlocal_instantiation,
                )
            )
            in_channels = inner * 4
        self.stages = nn.ModuleList(stages)


class SlowFast(nn.Module):
    """SlowFast backbone returning a temporally pooled res5 map.

    Input: the Fast clip ``[B, 3, T_fast, H, W]`` (float, normalized); the Slow clip is
    taken from it as ``config.slow_sampling`` says: every ``alpha``-th frame from frame 0
    (``x[:, :, ::alpha]``), or ``linspace(0, T-1, T // alpha)`` rounded down (PySlowFast).
    A ``(slow, fast)`` pair ``([B, 3, T_s, H, W], [B, 3, T_f, H, W])`` is accepted too,
    for callers that sample the pathways themselves; then ``ceil(T_f / alpha)`` must equal
    ``T_s``. A SlowOnly network (``fast_pathway=False``) takes the Slow clip itself.

    ``forward(x)`` -> ``[B, out_channels, H/16, W/16]`` (time-averaged Slow and Fast res5
    maps concatenated on channels, Slow first; 2304 channels for R50/R101, 2048 SlowOnly).
    ``forward(x, return_temporal=True)`` -> ``(slow [B, C_s, T_s, h, w],
    fast [B, C_f, T_f, h, w])``, the un-pooled maps for temporal RoI features (SlowOnly:
    ``C_f = 0``).
    """

    def __init__(self, config: SlowFastConfig) -> None:
        super().__init__()
        self.config = config
        fast_out = [config.fast_width] + [config.fast_width * 4 * 2**i for i in range(3)]
        lateral_channels = tuple(c * config.fusion_ratio for c in fast_out)
        self.slow = Pathway(
            name="slow",
            width=config.width,
            stem_temporal_kernel=config.slow_stem_temporal_kernel,
            lateral_channels=lateral_channels if config.fast_pathway else (0,) * NUM_STAGES,
            config=config,
        )
        # Registration order (slow, fast, laterals) fixes the order of the random init.
        self.fast: Pathway | None = None
        if config.fast_pathway:
            self.fast = Pathway(
                name="fast",
                width=config.fast_width,
                stem_temporal_kernel=config.fast_stem_temporal_kernel,
                lateral_channels=(0, 0, 0, 0),
                config=config,
            )
        # laterals[0] fuses after the stems, laterals[i] after res(i+1), i = 1..3.
        self.laterals = nn.ModuleList(
            Lateral(c, config) for c in (fast_out if config.fast_pathway else ())
        )
        conv_weights_init(self)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def stride(self) -> int:
        return self.config.stride

    def slow_frames(self, num_frames: int) -> Tensor:
        """Indices of the clip frames the Slow pathway sees (``config.slow_sampling``)."""
        alpha = self.config.alpha
        if self.config.slow_sampling == "linspace":
            return torch.linspace(0, num_frames - 1, max(num_frames // alpha, 1)).long()
        return torch.arange(0, num_frames, alpha)

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
            if not self.config.fast_pathway:
                return fast, fast
            index = self.slow_frames(fast.shape[2]).to(fast.device)
            return fast.index_select(2, index), fast
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
        if self.fast is None:  # SlowOnly
            slow = self.slow.stem(slow)
            for stage in self.slow.stages:
                slow = stage(slow)
            return slow, slow.new_zeros((slow.shape[0], 0, *slow.shape[2:]))
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
