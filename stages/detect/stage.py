"""detect: person boxes on every keyframe.

Two sources (``detect.source``):

* ``proposals``: import existing proposals, as the papers do with the released AVA person
  proposals: the dataset's ``person_boxes_<split>.csv`` (or any AVA CSV / MMAction2 pickle
  named in the config). Boxes below ``min_score`` are dropped.
* ``fasterrcnn``: run a torchvision Faster R-CNN (``arch``) loaded from ``checkpoint``
  and/or fine-tuned on the train split's GT boxes (``finetune``; see
  :mod:`stages.detect.training`), keeping boxes with score >= ``score_threshold``. It
  runs on every keyframe of each configured split: the split's GT keyframes together with
  the keyframes of the dataset's proposal file when it has one (AVA's released proposals
  cover every keyframe, so on AVA this is every keyframe). The fine-tuned weights are
  written as ``detector.pt`` (loadable with ``build_person_detector(weights_path=...)``)
  and the training report as ``detector.json``. Resumable: fine-tuning per epoch and
  detection per split (finished splits are kept in the staging directory).

On splits that have GT the detector's AP@0.5 and recall are measured and reported in the
summary (and so in the provenance).

Output: ``persons.parquet`` with columns ``split, video, timestamp, x1, y1, x2, y2, score``
sorted by (split, video, timestamp, -score).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchvision.models.detection import FasterRCNN

from models.detector import (
    DetectorCheckpointError,
    build_person_detector,
    detect_persons,
    detector_checkpoint,
)
from stages.data import (
    NO_ACTION,
    NO_PERSON,
    BoxTable,
    Dataset,
    read_detections_csv,
    read_mmaction_proposals,
)
from stages.data.dataset import unique_keyframes
from stages.detect.config import DETECT as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.detect.config import DetectConfig, DetectorFinetuneConfig, DetectStageConfig  # noqa: F401 (re-exported)
from stages.detect.training import (
    decode_keyframes,
    finetune_detector,
    to_tensor,
    training_set,
)
from stages.evaluate.breakdown import detector_ap
from stages.framework import (
    StageContext,
    StageError,
    verify_published_file,
    write_json_atomic,
)

PERSONS_FILE = "persons.parquet"
DETECTOR_FILE = "detector.pt"
DETECTOR_REPORT = "detector.json"
PARTS_DIR = "parts"  # per-split results of an unfinished run (staging only)
FINETUNE_DIR = "finetune"  # fine-tuning state of an unfinished run (staging only)


def _load_proposals(dataset: Dataset, cfg: DetectConfig, split: str) -> BoxTable:
    override = cfg.proposals.get(split)
    if override is not None:
        path = Path(override)
        if path.suffix in {".pkl", ".pickle"}:
            return read_mmaction_proposals(path, trust_pickle=cfg.trust_pickle)
        return read_detections_csv(path)
    table = dataset.proposals(split)
    if table is None:
        raise StageError(
            f"detect: split {split!r} has no proposal file in {dataset.config.root} "
            "(set detect.proposals.<split>=FILE or add the dataset's person_boxes file)"
        )
    return table


def persons_table(split: str, boxes: BoxTable) -> pa.Table:
    order = np.lexsort((-boxes.score, boxes.timestamp, boxes.video.astype(str)))
    b = boxes.take(order)
    return pa.table(
        {
            "split": pa.array([split] * len(b), pa.string()),
            "video": pa.array(b.video.astype(str), pa.string()),
            "timestamp": pa.array(b.timestamp, pa.int64()),
            "x1": b.boxes[:, 0].astype(np.float32),
            "y1": b.boxes[:, 1].astype(np.float32),
            "x2": b.boxes[:, 2].astype(np.float32),
            "y2": b.boxes[:, 3].astype(np.float32),
            "score": b.score.astype(np.float32),
        }
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise StageError(f"detect.device: {name!r} is not a torch device ({err})") from None


def detection_keyframes(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's GT keyframes with those of its proposal file (if any), unique, sorted."""
    video, stamp = dataset.keyframes(split)
    proposals = dataset.proposals(split)
    if proposals is not None:
        video = np.concatenate([video.astype(str), proposals.video.astype(str)])
        stamp = np.concatenate([stamp, proposals.timestamp])
    return unique_keyframes(video, stamp)


def boxes_table(
    video: list[str], stamp: list[int], boxes: np.ndarray, score: np.ndarray
) -> BoxTable:
    """A BoxTable of detections (no action, no person id)."""
    n = len(video)
    return BoxTable(
        video=np.array(video, dtype=object),
        timestamp=np.asarray(stamp, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(n, 4),
        action=np.full(n, NO_ACTION, dtype=np.int64),
        person=np.full(n, NO_PERSON, dtype=np.int64),
        score=np.asarray(score, dtype=np.float64),
        line=np.arange(1, n + 1, dtype=np.int64),
    )


def boxes_from_persons(table: pa.Table) -> BoxTable:
    """The inverse of :func:`persons_table` (one split's rows)."""
    cols = {name: table[name].to_numpy() for name in ("x1", "y1", "x2", "y2", "score")}
    return boxes_table(
        table["video"].to_pylist(),
        table["timestamp"].to_pylist(),
        np.stack([cols["x1"], cols["y1"], cols["x2"], cols["y2"]], axis=1),
        cols["score"],
    )


def load_detector(ctx: StageContext, dataset: Dataset, cfg: DetectConfig) -> FasterRCNN:
    """The configured detector: checkpoint and/or fine-tuning (reused if already done)."""
    if cfg.checkpoint is None and cfg.finetune is None:
        raise StageError(
            "detect: source 'fasterrcnn' needs detect.checkpoint (a local detector file) or "
            "detect.finetune (train on the dataset's GT boxes); weights are never downloaded"
        )
    size = cfg.image_short_side
    build: dict[str, Any] = {
        "arch": cfg.arch,
        "person_class": cfg.person_class,
        "min_size": size,
        "max_size": None if size is None else 2 * size,
        "box_score_thresh": cfg.score_threshold,
    }
    trained = ctx.staging / DETECTOR_FILE
    if cfg.finetune is not None and trained.is_file():  # fine-tuned by a killed run
        return build_person_detector(**build, weights_path=trained)
    try:
        model = build_person_detector(**build, weights_path=cfg.checkpoint)
    except DetectorCheckpointError as err:
        raise StageError(f"detect.checkpoint: {err}") from None
    report: dict[str, Any] = {"arch": cfg.arch, "checkpoint": cfg.checkpoint}
    if cfg.checkpoint is not None:
        report["checkpoint_sha256"] = _sha256(Path(cfg.checkpoint))
    if cfg.finetune is not None:
        ft = cfg.finetune
        gt = dataset.gt(ft.split)
        ctx.log.info("detect: decoding fine-tuning keyframes of split %s", ft.split)
        data = training_set(dataset, gt, max_keyframes=ft.max_keyframes, seed=ft.seed)
        report["finetune"] = finetune_detector(
            model,
            data,
            ft,
            state_dir=ctx.staging / FINETUNE_DIR,
            device=resolve_device(cfg.device),
            log=ctx.log,
        )
    # The report goes first: a detector.pt in staging means the fine-tune is complete.
    write_json_atomic(ctx.staging / DETECTOR_REPORT, report)
    if cfg.finetune is not None:
        tmp = trained.with_name(f".{trained.name}.tmp")
        torch.save(detector_checkpoint(model, cfg.arch), tmp)
        os.replace(tmp, trained)
        shutil.rmtree(ctx.staging / FINETUNE_DIR, ignore_errors=True)  # resume data only
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_split(
    model: FasterRCNN, dataset: Dataset, split: str, cfg: DetectConfig, device: torch.device
) -> BoxTable:
    """Detections on every keyframe of ``split`` (see :func:`detection_keyframes`)."""
    videos, stamps = detection_keyframes(dataset, split)
    out_video: list[str] = []
    out_stamp: list[int] = []
    out_boxes: list[np.ndarray] = []
    out_score: list[np.ndarray] = []
    for images in decode_keyframes(dataset, videos, stamps):
        for start in range(0, len(images.timestamp), cfg.batch_size):
            frames = images.frames[start : start + cfg.batch_size]
            tensors = [to_tensor(f).to(device) for f in frames]
            found = detect_persons(model, tensors, score_threshold=cfg.score_threshold)
            batch_stamps = images.timestamp[start : start + cfg.batch_size]
            for t, (boxes, scores) in zip(batch_stamps, found, strict=True):
                b = boxes.numpy()
                keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # clipping can flatten a box
                out_video += [images.video] * int(keep.sum())
                out_stamp += [int(t)] * int(keep.sum())
                out_boxes.append(b[keep])
                out_score.append(scores.numpy()[keep])
    all_boxes = np.concatenate(out_boxes) if out_boxes else np.empty((0, 4))
    all_scores = np.concatenate(out_score) if out_score else np.empty(0)
    return boxes_table(out_video, out_stamp, all_boxes, all_scores)


def run_detector(ctx: StageContext, dataset: Dataset, cfg: DetectConfig) -> dict[str, BoxTable]:
    """Person boxes of every configured split; finished splits of a killed run are reused."""
    model = load_detector(ctx, dataset, cfg)
    device = resolve_device(cfg.device)
    model.to(device)
    parts = ctx.staging / PARTS_DIR
    parts.mkdir(exist_ok=True)
    result = {}
    for split in cfg.splits:
        part = parts / f"{split}.parquet"
        if part.is_file():
            result[split] = boxes_from_persons(pq.read_table(part))
            continue
        t0 = time.perf_counter()
        result[split] = detect_split(model, dataset, split, cfg, device)
        ctx.log.info("detect: split %s in %.1f s", split, time.perf_counter() - t0)
        tmp = part.with_name(f".{part.name}.tmp")
        pq.write_table(persons_table(split, result[split]), tmp)
        os.replace(tmp, part)
    return result


def split_summary(dataset: Dataset, split: str, boxes: BoxTable) -> dict[str, Any]:
    """Box and keyframe counts, and AP@0.5 / recall when the split has GT."""
    summary: dict[str, Any] = {
        "boxes": len(boxes),
        "keyframes": len(set(zip(boxes.video, boxes.timestamp, strict=True))),
    }
    if dataset.config.splits[split].gt is not None:
        gt = dataset.gt(split)
        if len(gt):
            ap, recall = detector_ap(gt, boxes, iou_threshold=0.5)
            summary.update(ap50=ap, recall=recall)
    return summary


def compute(ctx: StageContext[DetectStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    dataset = Dataset.open(cfg.dataset)
    for split in cfg.detect.splits:
        if split not in dataset.config.splits:
            raise StageError(
                f"detect: split {split!r} is not a split of the dataset at {dataset.root} "
                f"(it has {', '.join(dataset.splits)})"
            )
    if cfg.detect.source == "fasterrcnn":
        per_split = run_detector(ctx, dataset, cfg.detect)
    else:
        per_split = {}
        for split in cfg.detect.splits:
            boxes = _load_proposals(dataset, cfg.detect, split)
            per_split[split] = boxes.take(boxes.score >= cfg.detect.min_score)
    tables, summary = [], {}
    for split, boxes in per_split.items():
        summary[split] = split_summary(dataset, split, boxes)
        tables.append(persons_table(split, boxes))
    pq.write_table(pa.concat_tables(tables), ctx.staging / PERSONS_FILE)
    shutil.rmtree(ctx.staging / PARTS_DIR, ignore_errors=True)  # resume data, not output
    return summary


def read_persons(uri: str | Path, split: str | None = None) -> pa.Table:
    """The person boxes of a published detect output (checked against its manifest)."""
    table = pq.read_table(verify_published_file(uri, PERSONS_FILE))
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table
