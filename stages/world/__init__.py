"""The synthetic demo world: an AVA-format dataset that needs every kind of evidence.

``build_world(out, WorldConfig.tiny(seed=0))`` writes videos, GT, proposals and a label
map; see :mod:`stages.world.build` for the layout and :mod:`stages.world.classes` for the
classes and the rules that decide them.
"""

from stages.world.build import SplitSummary, WorldSummary, build_world, load_world_summary
from stages.world.classes import CLASSES, LONG_TERM_IDS, POSE_IDS, ActionClass
from stages.world.config import WorldConfig
from stages.world.files import class_table_text

__all__ = [
    "CLASSES",
    "LONG_TERM_IDS",
    "POSE_IDS",
    "ActionClass",
    "SplitSummary",
    "WorldConfig",
    "WorldSummary",
    "build_world",
    "class_table_text",
    "load_world_summary",
]
