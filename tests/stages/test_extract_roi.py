"""extract.roi_align: the RoIAlign settings reach the extractor and the store schema."""

from __future__ import annotations

import numpy as np
import torch

from models.roi import RoIAlignSpec
from stages.extract.stage import ExtractConfig, RoIAlignConfig
from stages.extract.video import VideoExtractor, build_schema


def test_default_roi_align_leaves_the_schema_as_before():
    cfg = ExtractConfig(store_roi=True)
    assert cfg.model_dump()["roi_align"] == RoIAlignConfig().model_dump()  # in the key
    schema = build_schema(cfg, (16, 8, 10), None, None, None)
    assert schema.roi_shape == (16, 7, 7)
    assert "roi_align" not in schema.extra
    assert cfg.roi_align.spec() == RoIAlignSpec()


def test_mmaction2_roi_align_is_recorded_and_used():
    cfg = ExtractConfig(store_roi=True, roi_align={"output_size": 8, "spatial_scale": 0.0625})
    assert cfg.model_dump()["roi_align"]["output_size"] == 8
    schema = build_schema(cfg, (16, 8, 10), None, None, None)
    assert schema.roi_shape == (16, 8, 8)
    assert schema.extra["roi_align"]["spatial_scale"] == 0.0625

    class Map(torch.nn.Module):  # a "backbone" whose map is its input's first frame, /16
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x[:, :, 0], 16) * self.w

    extractor = VideoExtractor(Map(), cfg, schema)
    clip = np.random.default_rng(0).integers(0, 255, (4, 128, 160, 3), dtype=np.uint8)
    _, roi, pooled, _ = extractor._forward(
        extractor._prepare([clip]), [np.array([[0.1, 0.2, 0.6, 0.9]], np.float32)]
    )
    assert roi.shape == (1, 3, 8, 8)
    torch.testing.assert_close(pooled, roi.amax(dim=(2, 3)))


def test_bad_roi_align_is_a_config_error():
    import pytest

    with pytest.raises(ValueError, match="roi_align"):
        ExtractConfig(roi_align={"grid": 8})
    assert RoIAlignConfig(pool="avg").spec().pool == "avg"
