"""Claiming a video for writing, so concurrent writers with overlapping lists write it once.

A claim is a lock file ``<store>/locks/<video_id>.json`` created exclusively, holding the
owner, pid, host, a random token and a heartbeat time. While held, a daemon thread refreshes
the heartbeat every ``ttl_s / 3`` seconds; a lock whose heartbeat is older than ``ttl_s`` is
from a killed writer and may be broken. Breaking goes through a second exclusive file
(``<video_id>.json.break``) so that two writers that both see the same stale lock do not
both take over. Heartbeats use wall-clock time: hosts sharing a store need clocks within
``ttl_s`` of each other (NTP gives milliseconds).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from featurestore.backend import LockFiles

DEFAULT_TTL_S = 300.0
_ATTEMPTS = 3


def _lock_name(video_id: str) -> str:
    return f"{video_id}.json"


def _payload(owner: str, token: str, ttl_s: float) -> bytes:
    return json.dumps(
        {
            "owner": owner,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "token": token,
            "heartbeat": time.time(),
            "ttl_s": ttl_s,
        }
    ).encode()


def _parse(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        out = json.loads(data)
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


@dataclass
class Claim:
    """A held claim on one video. Use as a context manager or call ``release()``.

    Attributes:
        video_id: the claimed video.  owner: who holds it.  token: unique per claim.
        lost: set if the heartbeat found the lock taken over (this writer was too slow).
    """

    video_id: str
    owner: str
    token: str
    ttl_s: float
    _locks: LockFiles = field(repr=False)
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat, name=f"claim-heartbeat-{self.video_id}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        name = _lock_name(self.video_id)
        while not self._stop.wait(self.ttl_s / 3):
            current = _parse(self._locks.read(name))
            if current is None or current.get("token") != self.token:
                self.lost = True
                return
            self._locks.replace(name, _payload(self.owner, self.token, self.ttl_s))

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        name = _lock_name(self.video_id)
        current = _parse(self._locks.read(name))
        if current is not None and current.get("token") == self.token:
            self._locks.delete(name)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _is_stale(locks: LockFiles, name: str, ttl_s: float) -> tuple[bool, str | None]:
    """(stale?, token) of the current lock; an unreadable lock ages by its mtime."""
    data = locks.read(name)
    info = _parse(data)
    now = time.time()
    if info is not None:
        held_ttl = float(info.get("ttl_s", ttl_s))
        return now - float(info.get("heartbeat", 0.0)) > held_ttl, info.get("token")
    mtime = locks.modified_time(name)
    if mtime is None:  # released meanwhile
        return True, None
    return now - mtime > ttl_s, None


def _break_stale(locks: LockFiles, name: str, stale_token: str | None, ttl_s: float) -> None:
    """Delete the stale lock ``name`` unless another writer is breaking or has replaced it."""
    breaker = f"{name}.break"
    if not locks.create_exclusive(breaker, b"{}"):
        mtime = locks.modified_time(breaker)
        # A breaker holds its file for milliseconds; an old one is from a killed process.
        if mtime is not None and time.time() - mtime > ttl_s:
            locks.delete(breaker)
        return
    try:
        info = _parse(locks.read(name))
        current = None if info is None else info.get("token")
        if current == stale_token:
            locks.delete(name)
    finally:
        locks.delete(breaker)


def try_claim(
    locks: LockFiles,
    video_id: str,
    owner: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    is_complete: Callable[[], bool],
) -> Claim | None:
    """Claim ``video_id`` for ``owner``; None if it is complete or held by a live writer."""
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    if is_complete():
        return None
    name = _lock_name(video_id)
    for _ in range(_ATTEMPTS):
        token = uuid.uuid4().hex
        if locks.create_exclusive(name, _payload(owner, token, ttl_s)):
            # Another writer may have finished and released between our check and the lock.
            if is_complete():
                locks.delete(name)
                return None
            claim = Claim(video_id=video_id, owner=owner, token=token, ttl_s=ttl_s, _locks=locks)
            claim._start_heartbeat()
            return claim
        stale, stale_token = _is_stale(locks, name, ttl_s)
        if not stale:
            return None
        _break_stale(locks, name, stale_token, ttl_s)
    return None
