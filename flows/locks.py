"""Locks that expire: Prefect's serializable cache isolation and per-host GPU slots.

Prefect's ``FileSystemLockManager`` writes a lock file and waits for it to disappear; a
worker killed while holding one leaves it behind and every later run of that key blocks
for ever (docs/design.md §7). :class:`ExpiringLockManager` implements Prefect's ``LockManager``
protocol with lock files that say who holds them and until when:

    <directory>/<key>.lock = {"holder", "host", "pid", "token", "heartbeat", "ttl_s",
                              "deadline"}

While a lock is held a daemon thread rewrites ``heartbeat`` every ``ttl_s / 3`` seconds, so
a long stage (hours of extraction) keeps its lock however long it runs. A waiting process
breaks a lock when

* its holder was on this host and that pid no longer exists (a SIGKILLed worker: broken
  at once), or
* its heartbeat is older than ``ttl_s`` (a holder on another host died, or hung), or
* its ``deadline`` (from Prefect's ``hold_timeout``) has passed.

Breaking goes through an exclusive ``<key>.lock.break`` file so that two waiters that see
the same dead lock do not both delete it (one of them could delete a fresh lock of a third).
Lock files go through :class:`featurestore.backend.LockFiles`: a local or NFS directory
(``O_CREAT | O_EXCL``), or an fsspec URL whose backend supports exclusive creation.
Heartbeats use wall-clock time: hosts sharing a lock directory need clocks within
``ttl_s`` of each other.

:func:`claim_gpu_slot` uses the same locks to give each flow-run process on a worker one
GPU of the worker's ``BANKFLOW_GPU_SLOTS`` (``CUDA_VISIBLE_DEVICES``), for the life of the
process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from featurestore.backend import LockFiles

log = logging.getLogger("bankflow.locks")

DEFAULT_TTL_S = 60.0
POLL_S = 0.2


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _parse(data: bytes | None) -> dict | None:
    if data is None:
        return None
    try:
        info = json.loads(data)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def lock_is_dead(info: dict, *, now: float | None = None) -> str | None:
    """Why the lock described by ``info`` may be broken, or None while it is valid."""
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
            return f"holder pid {pid} on this host is gone"
    ttl = float(info.get("ttl_s", DEFAULT_TTL_S))
    age = now - float(info.get("heartbeat", 0.0))
    if age > ttl:
        return f"heartbeat {age:.0f} s old (ttl {ttl:.0f} s)"
    deadline = info.get("deadline")
    if deadline is not None and now > float(deadline):
        return "past its hold deadline"
    return None


@dataclass
class _Held:
    token: str
    holder: str
    deadline: float | None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    lost: bool = False


class ExpiringLockManager:
    """Prefect ``LockManager`` whose locks are broken when their holder is dead or late.

    Args:
        directory: where lock files live (a path every worker sharing the results sees,
            or an fsspec URL with exclusive creation).
        ttl_s: a lock whose heartbeat is older than this is broken. Heartbeats are
            written every ``ttl_s / 3``, so only a holder stalled that long loses its lock.
        poll_s: how often a waiting process looks again.
    """

    def __init__(
        self, directory: str | os.PathLike, *, ttl_s: float = DEFAULT_TTL_S, poll_s: float = POLL_S
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.directory = os.fspath(directory)
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self._files = LockFiles(self.directory, subdir=".")
        self._held: dict[str, _Held] = {}
        self._mutex = threading.Lock()

    # Prefect hashes and copies cache policies (which hold the lock manager): only the
    # configuration travels, never the heartbeat threads.
    def __getstate__(self) -> dict:
        return {"directory": self.directory, "ttl_s": self.ttl_s, "poll_s": self.poll_s}

    def __setstate__(self, state: dict) -> None:
        ExpiringLockManager.__init__(
            self, state["directory"], ttl_s=state["ttl_s"], poll_s=state["poll_s"]
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExpiringLockManager) and (self.directory, self.ttl_s) == (
            other.directory,
            other.ttl_s,
        )

    def __hash__(self) -> int:
        return hash((self.directory, self.ttl_s))

    def __repr__(self) -> str:
        return f"ExpiringLockManager({self.directory!r}, ttl_s={self.ttl_s})"

    @staticmethod
    def _name(key: str) -> str:
        return f"{key}.lock"

    def read(self, key: str) -> dict | None:
        """The lock file's content (None when unlocked or unreadable)."""
        return _parse(self._files.read(self._name(key)))

    def _payload(self, held: _Held) -> bytes:
        return json.dumps(
            {
                "holder": held.holder,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": held.token,
                "heartbeat": time.time(),
                "ttl_s": self.ttl_s,
                "deadline": held.deadline,
            }
        ).encode()

    def _beat(self, key: str, held: _Held) -> None:
        name = self._name(key)
        while not held.stop.wait(self.ttl_s / 3):
            current = self.read(key)
            if current is None or current.get("token") != held.token:
                held.lost = True
                log.warning("lock %s was broken while held by %s", key, held.holder)
                return
            self._files.replace(name, self._payload(held))

    def _break_if_dead(self, key: str) -> bool:
        """Delete the lock on ``key`` if it is dead; True when the key is now unlocked."""
        name = self._name(key)
        data = self._files.read(name)
        if data is None:
            return True
        info = _parse(data)
        if info is None:
            # Half-written or foreign: judge it by its age.
            mtime = self._files.modified_time(name)
            if mtime is None:
                return True
            if time.time() - mtime <= self.ttl_s:
                return False
            reason = "unreadable and older than the ttl"
        else:
            dead = lock_is_dead(info)
            if dead is None:
                return False
            reason = dead
        breaker = f"{name}.break"
        if not self._files.create_exclusive(breaker, b"{}"):
            mtime = self._files.modified_time(breaker)
            # A breaker holds its file for milliseconds; an old one was killed meanwhile.
            if mtime is not None and time.time() - mtime > self.ttl_s:
                self._files.delete(breaker)
            return False
        try:
            if self._files.read(name) == data:
                log.warning("breaking lock %s: %s", key, reason)
                self._files.delete(name)
        finally:
            self._files.delete(breaker)
        return self._files.read(name) is None

    def try_acquire(self, key: str, holder: str, hold_timeout: float | None = None) -> bool:
        """One attempt at the lock, breaking a dead one first; True if ``holder`` has it."""
        with self._mutex:
            if self.is_lock_holder(key, holder):
                return True
            held = _Held(
                token=uuid.uuid4().hex,
                holder=holder,
                deadline=None if hold_timeout is None else time.time() + hold_timeout,
            )
            for _ in range(2):
                if self._files.create_exclusive(self._name(key), self._payload(held)):
                    held.thread = threading.Thread(
                        target=self._beat,
                        args=(key, held),
                        name=f"lock-heartbeat-{key}",
                        daemon=True,
                    )
                    held.thread.start()
                    self._held[key] = held
                    return True
                if not self._break_if_dead(key):
                    return False
            return False

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Wait (at most ``acquire_timeout`` s; None: as long as it takes) for the lock."""
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            if self.try_acquire(key, holder, hold_timeout):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            if self.try_acquire(key, holder, hold_timeout):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_s)

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``holder``'s lock on ``key``; a lock someone broke meanwhile is left alone."""
        with self._mutex:
            held = self._held.get(key)
            if held is None or held.holder != holder:
                raise ValueError(f"no lock held by {holder!r} on {key!r} in {self.directory}")
            del self._held[key]
            held.stop.set()
            if held.thread is not None:
                held.thread.join()
            current = self.read(key)
            if current is not None and current.get("token") == held.token:
                self._files.delete(self._name(key))
            else:
                log.warning("lock %s of %s had been broken before its release", key, holder)

    def is_locked(self, key: str) -> bool:
        """True while a live holder has ``key`` (a dead holder's lock is broken here)."""
        return not self._break_if_dead(key)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._held.get(key)
        if held is None or held.holder != holder:
            return False
        current = self.read(key)
        return current is not None and current.get("token") == held.token

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is unlocked (or its lock is dead); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_s)
        return True


# --- GPU slots -----------------------------------------------------------------------------

GPU_SLOTS_ENV = "BANKFLOW_GPU_SLOTS"  # e.g. "0,1": the GPUs this worker may hand out
GPU_SLOT_DIR_ENV = "BANKFLOW_GPU_SLOT_DIR"  # host-local directory of slot locks
# (locks, keys, holder, devices): the slots this process holds
_slot: tuple[ExpiringLockManager, list[str], str, str] | None = None


def gpu_slots() -> list[str]:
    """The device ids listed in ``BANKFLOW_GPU_SLOTS`` (empty: no slot handling)."""
    raw = os.environ.get(GPU_SLOTS_ENV, "")
    return [s.strip() for s in raw.split(",") if s.strip()]


def _slot_dir() -> Path:
    default = Path(os.environ.get("TMPDIR", "/tmp")) / f"bankflow-gpu-slots-{os.getuid()}"
    return Path(os.environ.get(GPU_SLOT_DIR_ENV) or default)


def claim_gpu_slot(
    *, timeout: float | None = None, ttl_s: float = DEFAULT_TTL_S, count: int = 1
) -> str | None:
    """Give this process ``count`` GPUs of ``BANKFLOW_GPU_SLOTS`` for the rest of its life.

    A worker started with ``--limit N`` and ``BANKFLOW_GPU_SLOTS=0,…,N-1`` runs N flow
    runs at once, each in its own process; the first GPU stage of each claims a free slot
    (waiting while all are taken) and sets ``CUDA_VISIBLE_DEVICES`` to it before CUDA is
    initialised, so each process sees exactly one GPU. The slot lock is released at exit;
    a killed process's slot is freed by the next claimant (dead pid on this host).

    A data-parallel stage (``devices: N``) claims N slots at once (all or none, so two
    such claimants cannot deadlock holding half each); ``CUDA_VISIBLE_DEVICES`` lists them.

    Returns the device id(s) (comma-separated), or None when ``BANKFLOW_GPU_SLOTS`` is unset.
    """
    global _slot
    slots = gpu_slots()
    if not slots:
        return None
    if count > len(slots):
        raise ValueError(
            f"{count} GPUs asked for; {GPU_SLOTS_ENV}={','.join(slots)} lists {len(slots)}"
        )
    if _slot is not None:
        if len(_slot[1]) >= count:
            return _slot[3]
        release_gpu_slot()  # a larger claim: give the held slots back and claim afresh
    locks = ExpiringLockManager(_slot_dir(), ttl_s=ttl_s)
    holder = f"{socket.gethostname()}:{os.getpid()}"
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        held: list[str] = []
        for device in slots:
            if locks.try_acquire(f"gpu-{device}", holder):
                held.append(device)
                if len(held) == count:
                    devices = ",".join(held)
                    _slot = (locks, [f"gpu-{d}" for d in held], holder, devices)
                    os.environ["CUDA_VISIBLE_DEVICES"] = devices
                    atexit.register(release_gpu_slot)
                    log.info("GPU slot(s) %s claimed by %s", devices, holder)
                    return devices
        for device in held:  # not enough free: none kept
            locks.release_lock(f"gpu-{device}", holder)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"no free GPU slot among {GPU_SLOTS_ENV}={','.join(slots)} after {timeout} s "
                f"(slot locks in {_slot_dir()})"
            )
        time.sleep(locks.poll_s)


def release_gpu_slot() -> None:
    """Give this process's GPU slot back (also done at exit)."""
    global _slot
    if _slot is None:
        return
    locks, keys, holder, _devices = _slot
    _slot = None
    for key in keys:
        with contextlib.suppress(ValueError):
            locks.release_lock(key, holder)
