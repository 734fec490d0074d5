"""Helpers for parity tests against reference implementations (random weights everywhere)."""

from __future__ import annotations

import zlib

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


def named_random_tensor(
    name: str, shape: tuple[int, ...], fan_in: int | None = None
) -> torch.Tensor:
    """A random tensor that depends only on its (reference) name and shape, so a reference
    run elsewhere and a test here draw the same weights without sharing a file.

    BN variances in [0.5, 1.5), BN weights in [0.25, 0.75) (residual branches of small
    gain, so 100 layers neither explode nor vanish), BN biases / means and conv biases
    ~ 0.1·N(0, 1), conv weights at He scale (``fan_in`` = input channels × kernel volume).
    """
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    last = name.rsplit(".", 1)[-1]
    if last == "running_var":
        return torch.rand(shape, generator=generator) + 0.5
    if last == "weight" and len(shape) == 1:
        return torch.rand(shape, generator=generator) * 0.5 + 0.25
    if last == "num_batches_tracked":
        return torch.tensor(1000)
    if len(shape) <= 1:
        return torch.randn(shape, generator=generator) * 0.1
    fan_in = fan_in or int(torch.tensor(shape[1:]).prod())
    # Non-local affinities are products of two projections: keep them small, or three
    # blocks in a row raise the map to the 27th power.
    gain = 0.2 if any(part in name for part in ("theta", "phi")) else 1.0
    return torch.randn(shape, generator=generator) * gain * (2.0 / fan_in) ** 0.5
