"""The synthetic demo world: an AVA-format dataset that needs every kind of evidence.

``build_world(out, WorldConfig.tiny(seed=0))`` writes videos, GT, proposals and a label
map; see :mod:`stages.world.build` for the layout and :mod:`stages.world.classes` for the
classes and the rules that decide them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.world.build import SplitSummary, WorldSummary, build_world, load_world_summary
    from stages.world.classes import CLASSES, LONG_TERM_IDS, POSE_IDS, ActionClass
    from stages.world.config import WorldConfig
    from stages.world.files import class_table_text

# Imported on first use: a pipeline config names the world (stages.world.config) without
# the renderer and video encoder (PyAV) being loaded.
_LAZY = {
    "SplitSummary": "build",
    "WorldSummary": "build",
    "build_world": "build",
    "load_world_summary": "build",
    "CLASSES": "classes",
    "LONG_TERM_IDS": "classes",
    "POSE_IDS": "classes",
    "ActionClass": "classes",
    "WorldConfig": "config",
    "class_table_text": "files",
}

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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"stages.world.{_LAZY[name]}"), name)
