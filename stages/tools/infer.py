"""Raw-video inference: a trained run applied to any video file (``bankflow infer``).

The run's own pipeline is replayed on one video, with the settings recorded in its
provenance (see :mod:`stages.train.run`):

1. **detect** persons on one keyframe per second (seconds 0, 1, ... of the video;
   CSV timestamps ``offset + s``) with a torchvision Faster R-CNN: the run's fine-tuned
   detector when its detect stage trained one, else a checkpoint given here (a run that
   imported proposals has no detector, and a raw video has no proposals);
2. **track**: link the boxes across keyframes with the run's tracking thresholds;
3. **extract**: the run's backbone (config and weights, checked against the sha256 its
   feature store recorded) over the clip around every keyframe, into a real feature store
   ``features.zarr`` in the output directory;
4. **predict** with the trained head (softmax over the pose classes, sigmoid for the rest,
   as in training);
5. write ``predictions.csv`` (AVA format, every class of every box), ``annotated.mp4``
   (boxes, track ids, top actions) and ``infer.json`` (what was used, counts, timings).

A stage-2 run (a ``train_bank`` output: lfb, acar_acfb, amcr_hafb, tonly_memory, igmn)
reads its long-term bank over the video itself, windowed with the run's window config
(:class:`stages.train.window.BankWindowReader`, as in training):

- ``bank_mode: offline``: the ``dump`` output the run read (its provenance) names the
  stage-1 run whose head filled the bank and the bank kind; that head is run over the
  video's own feature store with the dump stage's code
  (:func:`stages.train.dump.dump_video`, :func:`stages.train.dump.write_bank_video`) into a one-video
  bank ``bank.zarr`` beside ``features.zarr``, its rows aligned with the store's actors;
- ``bank_mode: online``: the memory is not saved with the run (the training forward pass
  writes it), so it is rebuilt as the run built it for its val split before predicting
  it: reset, filled by one pass of the trained head over the video's keyframes
  (:func:`stages.train.bank.fill_memory`), then read by the prediction pass.

``infer.json`` records the bank (mode, kind, stage-1 run, window, rows, seconds).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from featurestore import FeatureStore
from featurestore.banks import BankStore, feature_video_digest
from models.detector import (
    DetectorArch,
    DetectorCheckpointError,
    build_person_detector,
    detect_persons,
)
from models.heads.contract import Head
from stages.data import LabelMap, read_labelmap
from stages.data.predictions import write_predictions_csv
from stages.detect.stage import DETECTOR_FILE, boxes_table, resolve_device
from stages.detect.track import link_tracks
from stages.detect.training import to_tensor
from stages.extract.stage import FEATURES_DIR, WEIGHTS_FILE, ExtractConfig
from stages.extract.video import (
    VideoExtractor,
    _probe_shapes,
    build_schema,
    flip_boxes,
    load_backbone,
)
from stages.framework import StageError
from stages.tools.annotate import KeyframeLabels, write_annotated_video
from stages.train.bank import (
    BankRunConfig,
    OnlineMemoryHead,
    StoreIndex,
    bank_attach,
    fill_memory,
    online_attach,
    video_bases,
)
from stages.train.data import KeyframeSource, build_index, open_split
from stages.train.dump import (
    DumpStageConfig,
    dump_video,
    row_shapes,
    video_key,
    write_bank_video,
)
from stages.train.loop import TrainData, predict
from stages.train.run import TrainedRun, load_trained_head, read_provenance, upstream_dir
from stages.train.stage import predictions_table
from stages.train.window import WindowConfig
from stages.video import VideoError, VideoReader, center_frame

log = logging.getLogger("bankflow.infer")

STORE_NAME = "features.zarr"
BANK_NAME = "bank.zarr"
CSV_NAME = "predictions.csv"
VIDEO_NAME = "annotated.mp4"
REPORT_NAME = "infer.json"


class InferConfig(BaseModel):
    """Options of ``bankflow infer`` (everything else comes from the run)."""

    model_config = ConfigDict(extra="forbid")

    # A detector checkpoint (torchvision state dict or a bankflow detector.pt); None: the
    # detector the run's detect stage fine-tuned.
    detector: str | None = None
    detector_arch: DetectorArch | None = None  # None: the run's detect.arch
    # None: the run's detect.score_threshold (or 0.8 when the run imported proposals).
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    max_persons: int = Field(20, ge=1)  # per keyframe, best scores first
    detector_short_side: int | None = Field(None, ge=32)  # None: the run's image_short_side
    offset: int = 0  # CSV timestamp of the video's first frame
    max_seconds: float | None = Field(None, gt=0)  # only the first seconds of the video
    top_actions: int = Field(3, ge=1)  # actions written beside each box in the video
    labelmap: str | None = None  # a .pbtxt replacing the run's dataset label map
    device: str = "auto"


def video_id_for(path: Path) -> str:
    """A store-safe video id from the file name (``bikes.mp4`` -> ``bikes``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("._") or "video"
    return name


def keyframe_seconds(num_frames: int, fps: float) -> np.ndarray:
    """int64 [K]: every whole second 0, 1, ... that has a frame among ``num_frames``."""
    return np.arange(math.floor((num_frames - 1) / fps + 1e-9) + 1, dtype=np.int64)


def _run_detector(run: TrainedRun, cfg: InferConfig) -> tuple[Any, dict[str, Any]]:
    """The Faster R-CNN to use and a record of where it came from."""
    det = run.stage_config("detect")
    arch = cfg.detector_arch or det.get("arch") or "fasterrcnn_resnet50_fpn"
    if cfg.detector is not None:
        weights = Path(cfg.detector)
    elif det.get("source") == "fasterrcnn" and det.get("finetune") is not None:
        weights = run.stage_dir("detect") / DETECTOR_FILE  # type: ignore[operator]
    elif det.get("source") == "fasterrcnn" and det.get("checkpoint"):
        weights = Path(det["checkpoint"])
    else:
        raise StageError(
            f"{run.path}: the run's persons came from imported proposals "
            f"(detect.source={det.get('source', 'proposals')!r}), which a raw video does not "
            "have; pass a person detector checkpoint (--detector FILE [--detector-arch ARCH])"
        )
    threshold = cfg.score_threshold
    if threshold is None:
        threshold = float(det.get("score_threshold", 0.8))
    size = cfg.detector_short_side or det.get("image_short_side")
    try:
        model = build_person_detector(
            arch,
            weights_path=weights,
            person_class=int(det.get("person_class", 1)),
            min_size=size,
            max_size=None if size is None else 2 * size,
            box_score_thresh=threshold,
        )
    except DetectorCheckpointError as err:
        raise StageError(f"infer: person detector: {err}") from err
    return model, {"arch": arch, "weights": str(weights), "score_threshold": threshold}


def detect_keyframes(
    model: Any,
    reader: VideoReader,
    seconds: np.ndarray,
    *,
    threshold: float,
    max_persons: int,
    device: torch.device,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Person boxes on the frame of each keyframe second.

    Returns:
        (second int64 [A], boxes float32 [A, 4] normalized, score float32 [A]), at most
        ``max_persons`` boxes per keyframe, by decreasing score within a keyframe.
    """
    model.to(device)
    index = [
        center_frame(float(s), 0.0, reader.fps, num_frames=reader.num_frames, video=reader.path)
        for s in seconds
    ]
    out_s, out_b, out_p = [], [], []
    for start in range(0, len(seconds), batch_size):
        frames = reader.get_frames(np.asarray(index[start : start + batch_size]))
        found = detect_persons(
            model, [to_tensor(f).to(device) for f in frames], score_threshold=threshold
        )
        for s, (boxes, scores) in zip(seconds[start : start + batch_size], found, strict=True):
            b, p = boxes.numpy()[:max_persons], scores.numpy()[:max_persons]
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # clipping can flatten a box
            out_s.append(np.full(int(keep.sum()), s, np.int64))
            out_b.append(b[keep])
            out_p.append(p[keep])
    if not out_s:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return (
        np.concatenate(out_s),
        np.concatenate(out_b).astype(np.float32),
        np.concatenate(out_p).astype(np.float32),
    )


def _backbone_weights(run: TrainedRun, ex: ExtractConfig) -> Path | None:
    finetune = run.stage_dir("finetune")
    if finetune is not None:
        return finetune / WEIGHTS_FILE
    return Path(ex.weights) if ex.weights else None


def _recorded_weights_sha(run: TrainedRun) -> tuple[bool, str | None]:
    """(found, sha256) of the backbone weights the run's feature stores recorded."""
    for store_dir in sorted((run.extract_dir / FEATURES_DIR).glob("*.zarr")):
        return True, FeatureStore.open(store_dir, mode="r").schema.weights_sha256
    return False, None


def extract_video_features(
    run: TrainedRun,
    video: Path,
    video_id: str,
    actors: dict[str, np.ndarray],
    *,
    offset: int,
    store_dir: Path,
    device: torch.device,
) -> FeatureStore:
    """The run's backbone over the keyframes of ``actors``, written as a one-video store."""
    ex = ExtractConfig.model_validate(run.extract_provenance["config"]["extract"])
    weights = _backbone_weights(run, ex)
    model, sha = load_backbone(ex, weights)
    found, recorded = _recorded_weights_sha(run)
    if found and sha != recorded:
        raise StageError(
            f"{run.extract_dir}: its stores were extracted with backbone weights "
            f"{recorded or 'random (seeded)'} but {weights or 'a seeded random init'} gives "
            f"{sha or 'random'}; the features would not match the head"
        )
    try:
        with VideoReader(video, short_side=ex.short_side) as reader:
            fmap_shape, t_prime = _probe_shapes(model, ex, reader.height, reader.width)
            schema = build_schema(ex, fmap_shape, t_prime, sha, detector_key=None)
            if store_dir.exists():
                shutil.rmtree(store_dir)
            store = FeatureStore.create(
                store_dir,
                schema,
                provenance={"infer": str(run.path), "video": str(video)},
                expected_videos=[video_id],
            )
            model = model.to(device)
            features = VideoExtractor(model, ex, schema).run(reader, video_id, actors, offset)
    except VideoError as err:
        raise StageError(f"infer: {err}") from err
    store.write_video(video_id, features)
    store.finalize()
    return store


@dataclass
class VideoBank:
    """Where a stage-2 run's bank comes from, to be rebuilt over the video.

    Attributes:
        mode: ``offline`` (dumped by a stage-1 head) or ``online`` (the head's own memory).
        kind: the bank kind.  window: the run's window.  preload: the run's bank_preload.
        dump_dir, dump: the dump output the run read and its config (offline).
        stage1_dir, stage1_key: the stage-1 train run whose head filled it (offline).
    """

    mode: str
    kind: str
    window: WindowConfig
    preload: bool = False
    dump_dir: Path | None = None
    dump: DumpStageConfig | None = None
    stage1_dir: Path | None = None
    stage1_key: str | None = None
    memory_dim: int | None = None  # online: the memory's row width (the head's features)

    def record(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "kind": self.kind,
            "stage1_run": None if self.stage1_dir is None else str(self.stage1_dir),
            "dump": None if self.dump_dir is None else str(self.dump_dir),
            "window": self.window.model_dump(mode="json"),
        }


def video_bank(run: TrainedRun) -> VideoBank | None:
    """None for a stage-1 run; for a stage-2 run, its bank's source found through the
    provenance (run -> its ``dump`` input -> that dump's ``train`` input), checked to have
    been dumped over the features the run trained on (the video's are extracted the same
    way)."""
    if run.stage != "train_bank":
        return None
    cfg = run.run_config
    assert isinstance(cfg, BankRunConfig)
    if cfg.bank_mode == "online":
        kind = str(run.saved["bank_kind"])
        return VideoBank(mode="online", kind=kind, window=cfg.window, memory_dim=run.memory_dim())
    dump_dir = upstream_dir(run.path, run.provenance, "dump")
    dump_prov = read_provenance(dump_dir)
    dump_cfg = DumpStageConfig.model_validate(dump_prov["config"])
    dumped_on = dump_prov["inputs"]["extract"]["key"]
    trained_on = run.provenance["inputs"]["extract"]["key"]
    if dumped_on != trained_on:
        raise StageError(
            f"{run.path}: its bank {dump_cfg.name!r} ({dump_dir}) was dumped over the features "
            f"of extract {dumped_on}, the run trained on extract {trained_on}; the bank "
            "cannot be rebuilt over the video the way it was built for training"
        )
    return VideoBank(
        mode="offline",
        kind=dump_cfg.bank.kind,
        window=cfg.window,
        preload=cfg.bank_preload,
        dump_dir=dump_dir,
        dump=dump_cfg,
        stage1_dir=upstream_dir(dump_dir, dump_prov, "train"),
        stage1_key=str(dump_prov["inputs"]["train"]["key"]),
    )


def dump_video_bank(bank: VideoBank, store: FeatureStore, video_id: str, path: Path) -> BankStore:
    """The offline bank over the video: the stage-1 head over its feature store, written
    by the dump stage's code into a one-video bank at ``path``."""
    assert bank.dump is not None and bank.stage1_dir is not None and bank.stage1_key
    head, _ = load_trained_head(bank.stage1_dir)
    t0 = time.perf_counter()
    try:
        rows, _ = dump_video(head, bank.kind, store, video_id, bank.dump.bank.batch_keyframes)
    except ValueError as err:  # bank_rows: the kind does not fit the head
        raise StageError(f"infer: bank {bank.dump.name!r} from {bank.stage1_dir}: {err}") from err
    if path.exists():
        shutil.rmtree(path)
    out = BankStore.create(
        path,
        kind=bank.kind,
        arrays=row_shapes(rows),
        expected_videos=[video_id],
        provenance={
            "stage": "infer",
            "dump": str(bank.dump_dir),
            "name": bank.dump.name,
            "stage1": bank.stage1_key,
            "features": store.url,
        },
    )
    key = video_key(
        bank.dump.bank, bank.stage1_key, feature_video_digest(store.zarr_store, video_id)
    )
    write_bank_video(out, store, video_id, rows, video_key=key, seconds=time.perf_counter() - t0)
    out.finalize()
    return BankStore.open(path)


def bank_model(
    bank: VideoBank,
    head: Head,
    data: TrainData,
    source: KeyframeSource,
    out: Path,
) -> tuple[nn.Module, dict[str, Any]]:
    """The stage-2 model predicting ``source`` (one video), its bank windows attached to
    ``data`` (offline: a bank dumped over the video; online: the memory filled over it),
    and the bank's record for ``infer.json``."""
    t0 = time.perf_counter()
    rows = len(source.index.boxes)
    model: nn.Module = head
    stored: dict[str, Any] = {}
    if bank.mode == "offline":
        (video_id,) = source.store.videos()
        dumped = dump_video_bank(bank, source.store, video_id, out / BANK_NAME)
        data.attach = bank_attach([(source, dumped)], bank.window, preload=bank.preload)
        stored = {"store": BANK_NAME}
    else:
        if bank.memory_dim is None:
            raise StageError(
                f"infer: {type(head).__name__}: the width of its online memory is unknown"
            )
        model = OnlineMemoryHead(head, rows, bank.memory_dim)
        windows = {id(source): (StoreIndex(source.store), video_bases(source.index), 0)}
        data.attach = online_attach(windows, bank.window)
        fill_memory(model, source, data, (0, rows))
    record = {**bank.record(), "rows": rows, "seconds": round(time.perf_counter() - t0, 3)}
    return model, {**record, **stored}


def _labels(
    seconds: np.ndarray,
    index: Any,
    scores: np.ndarray,
    tracks: np.ndarray,
    labelmap: LabelMap,
    top: int,
) -> list[KeyframeLabels]:
    out = []
    for k, second in enumerate(seconds.tolist()):
        rows = index.actors(k)
        lines = []
        for row in range(rows.start, rows.stop):
            best = np.argsort(-scores[row], kind="stable")[:top]
            lines.append([f"{labelmap.names[c]} {scores[row, c]:.2f}" for c in best])
        out.append(
            KeyframeLabels(second=second, boxes=index.boxes[rows], track=tracks[rows], lines=lines)
        )
    return out


def infer_video(
    video: str | Path, run_dir: str | Path, out_dir: str | Path, cfg: InferConfig | None = None
) -> dict[str, Any]:
    """Detect, track, extract and predict on ``video`` with the train or train_bank run at
    ``run_dir``.

    Writes ``predictions.csv``, ``annotated.mp4``, ``features.zarr`` (and ``bank.zarr`` for
    an offline-bank stage-2 run) and ``infer.json`` into ``out_dir`` and returns the
    report (also in ``infer.json``).

    Raises:
        StageError: the run is incomplete or cannot be replayed (names what is missing),
            or the video cannot be read.
    """
    cfg = cfg or InferConfig()
    video, out = Path(video), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = TrainedRun.open(run_dir, stages=("train", "train_bank"))
    bank = video_bank(run)  # before detection: a bank that cannot be rebuilt fails fast
    head = run.build_head()  # so does a head.pt whose state does not fit its head
    labelmap, exclusive = run.classes(read_labelmap(cfg.labelmap) if cfg.labelmap else None)
    device = resolve_device(cfg.device)
    video_id = video_id_for(video)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        with VideoReader(video) as reader:
            fps, total, size = reader.fps, reader.num_frames, (reader.height, reader.width)
            used = total
            if cfg.max_seconds is not None:
                used = max(1, min(total, math.ceil(cfg.max_seconds * fps - 1e-9)))
            seconds = keyframe_seconds(used, fps)
            detector, det_info = _run_detector(run, cfg)
            det_s, boxes, det_score = detect_keyframes(
                detector,
                reader,
                seconds,
                threshold=det_info["score_threshold"],
                max_persons=cfg.max_persons,
                device=device,
            )
    except VideoError as err:
        raise StageError(f"infer: {err}") from err
    timings["detect"] = time.perf_counter() - t0
    track_cfg = run.stage_config("track")
    tracks = link_tracks(
        det_s,
        boxes.astype(np.float64),
        min_iou=float(track_cfg.get("min_iou", 0.3)),
        max_gap=int(track_cfg.get("max_gap", 2)),
    ).astype(np.int32)
    log.info("infer %s: %d persons on %d keyframes", video_id, len(det_s), len(seconds))

    t0 = time.perf_counter()
    table_rows = 0
    shown: list[KeyframeLabels] = []
    bank_record = None if bank is None else {**bank.record(), "rows": 0, "seconds": 0.0}
    if len(det_s):
        actors = {
            "timestamp": det_s + cfg.offset,
            "boxes": boxes,
            "score": det_score,
            "track": tracks,
        }
        extract_video_features(
            run,
            video,
            video_id,
            actors,
            offset=cfg.offset,
            store_dir=out / STORE_NAME,
            device=device,
        )
        timings["extract"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = open_split(out / STORE_NAME)
        index = build_index(store, None, labelmap)
        if store.schema.clip.get("flip"):  # report boxes where they are in the video
            index.boxes = flip_boxes(index.boxes)
        source = KeyframeSource(store, index, preload=True)
        data = TrainData.for_prediction(source, exclusive)
        model: nn.Module = head
        if bank is not None:
            model, bank_record = bank_model(bank, head, data, source, out)
            timings["bank"] = bank_record["seconds"]
            t0 = time.perf_counter()
        scores = predict(model, source, data)  # [A, C]; heads are small: CPU
        table = predictions_table(index, scores, labelmap, None)
        table_rows = len(table)
        stored_track = np.asarray(store.array(video_id, "track")[:])  # index order
        shown = _labels(
            index.timestamp - cfg.offset, index, scores, stored_track, labelmap, cfg.top_actions
        )
        write_predictions_csv(out / CSV_NAME, table)
        timings["predict"] = time.perf_counter() - t0
    else:
        write_predictions_csv(out / CSV_NAME, boxes_table([], [], np.zeros((0, 4)), np.zeros(0)))
    t0 = time.perf_counter()
    frames = write_annotated_video(video, out / VIDEO_NAME, shown, num_frames=used)
    timings["annotate"] = time.perf_counter() - t0
    report = {
        "video": str(video),
        "video_id": video_id,
        "run": str(run.path),
        "run_name": run.name,
        "head": run.head_name,
        "fps": fps,
        "frames": frames,
        "size": list(size),
        "keyframes": len(seconds),
        "offset": cfg.offset,
        "persons": len(det_s),
        "tracks": len(np.unique(tracks)),
        "prediction_rows": table_rows,
        "detector": det_info,
        "bank": bank_record,
        "outputs": {
            "csv": CSV_NAME,
            "video": VIDEO_NAME,
            "features": STORE_NAME,
            **({"bank": BANK_NAME} if bank_record and "store" in bank_record else {}),
        },
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return report
