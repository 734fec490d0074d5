"""The pipeline's stages, in order: a plain dict from name to :class:`stages.framework.Stage`.

The CLI and the Prefect task look stages up here by the names users type (``bankflow
stage detect``). Each stage is declared beside its config sections in its family's
``config.py`` (name, code version, config type, traits) and names its compute function by
dotted path, imported only when the stage runs: this module, configs and keys import no
torch (``bankflow status``, ``bankflow config show``; docs/design.md §1).
"""

from __future__ import annotations

from typing import Any

from stages.detect.config import DETECT, TRACK
from stages.evaluate.config import EVALUATE, LINK
from stages.extract.config import EXTRACT, FINETUNE
from stages.framework import Stage
from stages.predict.config import ENSEMBLE, PREDICT
from stages.report.config import REPORT
from stages.stage_names import STAGE_ORDER
from stages.train.config import DUMP, REBALANCE, TRAIN, TRAIN_BANK

__all__ = ["STAGES", "STAGE_ORDER"]

STAGES: dict[str, Stage[Any]] = {
    stage.name: stage
    for stage in (
        DETECT,
        TRACK,
        FINETUNE,
        EXTRACT,
        TRAIN,
        DUMP,
        TRAIN_BANK,
        PREDICT,  # test-time augmentation
        REBALANCE,
        LINK,  # tube datasets: detections -> tubes
        ENSEMBLE,
        EVALUATE,
        REPORT,
    )
}
