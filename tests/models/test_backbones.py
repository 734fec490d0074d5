"""SlowFast architecture: output shapes, channel/stride bookkeeping, gradients, frozen BN."""

from __future__ import annotations

import pytest
import torch

from models.backbones import (
    BACKBONES,
    SlowFast,
    SlowFastConfig,
    build_backbone,
    pool_pathways,
    slowfast_r50,
    slowfast_r101,
    slowfast_tiny,
)


def _clip(frames: int, size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=generator)


@pytest.mark.parametrize("builder", [slowfast_r50, slowfast_r101], ids=["r50", "r101"])
@pytest.mark.parametrize(("alpha", "t_slow"), [(4, 8), (8, 4)], ids=["8x8", "4x16"])
def test_full_size_shapes(builder, alpha: int, t_slow: int) -> None:
    model = builder(alpha=alpha, t_slow=t_slow).eval()
    assert (model.out_channels, model.stride) == (2304, 16)
    assert model.config.t_fast == 32
    x = _clip(32, 64)
    with torch.no_grad():
        slow, fast = model(x, return_temporal=True)
    assert slow.shape == (1, 2048, t_slow, 4, 4)
    assert fast.shape == (1, 256, 32, 4, 4)
    pooled = pool_pathways(slow, fast)
    assert pooled.shape == (1, 2304, 4, 4)
    # Slow channels come first, then Fast, each the time average of its pathway.
    torch.testing.assert_close(pooled[:, :2048], slow.mean(2))
    torch.testing.assert_close(pooled[:, 2048:], fast.mean(2))


def test_r50_parameter_count_matches_pyslowfast_model_zoo() -> None:
    # PySlowFast's model zoo lists SlowFast-R50 8x8 (7x1x1 laterals, 400-way head) at
    # 34.57M parameters; our backbone plus that head must give the same figure.
    model = slowfast_r50(fusion_kernel=7)
    backbone = sum(p.numel() for p in model.parameters())
    head = 2304 * 400 + 400
    assert round((backbone + head) / 1e6, 2) == 34.57
    assert sum(p.numel() for p in slowfast_r50().parameters()) == 33_558_216


def test_r101_has_23_res4_blocks_per_pathway() -> None:
    model = slowfast_r101()
    assert [len(stage) for stage in model.slow.stages] == [3, 4, 23, 3]
    assert [len(stage) for stage in model.fast.stages] == [3, 4, 23, 3]


def test_temporal_kernels_follow_the_paper() -> None:
    model = slowfast_r50()
    slow_t = [stage[0].a.conv.kernel_size[0] for stage in model.slow.stages]
    fast_t = [stage[0].a.conv.kernel_size[0] for stage in model.fast.stages]
    assert slow_t == [1, 1, 3, 3]  # non-degenerate temporal convs only from res4
    assert fast_t == [3, 3, 3, 3]
    assert model.slow.stem.conv.kernel_size == (1, 7, 7)
    assert model.fast.stem.conv.kernel_size == (5, 7, 7)
    res5_b = model.slow.stages[3][0].b.conv
    assert (res5_b.stride, res5_b.dilation) == ((1, 1, 1), (1, 2, 2))
    # Laterals: 2·β·C output channels, time stride alpha.
    assert [lat.conv.out_channels for lat in model.laterals] == [16, 64, 128, 256]
    assert all(lat.conv.stride == (4, 1, 1) for lat in model.laterals)


def test_tiny_shapes_and_pinned_output() -> None:
    torch.manual_seed(0)
    model = slowfast_tiny().eval()
    x = torch.randn(1, 3, 16, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, model.out_channels, 4, 4)
    assert model.out_channels == 288  # 8·32 slow + 1·32 fast
    assert y.sum().item() == pytest.approx(2266.875, rel=1e-4)
    assert y[0, 1, 0, 0].item() == pytest.approx(1.1107318, rel=1e-4)


def test_tiny_output_stride_8_keeps_the_parameters_and_doubles_the_map() -> None:
    stride16, stride8 = slowfast_tiny(), slowfast_tiny(spatial_strides=[1, 1, 2, 1])
    assert (stride16.stride, stride8.stride) == (16, 8)
    # Strides change no weight shape: the same checkpoint loads into either.
    stride8.load_state_dict(stride16.state_dict())
    x = torch.randn(1, 3, 16, 64, 96)
    with torch.no_grad():
        assert stride8.eval()(x).shape == (1, 288, 8, 12)
        assert stride16.eval()(x).shape == (1, 288, 4, 6)


def test_tiny_accepts_a_slow_fast_pair_equal_to_subsampling() -> None:
    model = slowfast_tiny().eval()
    fast = _clip(16, 48)
    with torch.no_grad():
        from_clip = model(fast)
        from_pair = model((fast[:, :, ::4], fast))
    torch.testing.assert_close(from_clip, from_pair)


def test_mismatched_slow_clip_raises() -> None:
    model = slowfast_tiny().eval()
    fast = _clip(16, 32)
    with pytest.raises(ValueError, match="every alpha-th frame"):
        model((fast[:, :, :2], fast))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.zeros(1, 16, 32, 32))


def test_tiny_gradients_reach_every_parameter() -> None:
    # Seeded: the tiny model's Fast pathway is one channel wide, so with some random inits
    # a ReLU downstream of a Fast BN is off everywhere and that BN gets exactly zero
    # gradient. Unseeded, the result depended on which tests had drawn random numbers.
    torch.manual_seed(0)
    model = slowfast_tiny().train()
    x = _clip(16, 64, batch=2).requires_grad_(True)
    y = model(x)
    projection = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * projection).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_frozen_bn_keeps_statistics_and_is_not_trained() -> None:
    model = slowfast_tiny(frozen_bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = _clip(16, 32, batch=2)
    y_train = model(x)
    model.eval()
    with torch.no_grad():
        y_eval = model(x)
    torch.testing.assert_close(y_train.detach(), y_eval)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    bn_params = [n for n, p in model.named_parameters() if ".bn." in n and p.requires_grad]
    assert bn_params == []
    # Same names as the trainable variant, so the same checkpoints load.
    assert list(model.state_dict()) == list(slowfast_tiny().state_dict())


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="divisible by beta_inv"):
        SlowFastConfig(width=12, beta_inv=8)
    with pytest.raises(ValueError, match="fusion_kernel must be a positive odd"):
        SlowFastConfig(fusion_kernel=4)
    with pytest.raises(ValueError, match="depths must be 4"):
        SlowFastConfig(depths=(1, 1, 1))  # type: ignore[arg-type]


def test_config_derived_sizes() -> None:
    config = SlowFastConfig(alpha=8, t_slow=4, spatial_strides=(1, 2, 2, 2), dilations=(1,) * 4)
    assert (config.t_fast, config.stride, config.out_channels) == (32, 32, 2304)
    model = SlowFast(config).eval()
    with torch.no_grad():
        assert model(_clip(32, 64)).shape == (1, 2304, 2, 2)


def test_build_backbone_dispatches_by_name() -> None:
    model = build_backbone("slowfast_tiny", width=16, depths=(1, 1, 2, 1))
    assert isinstance(model, SlowFast)
    assert model.config.width == 16 and model.out_channels == 16 * 32 + 2 * 32
    assert {"slowfast_r50", "slowfast_r101", "slowfast_tiny", "mvit_v2_s"} <= set(BACKBONES)
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        build_backbone("resnet9000")
