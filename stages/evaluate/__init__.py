"""Evaluation: AVA frame-mAP (official protocol, vectorised), breakdowns, reports, and
frame/video-mAP for tube datasets."""

from stages.evaluate.ava import evaluate_ava, evaluate_ava_files
from stages.evaluate.breakdown import detector_ap, head_tail, head_tail_change
from stages.evaluate.linking import link_tubes
from stages.evaluate.report import write_ava_outputs
from stages.evaluate.result import AvaResult
from stages.evaluate.tubes import frame_map, video_map, video_map_summary

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
