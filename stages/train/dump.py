"""dump: long-term feature banks from a trained stage-1 head, one bank store per split.

Inputs: ``train`` (a stage-1 run: its ``head.pt``) and ``extract`` (the feature stores).
For every split (default: every split the feature store has, labelled or not: the
AVA-Kinetics report dumps unlabelled keyframes too) and every video, the head runs over
every keyframe (batches of keyframes read from the feature store) and
:func:`models.heads.bank_features.bank_rows` gives the kind's arrays per actor, written
to ``banks/<split>.zarr`` (:class:`featurestore.banks.BankStore`) with rows aligned to the
feature store's actor rows.

Resumable per video: a killed dump restarted with the same config finds its staging banks
and skips complete videos (eval mode, fixed thread count: bitwise the same result).
Incremental: each video carries a key = hash(bank kind, stage-1 run key, the bytes of that
video's stored features); a new dump copies complete videos with the same key from earlier
dump outputs in the work root and computes only the videos whose inputs changed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from featurestore import FeatureStore, StoreError
from featurestore.banks import BankStore, feature_video_digest
from models.heads.bank_features import bank_rows
from stages.extract.stage import FEATURES_DIR, store_path
from stages.framework import (
    COMPLETE_MARKER,
    StageContext,
    StageError,
    canonical_json,
    output_file,
)
from stages.train.config import DUMP as STAGE
from stages.train.config import (  # noqa: F401 (re-exported)
    BankDumpConfig,
    BankKind,
    DumpSection,
    DumpStageConfig,
)
from stages.train.data import collate, open_split
from stages.train.run import load_trained_head

BANKS_DIR = "banks"

log = logging.getLogger("bankflow.dump")


def bank_path(uri: str | Path, split: str) -> Path | str:
    return output_file(uri, BANKS_DIR, f"{split}.zarr")


def store_splits(features_uri: str | Path) -> list[str]:
    """The splits a feature-store output holds (``features/<split>.zarr``), sorted."""
    root = output_file(features_uri, FEATURES_DIR)
    if isinstance(root, str):  # read in place from a stage cache
        import fsspec

        fs, path = fsspec.core.url_to_fs(root)
        found = [
            e["name"].rstrip("/") for e in fs.ls(path, detail=True) if e["type"] == "directory"
        ]
        names = [name.rsplit("/", 1)[-1] for name in found]
    else:
        names = [p.name for p in root.glob("*.zarr") if p.is_dir()]
    splits = sorted(n[: -len(".zarr")] for n in names if n.endswith(".zarr"))
    if not splits:
        raise StageError(f"dump: {root} holds no feature stores (<split>.zarr)")
    return splits


def video_key(bank: BankDumpConfig, stage1_key: str, features_digest: str) -> str:
    """What decides a video's bank rows: kind, stage-1 run, that video's stored features."""
    payload = {
        "code_version": STAGE.code_version,
        "kind": bank.kind,
        "stage1": stage1_key,
        "features": features_digest,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]


def dump_video(
    head: nn.Module, kind: str, store: FeatureStore, video_id: str, batch_keyframes: int
) -> tuple[dict[str, np.ndarray], int]:
    """The kind's arrays (float32 [A, ...]) of every actor of one video, in store row order,
    and the number of keyframes."""
    timestamps, offsets = store.index(video_id)
    use_roi, use_roi_t = store.schema.roi_shape is not None, store.schema.roi_t_shape is not None
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(timestamps), batch_keyframes):
        # One contiguous read per array for the batch's keyframes, not one per keyframe:
        # a read decodes whole chunks, and a chunk holds many keyframes' rows (the dump
        # at F = 1/64 of AVA spent 72 of 116 s waiting on per-keyframe reads).
        first, last = timestamps[s], timestamps[min(s + batch_keyframes, len(timestamps)) - 1]
        span = store.read_window(video_id, int(first), int(last))
        features = [span.keyframe(video_id, i) for i in range(span.n_keyframes)]
        batch = collate(features, use_roi=use_roi, use_roi_t=use_roi_t)
        for name, tensor in bank_rows(head, kind, batch).items():
            parts.setdefault(name, []).append(tensor.numpy())
    rows = {name: np.concatenate(v) for name, v in parts.items()}
    n_actors = int(offsets[-1])
    for name, value in rows.items():
        if len(value) != n_actors:
            raise StageError(
                f"dump: {store.url} video {video_id!r}: head gave {len(value)} rows of {name}, "
                f"the store has {n_actors} actors"
            )
    return rows, len(timestamps)


def write_bank_video(
    bank: BankStore,
    store: FeatureStore,
    video_id: str,
    rows: dict[str, np.ndarray],
    *,
    video_key: str,
    seconds: float,
) -> None:
    """Write one video's dumped ``rows`` (:func:`dump_video`) into ``bank`` with the feature
    store's index arrays (timestamps, actor_offset, track): bank row ``a`` is store actor
    ``a``."""
    timestamps, offsets = store.index(video_id)
    track = np.asarray(store.array(video_id, "track")[:])
    bank.write_video(
        video_id,
        timestamps=timestamps,
        actor_offset=offsets,
        track=track,
        arrays=rows,
        video_key=video_key,
        provenance={"seconds": round(seconds, 3)},
    )


def row_shapes(rows: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The per-row shape of each dumped array (``BankStore.create``'s ``arrays``)."""
    return {name: tuple(value.shape[1:]) for name, value in rows.items()}


class EarlierDumps:
    """Complete videos of published dump outputs in the work root, by per-video key."""

    def __init__(self, work_root: Path, own_key: str) -> None:
        self.work_root, self.own_key = work_root, own_key
        self._by_split: dict[str, dict[str, BankStore]] = {}

    def find(self, split: str, key: str) -> BankStore | None:
        if split not in self._by_split:
            found: dict[str, BankStore] = {}
            for out in sorted((self.work_root / "dump").glob("*")):
                path = bank_path(out, split)
                assert isinstance(path, Path)  # below a local directory
                if out.name == self.own_key or not (out / COMPLETE_MARKER).is_file():
                    continue
                if not path.is_dir():
                    continue
                try:
                    bank = BankStore.open(path)
                except StoreError as exc:
                    log.warning("dump: ignoring %s for reuse: %s", path, exc)
                    continue
                for video_id in bank.videos():
                    found.setdefault(str(bank.video_key(video_id)), bank)
            self._by_split[split] = found
        return self._by_split[split].get(key)


def _resume_bank(path: Path) -> BankStore | None:
    """The staging bank a killed run left (None if there is none or it never got past
    creation: a kill between the root and its ``videos`` group leaves nothing to keep)."""
    if not path.exists():
        return None
    try:
        return BankStore.open(path, mode="a", allow_incomplete=True)
    except (StoreError, KeyError) as exc:
        log.warning("dump: restarting %s, unreadable after a kill (%s)", path, exc)
        shutil.rmtree(path)
        return None


def _dump_split(
    ctx: StageContext[DumpStageConfig], split: str, head: nn.Module, earlier: EarlierDumps
):
    cfg = ctx.config
    store = open_split(store_path(ctx.input("extract").uri, split))
    videos = store.videos()
    if not videos:
        raise StageError(f"dump: {store.url} holds no complete videos")
    path = bank_path(ctx.staging, split)
    assert isinstance(path, Path)  # staging is local
    provenance = {
        "stage": "dump",
        "key": ctx.key,
        "split": split,
        "name": cfg.name,
        "stage1": ctx.input("train").key,
        "features": store.url,
    }
    bank = _resume_bank(path)
    counts: dict[str, Any] = {
        "videos": len(videos),
        "computed": 0,
        "reused": 0,
        "resumed": 0,
        "keyframes": 0,
        "actors": 0,
    }
    compute_s, computed_kf = 0.0, 0
    t0 = time.perf_counter()

    def ensure(arrays: dict[str, tuple[int, ...]]) -> BankStore:
        nonlocal bank
        if bank is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            bank = BankStore.create(
                path,
                kind=cfg.bank.kind,
                arrays=arrays,
                provenance=provenance,
                expected_videos=videos,
                exist_ok=True,
            )
        return bank

    for video_id in videos:
        key = video_key(
            cfg.bank, ctx.input("train").key, feature_video_digest(store.zarr_store, video_id)
        )
        timestamps, offsets = store.index(video_id)
        counts["keyframes"] += len(timestamps)
        counts["actors"] += int(offsets[-1])
        if bank is not None and bank.is_complete_video(video_id):
            if bank.video_key(video_id) != key:
                raise StageError(
                    f"dump: {path} video {video_id!r} was written with another per-video key; "
                    "delete the staging directory to start over"
                )
            counts["resumed"] += 1
            continue
        source = earlier.find(split, key)
        if source is not None:
            ensure(source.arrays).copy_video(source, video_id)
            counts["reused"] += 1
            continue
        tv = time.perf_counter()
        rows, _ = dump_video(head, cfg.bank.kind, store, video_id, cfg.bank.batch_keyframes)
        compute_s += time.perf_counter() - tv
        computed_kf += len(timestamps)
        write_bank_video(
            ensure(row_shapes(rows)),
            store,
            video_id,
            rows,
            video_key=key,
            seconds=time.perf_counter() - tv,
        )
        counts["computed"] += 1
        log.info(
            "dump %s %s: %s (%d/%d)",
            cfg.name,
            split,
            video_id,
            sum(counts[k] for k in ("computed", "reused", "resumed")),
            len(videos),
        )
    assert bank is not None  # videos is not empty
    if not bank.complete:
        bank.finalize()
    counts.update(
        seconds=round(time.perf_counter() - t0, 2),
        keyframes_per_s=round(computed_kf / compute_s, 1) if compute_s > 0 else None,
        arrays={n: list(s) for n, s in bank.arrays.items()},
        bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    )
    log.info(
        "dump %s %s: %d videos: %d computed, %d reused from earlier dumps, %d resumed",
        cfg.name,
        split,
        len(videos),
        counts["computed"],
        counts["reused"],
        counts["resumed"],
    )
    return counts


def compute(ctx: StageContext[DumpStageConfig]) -> dict[str, Any]:
    cfg = ctx.config
    head, saved = load_trained_head(ctx.input("train").path)
    splits = cfg.bank.splits or store_splits(ctx.input("extract").uri)
    earlier = EarlierDumps(ctx.work_root, ctx.key)
    try:
        per_split = {s: _dump_split(ctx, s, head, earlier) for s in splits}
    except ValueError as exc:  # bank_rows: the kind does not fit the head
        raise StageError(f"dump {cfg.name!r} (from {cfg.bank.from_!r}): {exc}") from exc
    return {
        "name": cfg.name,
        "kind": cfg.bank.kind,
        "from": cfg.bank.from_,
        "head": saved["head"],
        "splits": per_split,
        "computed": sum(s["computed"] for s in per_split.values()),
        "reused": sum(s["reused"] for s in per_split.values()),
        "resumed": sum(s["resumed"] for s in per_split.values()),
    }
