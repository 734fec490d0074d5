"""models.roi: RoIAlign scales, grid, pooling and the references' settings."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from models.roi import ROI_PRESETS, RoIAlignSpec, actor_rois


def _ramp(h: int, w: int, axis: str) -> torch.Tensor:
    """[1, 1, h, w] map whose value is the row (``"y"``) or column index."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (rows if axis == "y" else cols).float()[None, None]


@pytest.mark.parametrize("axis", ["x", "y"])
def test_box_centre_lands_at_its_place_on_each_axis(axis):
    # 200 x 340 input -> 13 x 22 map: strides 15.4 (y) and 15.5 (x) differ.
    fmap = _ramp(13, 22, axis)
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.7]])
    spec = RoIAlignSpec(pool="avg")
    _, pooled = actor_rois(fmap, boxes, torch.zeros(1, dtype=torch.long),
                           input_size=(200, 340), spec=spec)  # fmt: skip
    # A linear ramp sampled symmetrically about the box centre averages to the centre,
    # in map cells minus the half-pixel offset of aligned=True.
    centre = 0.5 * 13 - 0.5 if axis == "y" else 0.4 * 22 - 0.5
    assert pooled.item() == pytest.approx(centre, abs=1e-5)
    if axis == "y":  # the old scaling (y times the width ratio 22/340) missed by 0.03 cells
        assert abs(pooled.item() - (0.5 * 200 * 22 / 340 - 0.5)) > 0.02


def test_fixed_scale_is_the_references_pixel_rois():
    torch.manual_seed(0)
    fmap = torch.randn(2, 5, 13, 22)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.35]])
    index = torch.tensor([0, 1, 1])
    spec = ROI_PRESETS["mmaction2"]
    roi, pooled = actor_rois(fmap, boxes, index, input_size=(200, 340), spec=spec)
    pixels = torch.cat([index[:, None].float(), boxes * torch.tensor([340, 200, 340, 200])], 1)
    expected = roi_align(fmap, pixels, output_size=8, spatial_scale=1 / 16, sampling_ratio=0,
                         aligned=True)  # fmt: skip
    assert roi.shape == (3, 5, 8, 8)
    torch.testing.assert_close(roi, expected, rtol=0, atol=0)
    torch.testing.assert_close(pooled, expected.amax(dim=(2, 3)), rtol=0, atol=0)


def test_grid_sampling_aligned_and_pool_are_passed_through():
    torch.manual_seed(1)
    fmap = torch.randn(1, 3, 16, 16)
    boxes = torch.tensor([[0.1, 0.15, 0.55, 0.8]])
    spec = RoIAlignSpec(output_size=5, aligned=False, sampling_ratio=2, pool="avg")
    roi, pooled = actor_rois(fmap, boxes, torch.zeros(1, dtype=torch.long),
                             input_size=(256, 256), spec=spec)  # fmt: skip
    rois = torch.tensor([[0.0, 0.1 * 16, 0.15 * 16, 0.55 * 16, 0.8 * 16]])
    expected = roi_align(fmap, rois, 5, spatial_scale=1.0, sampling_ratio=2, aligned=False)
    torch.testing.assert_close(roi, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, expected.mean(dim=(2, 3)))


def test_default_is_unchanged_when_the_input_is_a_multiple_of_the_stride():
    torch.manual_seed(2)
    fmap = torch.randn(1, 4, 16, 20)
    boxes = torch.tensor([[0.12, 0.2, 0.7, 0.95]])
    roi, pooled = actor_rois(fmap, boxes, torch.zeros(1, dtype=torch.long), input_size=(256, 320))
    pixels = torch.tensor([[0.0, 0.12 * 320, 0.2 * 256, 0.7 * 320, 0.95 * 256]])
    expected = roi_align(fmap, pixels, 7, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(roi, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pooled, expected.amax(dim=(2, 3)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value"),
    [("output_size", 0), ("sampling_ratio", -1), ("pool", "median"), ("spatial_scale", 0.0)],
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field.split("_")[-1]):
        RoIAlignSpec(**{field: value})
