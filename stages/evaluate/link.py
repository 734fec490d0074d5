"""link: a model's per-frame detections linked into tubes (tube datasets only).

Input ``predictions``: a model's output (``predictions/<split>.csv``, as every
model-producing stage writes). Each box keeps its best class (:func:`frame_detections`)
and the boxes are linked per video and class by MOC's linker
(:mod:`stages.evaluate.linking`) with the ``link`` section's parameters
(:class:`LinkingConfig`). The prior-only baseline (every box scored by the class
frequencies of ``train_split``'s GT) is linked from the same boxes, so the ``evaluate``
stage compares the model with it on equal tubes.

Output: ``tubes/<split>.npz`` and ``tubes/<split>_prior.npz`` (:func:`save_tubes`: no
pickle, exact) — what the ``evaluate`` stage scores for video-mAP. AVA datasets have no
tubes: the pipeline runs this stage on tube datasets only (docs/tubes.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.data import Dataset, read_detections_csv
from stages.evaluate.config import LINK as STAGE  # noqa: F401 (the stage, for tests)
from stages.evaluate.config import LinkStageConfig
from stages.evaluate.tube_eval import (
    frame_detections,
    link_detections,
    prior_table,
    save_tubes,
)
from stages.framework import StageContext, StageError, verify_published_file

PREDICTIONS_DIR = "predictions"  # where every model-producing stage writes its predictions
TUBES_DIR = "tubes"


def tubes_file(uri: str | Path, split: str, *, prior: bool = False) -> Path:
    """Where a link output keeps the tubes of ``split`` (the prior baseline's: ``prior``)."""
    return Path(uri) / TUBES_DIR / f"{split}{'_prior' if prior else ''}.npz"


def read_predictions(ctx: StageContext[Any], split: str) -> Any:
    """The ``predictions`` input's rows of ``split``, verified against its manifest."""
    uri = Path(ctx.input("predictions").uri)
    path = uri / PREDICTIONS_DIR / f"{split}.csv"
    if not path.is_file():
        raise StageError(f"{ctx.stage}: {path} does not exist (no {split!r} predictions)")
    verify_published_file(uri, f"{PREDICTIONS_DIR}/{path.name}")
    return read_detections_csv(path, strict=False)


def compute(ctx: StageContext[LinkStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    dataset = Dataset.open(cfg.dataset)
    if not dataset.is_tubes:
        raise StageError(
            f"link: {cfg.dataset.root} is not a tube dataset (no tubes: section); "
            "AVA datasets are evaluated per keyframe, without linking"
        )
    preds = read_predictions(ctx, cfg.split)
    gt, videos = dataset.tube_gt, dataset.tube_videos(cfg.split)
    prior = prior_table(preds, dataset.gt(cfg.train_split).action, dataset.labelmap.ids)
    out = ctx.staging / TUBES_DIR
    out.mkdir()
    counts = {}
    for name, table in (("tubes", preds), ("prior_tubes", prior)):
        dets = frame_detections(table, gt, videos)
        tubes = link_detections(gt, dets, videos, cfg.link)
        save_tubes(tubes_file(ctx.staging, cfg.split, prior=name == "prior_tubes"), tubes)
        counts[name] = sum(len(t) for t in tubes.values())
        counts.setdefault("frame_detections", len(dets))
    ctx.log.info(
        "link: %d tubes from %d boxes of %s", counts["tubes"], counts["frame_detections"], cfg.split
    )
    return {"split": cfg.split, **counts}
