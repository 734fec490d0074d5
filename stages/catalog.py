"""The pipeline's stage names, in order, and the stages built so far.

A plain dict from name to :class:`stages.framework.Stage`: the CLI and the Prefect task
look stages up here by the names users type (``bankflow stage detect``).
"""

from __future__ import annotations

from stages.detect import stage as detect
from stages.detect import track
from stages.evaluate import link
from stages.evaluate import stage as evaluate
from stages.extract import finetune
from stages.extract import stage as extract
from stages.framework import Stage
from stages.predict import ensemble, tta
from stages.report import stage as report
from stages.stage_names import STAGE_ORDER
from stages.train import bank as train_bank
from stages.train import dump, rebalance
from stages.train import stage as train

__all__ = ["STAGES", "STAGE_ORDER"]

STAGES: dict[str, Stage] = {
    detect.STAGE.name: detect.STAGE,
    track.STAGE.name: track.STAGE,
    finetune.STAGE.name: finetune.STAGE,
    extract.STAGE.name: extract.STAGE,
    train.STAGE.name: train.STAGE,
    dump.STAGE.name: dump.STAGE,
    train_bank.STAGE.name: train_bank.STAGE,
    tta.STAGE.name: tta.STAGE,  # "predict": test-time augmentation
    rebalance.STAGE.name: rebalance.STAGE,
    link.STAGE.name: link.STAGE,  # tube datasets: detections -> tubes
    ensemble.STAGE.name: ensemble.STAGE,
    evaluate.STAGE.name: evaluate.STAGE,
    report.STAGE.name: report.STAGE,
}
