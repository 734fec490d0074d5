"""The extract stage's config sections (and the backbone fields finetune shares), apart
from its compute so that the modules of its compute (:mod:`stages.extract.video`,
:mod:`stages.extract.workers`) and the stage (:mod:`stages.extract.stage`) all import
them without importing each other in a circle (docs/design.md §9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from stages.data import DatasetConfig
from stages.framework.keys import FileInKey, FileOrNameInKey, InKey, NotInKey

if TYPE_CHECKING:
    from models.roi import RoIAlignSpec

__all__ = ["BackboneConfig", "ExtractConfig", "ExtractStageConfig", "RoIAlignConfig"]


class RoIAlignConfig(BaseModel):
    """How actor boxes are pooled (``models.roi.RoIAlignSpec``; the defaults are
    bankflow's, MMAction2's AVA configs: ``output_size: 8, spatial_scale: 0.0625``)."""

    model_config = ConfigDict(extra="forbid")

    output_size: InKey[int] = 7  # RoIAlign grid side
    aligned: InKey[bool] = True  # torchvision's half-pixel offset
    sampling_ratio: InKey[int] = 0  # samples per bin side, 0 = adaptive
    pool: InKey[Literal["max", "avg"]] = "max"  # grid -> the pooled actor vector
    # None: map size / input size on each axis; a number: that scale on both (1/16).
    spatial_scale: InKey[float | None] = None

    def spec(self) -> RoIAlignSpec:
        from models.roi import RoIAlignSpec  # torch: only when features are pooled

        return RoIAlignSpec(**self.model_dump())


class BackboneConfig(BaseModel):
    """The backbone and its input clips: what the finetune stage shares with extract."""

    model_config = ConfigDict(extra="forbid")

    backbone: InKey[str] = "slowfast_r50"
    backbone_kwargs: InKey[dict[str, Any]] = {}
    # A local checkpoint (PySlowFast / MMAction2 / bankflow); None = the finetune stage's
    # weights when the pipeline has one, else a fixed-seed random init (demo only).
    weights: FileInKey[str | None] = None
    # Where the weights' architecture is stated (strides, dilations, alpha, frame sampling,
    # input normalisation): a PySlowFast .yaml, an MMAction2 .py (parsed, never run),
    # pytorchvideo:<hub name> or a preset such as pyslowfast/SLOWFAST_32x2_R50_SHORT.
    # None: the config the checkpoint embeds; a zoo checkpoint without one is refused.
    source_config: FileOrNameInKey[str | None] = None
    num_frames: InKey[int] = 32  # frames of the (fast) clip
    frame_stride: InKey[int] = 2  # source frames between clip frames
    target_fps: InKey[float | None] = None  # measure the stride at this rate (AVA: 30)
    short_side: InKey[int | None] = 256
    mean: InKey[tuple[float, float, float]] = (0.45, 0.45, 0.45)
    std: InKey[tuple[float, float, float]] = (0.225, 0.225, 0.225)

    @classmethod
    def of(cls, config: BackboneConfig) -> BackboneConfig:
        """Only the backbone fields of ``config`` (an :class:`ExtractConfig`, say)."""
        return cls.model_validate(config.model_dump(include=set(cls.model_fields)))


class ExtractConfig(BackboneConfig):
    model_config = ConfigDict(extra="forbid")

    seed: InKey[int] = 0  # of the random init when there are no weights
    # Flip every frame left-right before the backbone, boxes with it (x1' = 1 - x2): a
    # test-time augmentation view (stages.predict.tta). The store then holds the flipped boxes.
    flip: InKey[bool] = False
    # Pool the context map to this (h, w) grid before storing (None: full map).
    context_grid: InKey[tuple[int, int] | None] = None
    store_roi: InKey[bool] = False  # keep the RoI maps (ACRN, PCCA, IGMN, S-only read them)
    store_roi_t: InKey[bool] = False  # keep temporal RoI maps (T-only)
    roi_align: InKey[RoIAlignConfig] = RoIAlignConfig()
    batch_size: NotInKey[int] = 8  # keyframes per backbone forward (inference)
    device: NotInKey[Literal["auto", "cpu", "cuda"]] = "auto"
    splits: InKey[list[str]] = ["train", "val"]
    allow_low_disk: NotInKey[bool] = False


class ExtractStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    extract: InKey[ExtractConfig]
