"""Helpers for parity tests against reference implementations (random weights everywhere)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN buffer random values, so no zero-initialised branch
    (non-local output BN, final BN of a block) can hide a difference. Conv weights are
    drawn at He scale so activations stay O(1) through 50-100 layers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv3d | nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                )
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            elif isinstance(module, nn.BatchNorm3d | nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.num_batches_tracked is not None:
                    module.num_batches_tracked.fill_(1000)
    return model.eval()


def linspace_slow(clip: torch.Tensor, alpha: int) -> torch.Tensor:
    """PySlowFast / pytorchvideo ``PackPathway``: the Slow frames of ``[B, C, T, H, W]``."""
    t = clip.shape[2]
    return clip.index_select(2, torch.linspace(0, t - 1, t // alpha).long())


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
