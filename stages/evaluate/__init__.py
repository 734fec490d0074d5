"""Evaluation: AVA frame-mAP (official protocol, vectorised), breakdowns, reports, and
frame/video-mAP for tube datasets."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.evaluate.ava import evaluate_ava, evaluate_ava_files
    from stages.evaluate.breakdown import detector_ap, head_tail, head_tail_change
    from stages.evaluate.linking import link_tubes
    from stages.evaluate.report import write_ava_outputs
    from stages.evaluate.result import AvaResult
    from stages.evaluate.tubes import frame_map, video_map, video_map_summary

# Imported on first use: a config section (stages.evaluate.config) loads no evaluator.
_LAZY = {
    "evaluate_ava": "stages.evaluate.ava",
    "evaluate_ava_files": "stages.evaluate.ava",
    "detector_ap": "stages.evaluate.breakdown",
    "head_tail": "stages.evaluate.breakdown",
    "head_tail_change": "stages.evaluate.breakdown",
    "link_tubes": "stages.evaluate.linking",
    "write_ava_outputs": "stages.evaluate.report",
    "AvaResult": "stages.evaluate.result",
    "frame_map": "stages.evaluate.tubes",
    "video_map": "stages.evaluate.tubes",
    "video_map_summary": "stages.evaluate.tubes",
}

__all__ = [
    "AvaResult",
    "detector_ap",
    "evaluate_ava",
    "evaluate_ava_files",
    "frame_map",
    "head_tail",
    "head_tail_change",
    "link_tubes",
    "video_map",
    "video_map_summary",
    "write_ava_outputs",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
