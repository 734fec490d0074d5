"""The person detector: a torchvision Faster R-CNN, built without downloading anything.

``build_person_detector`` calls torchvision's builders with ``weights=None,
weights_backbone=None`` and optionally loads a local checkpoint of the *whole* detector:

* a torchvision ``state_dict()`` (e.g. a COCO Faster R-CNN saved by torchvision), bare or
  wrapped as ``{"model": ...}`` / ``{"state_dict": ...}`` (the detectron2 / MMDetection
  habit), with or without a DataParallel ``module.`` prefix;
* a checkpoint written by bankflow's fine-tuning (``{"arch": ..., "model": ...}``).

A COCO checkpoint has 91 classes (background + 90 categories, person is 1). With the
default ``num_classes=2`` its box predictor is cut down to background + ``person_class``
(rows of the classifier and the matching 4 rows of the box regressor), which gives the same
person scores as the full model would when the other classes score low (softmax over fewer
classes: every other class's probability mass moves to the two kept ones). Pass
``num_classes=91`` to keep every class; :func:`detect_persons` then keeps label
``person_class`` only. Key names are torchvision's: detectron2's own naming is not mapped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models import detection
from torchvision.models.detection import FasterRCNN

from models.detector_arch import DETECTOR_ARCHS as DETECTOR_ARCHS
from models.detector_arch import DetectorArch as DetectorArch

_BUILDERS: dict[str, Callable[..., FasterRCNN]] = {
    "fasterrcnn_resnet50_fpn": detection.fasterrcnn_resnet50_fpn,
    "fasterrcnn_resnet50_fpn_v2": detection.fasterrcnn_resnet50_fpn_v2,
    "fasterrcnn_mobilenet_v3_large_fpn": detection.fasterrcnn_mobilenet_v3_large_fpn,
    "fasterrcnn_mobilenet_v3_large_320_fpn": detection.fasterrcnn_mobilenet_v3_large_320_fpn,
}
_CLS_WEIGHT = "roi_heads.box_predictor.cls_score.weight"
_CLS_BIAS = "roi_heads.box_predictor.cls_score.bias"
_BOX_WEIGHT = "roi_heads.box_predictor.bbox_pred.weight"
_BOX_BIAS = "roi_heads.box_predictor.bbox_pred.bias"
_WRAPPERS = ("model", "state_dict", "model_state")


class DetectorCheckpointError(ValueError):
    """A detector checkpoint is missing or does not fit the architecture (names the file)."""


def build_person_detector(
    arch: DetectorArch,
    *,
    weights_path: str | Path | None = None,
    num_classes: int = 2,
    person_class: int = 1,
    min_size: int | None = None,
    max_size: int | None = None,
    box_score_thresh: float = 0.05,
    detections_per_img: int = 100,
) -> FasterRCNN:
    """A Faster R-CNN person detector, randomly initialised or loaded from a local file.

    Args:
        arch: one of :data:`DETECTOR_ARCHS` (torchvision builder names).
        weights_path: a local checkpoint of the full detector (see the module doc); None
            keeps torchvision's random initialisation (nothing is ever downloaded).
        num_classes: classes of the built detector, background included. 2 means
            background + person (label 1); a checkpoint with more classes is cut down to
            background + ``person_class``.
        person_class: the person's label in a multi-class checkpoint (COCO: 1).
        min_size, max_size: the detector's internal resize (shorter side scaled to
            ``min_size`` pixels unless the longer one would exceed ``max_size``); None keeps
            the architecture's default (800/1333, 320/640 for the ``_320_`` variant).
        box_score_thresh: detections below this score are dropped inside the model.
        detections_per_img: at most this many boxes per image.

    Returns:
        A ``torchvision`` ``FasterRCNN`` in eval mode on the CPU.

    Raises:
        DetectorCheckpointError: ``weights_path`` does not exist, is not a detector
            checkpoint, or its tensors do not fit ``arch`` (names the file and the keys).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown detector arch {arch!r}; expected one of {DETECTOR_ARCHS}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + person), got {num_classes}")
    kwargs: dict[str, Any] = {
        "box_score_thresh": box_score_thresh,
        "box_detections_per_img": detections_per_img,
    }
    if min_size is not None:
        kwargs["min_size"] = min_size
    if max_size is not None:
        kwargs["max_size"] = max_size
    model = _BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if weights_path is not None:
        state = load_detector_state(weights_path, arch=arch)
        state = _fit_classes(state, num_classes, person_class, weights_path)
        _load_strict(model, state, weights_path)
    return model.eval()


def load_detector_state(path: str | Path, *, arch: str | None = None) -> dict[str, Tensor]:
    """The detector ``state_dict`` in a checkpoint file, unwrapped and without ``module.``.

    Raises:
        DetectorCheckpointError: the file is missing or unreadable, holds no state dict,
            or was saved by bankflow for another ``arch``.
    """
    path = Path(path)
    if not path.is_file():
        raise DetectorCheckpointError(f"{path}: detector checkpoint not found")
    try:
        # weights_only: a checkpoint is data; never run code stored in it.
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise DetectorCheckpointError(f"{path}: cannot read detector checkpoint: {err}") from err
    if isinstance(raw, Mapping) and arch is not None and "arch" in raw and raw["arch"] != arch:
        raise DetectorCheckpointError(
            f"{path}: checkpoint was saved for arch {raw['arch']!r}, not {arch!r}"
        )
    state: Any = raw
    while isinstance(state, Mapping) and not _is_state_dict(state):
        inner = next((state[k] for k in _WRAPPERS if k in state), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        raise DetectorCheckpointError(
            f"{path}: no detector state dict found (expected tensors, optionally under one of "
            f"{_WRAPPERS})"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_state_dict(value: Mapping[Any, Any]) -> bool:
    return bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    )


def _fit_classes(
    state: dict[str, Tensor], num_classes: int, person_class: int, path: str | Path
) -> dict[str, Tensor]:
    """Cut a multi-class box predictor down to background + person when asked to."""
    if _CLS_WEIGHT not in state or _BOX_WEIGHT not in state:
        return state  # the strict load reports the missing keys
    have = int(state[_CLS_WEIGHT].shape[0])
    if have == num_classes:
        return state
    if num_classes != 2:
        raise DetectorCheckpointError(
            f"{path}: checkpoint has {have} classes, the detector was asked for {num_classes}"
        )
    if not 1 <= person_class < have:
        raise DetectorCheckpointError(
            f"{path}: person_class {person_class} is not a class of this {have}-class checkpoint"
        )
    keep = torch.tensor([0, person_class])
    box_rows = torch.cat([torch.arange(4 * c, 4 * c + 4) for c in keep.tolist()])
    out = dict(state)
    out[_CLS_WEIGHT] = state[_CLS_WEIGHT][keep]
    out[_BOX_WEIGHT] = state[_BOX_WEIGHT][box_rows]
    if _CLS_BIAS in state:
        out[_CLS_BIAS] = state[_CLS_BIAS][keep]
    if _BOX_BIAS in state:
        out[_BOX_BIAS] = state[_BOX_BIAS][box_rows]
    return out


def _load_strict(model: FasterRCNN, state: dict[str, Tensor], path: str | Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise DetectorCheckpointError(
            f"{path}: checkpoint does not fit this detector: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(shapes)} shape mismatches (checkpoint vs model) {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)


def detector_checkpoint(model: FasterRCNN, arch: str) -> dict[str, Any]:
    """What bankflow saves for a detector (``torch.save`` it; loadable by the builder)."""
    return {"arch": arch, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


@torch.inference_mode()
def detect_persons(
    model: FasterRCNN,
    images: Sequence[Tensor],
    *,
    person_label: int = 1,
    score_threshold: float = 0.0,
) -> list[tuple[Tensor, Tensor]]:
    """Person boxes of each image.

    Args:
        model: a detector from :func:`build_person_detector` (switched to eval mode here).
        images: float [3, H_i, W_i] RGB in [0, 1], on the model's device.
        person_label: the label of the person class (1 for a 2-class detector and COCO).
        score_threshold: keep boxes with score >= this.

    Returns:
        Per image: boxes float32 [N, 4] normalized ``x1, y1, x2, y2`` (by the image's width
        and height, clipped to [0, 1]) and scores float32 [N], by decreasing score, on the
        CPU.
    """
    model.eval()
    outputs = model(list(images))
    results = []
    for image, out in zip(images, outputs, strict=True):
        height, width = image.shape[-2:]
        keep = (out["labels"] == person_label) & (out["scores"] >= score_threshold)
        boxes = out["boxes"][keep].float().cpu()
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = (boxes / scale).clamp_(0.0, 1.0)
        scores = out["scores"][keep].float().cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        results.append((boxes[order], scores[order]))
    return results


def detector_losses(
    model: FasterRCNN, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Faster R-CNN training losses (RPN and box head), in train mode.

    Args:
        images: float [3, H_i, W_i] in [0, 1].
        targets: per image ``{"boxes": float [G, 4] pixels x1,y1,x2,y2, "labels": int64 [G]}``.

    Returns:
        ``loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg`` scalars.
    """
    model.train()
    return model(list(images), [dict(t) for t in targets])
