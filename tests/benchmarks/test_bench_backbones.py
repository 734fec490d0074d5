"""Backbone forward time on CPU (single clip, inference mode). Run: pytest -m bench -s."""

from __future__ import annotations

import time

import pytest
import torch

from models.backbones import slowfast_r50, slowfast_tiny


def _seconds_per_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up: first call allocates and picks kernels
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats


@pytest.mark.bench
def test_bench_slowfast_forward() -> None:
    torch.manual_seed(0)
    cases = [
        ("slowfast_tiny 16x112x112", slowfast_tiny(), (1, 3, 16, 112, 112), 5),
        ("slowfast_tiny 16x224x224", slowfast_tiny(), (1, 3, 16, 224, 224), 3),
        ("slowfast_r50 8x8 32x128x128", slowfast_r50(), (1, 3, 32, 128, 128), 1),
        ("slowfast_r50 8x8 32x224x224", slowfast_r50(), (1, 3, 32, 224, 224), 1),
    ]
    for label, model, shape, repeats in cases:
        model.eval()
        x = torch.randn(shape)
        seconds = _seconds_per_forward(model, x, repeats)
        with torch.inference_mode():
            out = tuple(model(x).shape)
        print(f"{label}: {seconds * 1000:.0f} ms/clip -> {out} ({torch.get_num_threads()} threads)")
        assert out[1] == model.out_channels
