"""The pipeline's stage names, in order (docs/design.md §1) — and nothing else, so that the CLI's
help and argument checks can list them without importing a stage (torch, video readers).

:mod:`stages.catalog` maps each name to its :class:`stages.framework.Stage`.
"""

from __future__ import annotations

STAGE_ORDER: tuple[str, ...] = (
    "detect",
    "track",
    "finetune",
    "extract",
    "train",
    "dump",
    "train_bank",
    "rebalance",
    "predict",
    "link",
    "ensemble",
    "evaluate",
    "report",
)
