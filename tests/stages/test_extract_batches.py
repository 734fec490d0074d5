"""The extractor's batch preparation: a table lookup, bitwise equal to torch's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.extract.stage import ExtractConfig
from stages.extract.video import VideoExtractor, build_schema, normalisation_table


def _torch_batch(clips: list[np.ndarray], cfg: ExtractConfig) -> torch.Tensor:
    """What the extractor fed the backbone before the table: uint8 -> float, / 255, flip,
    - mean, / std, in float32 torch operations."""
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1)
    x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float().div_(255.0)
    if cfg.flip:
        x = x.flip(-1)
    return (x - mean) / std


class _Identity(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))


@pytest.mark.parametrize(
    "mean,std",
    [
        ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),  # SlowFast (PySlowFast's AVA configs)
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
        ((0.0, 0.5, 1.0), (1.0, 0.3, 0.07)),
    ],
)
@pytest.mark.parametrize("flip", [False, True])
def test_prepared_batch_is_bitwise_the_torch_arithmetic(mean, std, flip) -> None:
    cfg = ExtractConfig(mean=mean, std=std, flip=flip, num_frames=3, short_side=None)
    extractor = VideoExtractor(_Identity(), cfg, build_schema(cfg, (4, 2, 2), None, None, None))
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8) for _ in range(2)]
    every = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every pixel value, per channel
    clips.append(np.stack([every, every[::-1], every.T], -1)[None].repeat(3, 0))
    got = extractor._prepare(clips)
    want = _torch_batch(clips, cfg)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want)
    assert got.stride() == want.stride()  # the layout the backbone always got
    table = normalisation_table(extractor.mean, extractor.std).reshape(3, 256)
    unflipped = cfg.model_copy(update={"flip": False})
    values = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 1, 256, 3)
    assert np.array_equal(table, _torch_batch([values], unflipped)[0, :, 0, 0].numpy())
