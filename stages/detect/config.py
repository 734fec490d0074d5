"""The detect and track stages as the catalog sees them: their config sections, code
versions and traits, without their compute (torch, torchvision, video decoding).

:mod:`stages.catalog` lists these specs; ``compute`` names the function that runs the stage
(:mod:`stages.detect.stage`, :mod:`stages.detect.track`), imported only when a stage runs.
So ``bankflow config show`` and ``bankflow status`` read configs and compute keys without
importing torch (docs/design.md §1).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.detector_arch import DetectorArch
from stages.data.dataset import DatasetConfig
from stages.framework import Stage
from stages.framework.keys import FileInKey, InKey, NotInKey


class DetectorFinetuneConfig(BaseModel):
    """Fine-tuning of the person detector on the train split's GT boxes."""

    model_config = ConfigDict(extra="forbid")

    split: InKey[str] = "train"
    epochs: InKey[int] = Field(5, ge=1)
    lr: InKey[float] = Field(0.01, gt=0)  # peak learning rate (linear warm-up, cosine decay)
    optimizer: InKey[Literal["sgd", "adamw"]] = "sgd"  # sgd: momentum 0.9, weight decay 1e-4
    batch_size: InKey[int] = Field(4, ge=1)  # keyframes per step
    max_keyframes: InKey[int | None] = Field(None, ge=1)  # a seeded random subset; None: all
    # Box-head RoIs sampled per image while training (torchvision's default is 512; the
    # box head's RoIAlign backward dominates a CPU step, and few persons need few RoIs).
    rois_per_image: InKey[int] = Field(128, ge=8)
    hflip: InKey[bool] = True  # flip each training image left-right with probability 1/2
    seed: InKey[int] = 0


class DetectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: InKey[Literal["proposals", "fasterrcnn"]] = "proposals"
    # Per-split proposal files overriding the dataset's own (AVA CSV or MMAction2 .pkl).
    proposals: FileInKey[dict[str, str]] = {}
    # Unpickling runs code: an MMAction2 pickle is read only with this opt-in.
    trust_pickle: NotInKey[bool] = False
    min_score: InKey[float] = 0.0  # proposals: drop boxes scoring below this
    splits: InKey[list[str]] = ["train", "val"]

    # --- source: fasterrcnn ---
    arch: InKey[DetectorArch] = "fasterrcnn_resnet50_fpn"
    # A local checkpoint of the whole detector (torchvision state dict, e.g. COCO, or a
    # detector.pt written by this stage); None starts from random weights (then
    # ``finetune`` is required). Its sha256 is recorded in detector.json.
    checkpoint: FileInKey[str | None] = None
    person_class: InKey[int] = Field(1, ge=1)  # the person label of a multi-class checkpoint (COCO)
    score_threshold: InKey[float] = Field(0.8, ge=0.0, le=1.0)  # the papers keep >= 0.8-0.9
    finetune: InKey[DetectorFinetuneConfig | None] = None
    # The detector resizes each frame so its shorter side has this many pixels (the longer
    # side is capped at twice that); None: the architecture's default (800, or 320).
    image_short_side: InKey[int | None] = Field(None, ge=32)
    batch_size: NotInKey[int] = Field(4, ge=1)  # keyframes per inference batch
    device: NotInKey[str] = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...


class DetectStageConfig(BaseModel):
    """What the detect stage's key covers: the dataset (with a fingerprint of its files)."""

    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    detect: InKey[DetectConfig]


class TrackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Which boxes are the actors of each split: GT persons or detected persons.
    boxes: InKey[dict[str, Literal["gt", "detections"]]] = {"train": "gt", "val": "detections"}
    min_iou: InKey[float] = 0.3  # a link needs at least this IoU
    # How long a track may go unseen (occlusion, missed detection), in timestamp units:
    # seconds for AVA (= keyframes), frames for tube datasets, whatever their keyframe
    # stride. A box at t links to a track last seen at t0 when t - t0 <= step + max_gap,
    # step being the split's keyframe spacing (AVA 1 s; a tube split's keyframe_stride).
    # So max_gap 2 lets an AVA track skip 2 keyframes, and a tube track skip 2 frames:
    # none at stride 4, one keyframe at stride 2, two at stride 1.
    max_gap: InKey[int] = Field(2, ge=0)


class TrackStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    track: InKey[TrackConfig]


DETECT = Stage(
    name="detect",
    code_version="2",
    config_type=DetectStageConfig,
    compute="stages.detect.stage:compute",
    resumable=True,  # the fasterrcnn path keeps per-epoch and per-split work in staging
)
TRACK = Stage(
    name="track",
    code_version="2",  # 2: max_gap beyond the keyframe step (tube strides)
    config_type=TrackStageConfig,
    compute="stages.detect.track:compute",
)
