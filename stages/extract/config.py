"""The finetune and extract stages as the catalog sees them: config sections, code versions
and traits, without their compute (:mod:`stages.extract.stage`, :mod:`stages.extract.finetune`:
torch, video decoding), which is imported only when a stage runs (docs/design.md §1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stages.data.dataset import DatasetConfig
from stages.framework import Stage
from stages.framework.keys import FileInKey, FileOrNameInKey, InKey, NotInKey
from stages.framework.precision_names import Precision

if TYPE_CHECKING:
    from models.roi import RoIAlignSpec


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
    # Autocast of the backbone forward (stages.framework.precision); the store stays fp16.
    precision: InKey[Precision] = "fp32"
    splits: InKey[list[str]] = ["train", "val"]
    allow_low_disk: NotInKey[bool] = False


class ExtractStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    extract: InKey[ExtractConfig]


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: InKey[int] = Field(4, ge=1)
    batch_keyframes: InKey[int] = Field(8, ge=1)  # keyframes per step, all their GT persons
    optimizer: InKey[Literal["sgd", "adamw"]] = "adamw"
    lr: InKey[float] = Field(1e-3, gt=0)  # peak lr after warm-up, cosine to zero
    momentum: InKey[float] = 0.9  # SGD only
    weight_decay: InKey[float] = 1e-4
    warmup_epochs: InKey[float] = 0.5
    grad_clip: InKey[float] = 5.0  # max global grad norm; 0 disables
    dropout: InKey[float] = Field(0.5, ge=0.0, lt=1.0)  # before the FC, as SlowFast-Det
    loss: InKey[Literal["ava", "bce"]] = "ava"
    flip: InKey[bool] = True  # random horizontal flip of clip and boxes (p = 0.5 per keyframe)
    split: InKey[str] = "train"
    max_keyframes: InKey[int | None] = Field(None, ge=1)  # seeded subset, for quick demos
    freeze_bn: InKey[bool] = False  # BN statistics frozen (pretrained weights, tiny batches)
    seed: InKey[int] = 0
    device: NotInKey[Literal["auto", "cpu", "cuda"]] = "auto"
    # Autocast of the forward pass (stages.framework.precision): fp32, bf16, fp16 (CUDA).
    precision: InKey[Precision] = "fp32"
    # Data-parallel processes (stages.framework.distributed): each takes its slice of every batch.
    devices: NotInKey[int] = Field(1, ge=1)
    # torch intra-op CPU threads while training (None: torch's default). On a CPU shared
    # with other jobs, 1 thread measured 2x faster than 2 (threads spin-wait for each other).
    num_threads: NotInKey[int | None] = Field(None, ge=1)
    clip_cache: NotInKey[Literal["auto", "memory", "stream"]] = "auto"
    cache_max_bytes: NotInKey[int] = 2 << 30  # ``auto`` caches clips in RAM below this size


class FinetuneStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    finetune: InKey[FinetuneConfig]
    extract: InKey[BackboneConfig]  # backbone, its kwargs/initial weights, clip sampling


FINETUNE = Stage(
    name="finetune",
    code_version="2",  # 2: RoIAlign y scale measured on the y axis (was the x ratio)
    config_type=FinetuneStageConfig,
    compute="stages.extract.finetune:compute",
    resumable=True,
    gpu=True,
)
EXTRACT = Stage(
    name="extract",
    code_version="3",  # 2: fine-tuned weights win over extract.weights; 3: RoI y scale per axis
    config_type=ExtractStageConfig,
    compute="stages.extract.stage:compute",
    resumable=True,
    gpu=True,
    self_coordinated=True,  # per-video claims in the store, one publisher (stages.extract.workers)
)
