"""The person detector architectures bankflow builds (:mod:`models.detector`), named
without importing torch, so that a pipeline config naming one validates without it."""

from __future__ import annotations

from typing import Literal, get_args

DetectorArch = Literal[
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
]
DETECTOR_ARCHS: tuple[str, ...] = get_args(DetectorArch)
