"""Several processes extracting into one staging store: claims, waiting, publishing.

Part of the extract stage (:mod:`stages.extract.stage`): each process claims videos one at a
time, waits for videos another live process holds (taking over the claims of processes
that died on this host), and exactly one process finalizes and publishes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from featurestore import (
    Claim,
    FeatureStore,
    StoreError,
    StoreSchema,
    VideoFeatures,
)
from featurestore.backend import LockFiles
from stages.data import Dataset
from stages.extract.config import ExtractConfig, ExtractStageConfig
from stages.framework import COMPLETE_MARKER, StageContext, StageError, output_dir
from stages.framework.background import in_background
from stages.video import VideoError, VideoReader

# Waiting on other processes of the same stage: how often to look, and for how long at
# most (a live writer refreshes its claim; a dead one is taken over, see _break_if_dead).
POLL_S = 0.5
WAIT_FOR_OTHERS_S = 6 * 3600.0

log = logging.getLogger("bankflow.extract")


def _lock_holder_is_dead(info: dict | None) -> bool:
    """True when a lock was written by a process of this host that no longer exists.

    Claims expire only after their TTL (minutes); a restarted extraction on the same host
    need not wait that long for the claims of the run that was killed.
    """
    if not info or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def _break_lock_if_dead(locks: LockFiles, name: str) -> dict | None:
    """Delete lock ``name`` if its holder died on this host; returns the lock's content.

    Breaking goes through ``<name>.break`` (as the store's claims do) so that two
    processes that see the same dead lock do not delete a fresh claim of a third.
    """
    data = locks.read(name)
    try:
        info = None if data is None else json.loads(data)
    except ValueError:
        return None
    if not isinstance(info, dict) or not _lock_holder_is_dead(info):
        return info if isinstance(info, dict) else None
    breaker = f"{name}.break"
    if locks.create_exclusive(breaker, b"{}"):
        try:
            current = locks.read(name)
            if current == data:
                log.info("extract: taking over %s from dead process %s", name, info.get("pid"))
                locks.delete(name)
        finally:
            locks.delete(breaker)
    return info


def _open_store(path: Path, schema: StoreSchema, key: str, split: str, videos: list[str]):
    """Create the split's staging store, or reopen it (resume / a concurrent process).

    Raises StageError naming the store when it holds another schema or is not a store.
    """
    problem: Exception | None = None
    for attempt in range(4):
        try:
            return FeatureStore.create(
                path,
                schema,
                provenance={"stage": "extract", "key": key, "split": split},
                exist_ok=True,
                expected_videos=videos,
            )
        except (StoreError, KeyError) as exc:
            # A concurrent process creating the store leaves it half-made for milliseconds
            # (a directory without zarr.json, or a root without its videos group).
            problem = exc
            time.sleep(0.05 * 2**attempt)
    raise StageError(
        f"extract {split}: cannot use the staging store {path}: {problem}. It was left by an "
        "earlier run with the same key; delete it to start over"
    ) from problem


class _SplitRun:
    """Extraction of one split into its staging store, shared with concurrent processes.

    Three threads work on three videos at once (docs/design.md §3, "Extraction runs in
    three threads"): a background thread claims the next video, opens it, decodes its
    keyframe clips and prepares the batches, up to two batches ahead of the backbone,
    across video boundaries; the caller's thread runs the backbone (RoIAlign and the
    casts follow on the collector's pool thread); a writer thread writes the previous video (at most one write in flight). A
    claim is taken just before its video is decoded and released once it is written.
    """

    def __init__(
        self,
        ctx: StageContext[ExtractStageConfig],
        split: str,
        dataset: Dataset,
        extractor,
        store,
        by_video: dict[str, dict[str, np.ndarray]],
        owner: str,
        published: Callable[[], bool],
    ) -> None:
        self.ctx, self.split, self.dataset = ctx, split, dataset
        self.extractor, self.store, self.by_video, self.owner = extractor, store, by_video, owner
        self.locks = LockFiles(store.url)
        self.published = published
        self.done = 0
        self._complete_before = 0  # videos complete when this run started
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-write")
        self._writing: Future | None = None
        # Claims taken by the decode thread and not yet handed to the writer.
        self._claims: dict[str, Claim] = {}
        self._claims_lock = threading.Lock()
        self._stopped = False  # the decode thread saw the stage published

    def _write(self, video_id: str, claim: Claim, features: VideoFeatures, prov: dict) -> None:
        try:
            if claim.lost:
                raise StageError(
                    f"extract {self.split}: lost the claim on video {video_id!r} in "
                    f"{self.store.url} (its heartbeat stalled longer than the claim TTL); "
                    "rerun to resume"
                )
            self.store.write_video(video_id, features, provenance=prov)
        finally:
            claim.release()
        self.done += 1
        # Counted, not listed: listing every video's state after each one is quadratic in
        # the videos (and one request per video on object storage). Videos that other
        # processes complete meanwhile are not counted here.
        finished = self._complete_before + self.done
        log.info("extract %s: %s (%d/%d)", self.split, video_id, finished, len(self.by_video))

    def _wait_for_write(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()  # re-raises a failed write here

    def _claimed_batches(self, pending: list[str], held: dict[str, dict | None]) -> Iterator:
        """In the decode thread: claim each pending video, open it and yield its batches.

        Yields ``("start", video_id, plan, t0)``, then ``("batch", video_id, x)`` per batch,
        then ``("end", video_id, decoded_frames)``. Videos another live process holds go
        into ``held``; a published stage stops it (``self._stopped``).
        """
        ex: ExtractConfig = self.ctx.config.extract
        for video_id in pending:
            # Another process may have finished everything and published the staging
            # dir: its path is gone, and claiming there would recreate it.
            if self.published():
                self._stopped = True
                return
            claim = self.store.try_claim(video_id, owner=self.owner)
            if claim is None:
                if not self.store.is_complete_video(video_id):
                    held[video_id] = _break_lock_if_dead(self.locks, f"{video_id}.json")
                continue
            # Checked again after claiming: the claim saw the video incomplete, so if
            # nothing is published now, nothing can be until we write it.
            if self.published():
                claim.release()
                self._stopped = True
                return
            with self._claims_lock:
                self._claims[video_id] = claim
            path: Path | str = video_id
            t0 = time.perf_counter()
            try:
                path = self.dataset.video_path(video_id)
                with VideoReader(path, short_side=ex.short_side) as reader:
                    plan = self.extractor.plan(self.by_video[video_id])
                    yield ("start", video_id, plan, t0)
                    offset = self.dataset.offset_of(video_id)
                    fps = self.dataset.frames_per_timestamp
                    for x in self.extractor.batches(reader, plan, offset, fps):
                        yield ("batch", video_id, x)
                    decoded = reader.decode_counter
            except (VideoError, ValueError) as exc:
                raise StageError(
                    f"extract {self.split}: video {video_id!r} ({path}): {exc}"
                ) from exc
            yield ("end", video_id, decoded)

    def _extract(self, pending: list[str], held: dict[str, dict | None]) -> None:
        """Extract the pending videos this process can claim; ``held`` gets the others."""
        events = in_background(
            self._claimed_batches(pending, held), depth=2, name=f"decode {self.split}"
        )
        collector, t0 = None, 0.0
        try:
            for event in events:
                kind, video_id = event[0], event[1]
                if kind == "start":
                    _, _, plan, t0 = event
                    collector = self.extractor.collector(plan)
                    continue
                assert collector is not None
                try:
                    if kind == "batch":
                        collector.add(event[2])
                        continue
                    features = collector.features()  # waits for the pool thread's batches
                except ValueError as exc:
                    raise StageError(f"extract {self.split}: video {video_id!r}: {exc}") from exc
                prov = {"seconds": round(time.perf_counter() - t0, 3), "decoded_frames": event[2]}
                self._wait_for_write()
                with self._claims_lock:
                    claim = self._claims.pop(video_id)
                self._writing = self._writer.submit(self._write, video_id, claim, features, prov)
                collector = None
        finally:
            if collector is not None:  # a failure: stop its pool thread
                collector.close()
            events.close()  # stops and joins the decode thread: no claim is taken after this

    def _release_claims(self) -> None:
        """Release the claims of videos that were not handed to the writer (a failure)."""
        with self._claims_lock:
            claims, self._claims = list(self._claims.values()), {}
        for claim in claims:
            claim.release()

    def run(self) -> int:
        """Extract every video not yet complete; returns how many were already complete."""
        try:
            return self._run()
        finally:
            try:
                self._wait_for_write()
            finally:
                self._release_claims()
                self._writer.shutdown()

    def _run(self) -> int:
        pending = [v for v in self.by_video if not self.store.is_complete_video(v)]
        resumed = len(self.by_video) - len(pending)
        self._complete_before = resumed
        deadline = time.monotonic() + WAIT_FOR_OTHERS_S
        while pending:
            held: dict[str, dict | None] = {}
            self._extract(pending, held)
            if self._stopped:
                return resumed
            pending = list(held)
            if not pending:
                break
            self._wait_for_write()  # ours may be what the others wait for to finish
            if time.monotonic() > deadline:
                raise StageError(
                    f"extract {self.split}: gave up after {WAIT_FOR_OTHERS_S:.0f} s waiting for "
                    f"videos claimed by other processes in {self.store.url}: "
                    + ", ".join(f"{v} (by {(i or {}).get('owner')})" for v, i in held.items())
                )
            log.info(
                "extract %s: waiting for %d videos other processes hold: %s",
                self.split,
                len(pending),
                ", ".join(pending),
            )
            time.sleep(POLL_S)
        return resumed


def _publish_lock(ctx: StageContext) -> tuple[LockFiles, str]:
    # Beside (not inside) the staging dir: it must outlive the rename that publishes it.
    return LockFiles(ctx.staging.parent, subdir="."), f"{ctx.key}.publish.json"


def _published(ctx: StageContext, staging_inode: int) -> bool:
    final = output_dir(ctx.work_root, ctx.stage, ctx.key)
    try:
        return (final / COMPLETE_MARKER).is_file() and final.stat().st_ino == staging_inode
    except FileNotFoundError:
        return False


def _release_if_mine(locks: LockFiles, name: str, payload: bytes) -> None:
    if locks.read(name) == payload:
        locks.delete(name)


def _become_publisher(ctx: StageContext, owner: str, inode: int) -> bool:
    """True: this process finalizes and publishes. False: another one has published.

    The framework publishes by renaming the staging dir, after writing provenance and a
    manifest into it: two processes doing that at once on the same staging dir would
    corrupt it, so one wins an exclusive lock file; the others wait until the staging dir
    (recognised by its inode) is published, or take over if the winner died. The winner
    deletes the lock once published (``ctx.after_publish``); one left by a killed winner is
    tidied by the next publisher of the key.
    """
    locks, name = _publish_lock(ctx)
    payload = json.dumps(
        {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "inode": inode}
    ).encode()
    deadline = time.monotonic() + WAIT_FOR_OTHERS_S
    while True:
        if _published(ctx, inode):
            info = _break_lock_if_dead(locks, name)
            if info is not None and info.get("inode") == inode:
                locks.delete(name)  # that publication is done: tidy its lock away
            return False
        if locks.create_exclusive(name, payload):
            # Held until the framework has renamed the staging dir into place, then gone:
            # nothing of a published key stays in .staging.
            ctx.after_publish.append(lambda: _release_if_mine(locks, name, payload))
            return True
        info = _break_lock_if_dead(locks, name)
        if info is not None and info.get("inode") != inode:
            # Left by the publication of an earlier staging dir of this key (forced rerun).
            locks.delete(name)
        if time.monotonic() > deadline:
            raise StageError(
                f"extract: gave up waiting for {(info or {}).get('owner')} to publish "
                f"{ctx.staging} (lock {ctx.staging.parent / name})"
            )
        time.sleep(POLL_S)
