"""Expiring locks (Prefect's LockManager protocol) and per-worker GPU slots, without Prefect
servers: real lock files, real processes, one of them SIGKILLed while holding a lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prefect.locking.protocol import LockManager

from flows.locks import ExpiringLockManager, lock_is_dead

ROOT = Path(__file__).resolve().parents[2]


def _spawn_holder(code: str, tmp_path: Path, ready: Path) -> subprocess.Popen:
    script = textwrap.dedent(code)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "the holder process exited early"
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    return proc


def test_satisfies_prefect_lock_manager_protocol(tmp_path):
    assert isinstance(ExpiringLockManager(tmp_path), LockManager)


def test_exclusive_between_holders_and_released(tmp_path):
    a = ExpiringLockManager(tmp_path, ttl_s=30)
    b = ExpiringLockManager(tmp_path, ttl_s=30)
    assert a.acquire_lock("k", "alice", acquire_timeout=0)
    assert a.acquire_lock("k", "alice", acquire_timeout=0)  # re-entrant for its holder
    assert not b.acquire_lock("k", "bob", acquire_timeout=0.3)
    assert b.is_locked("k") and a.is_lock_holder("k", "alice")
    assert not b.is_lock_holder("k", "bob")
    info = json.loads((tmp_path / "k.lock").read_text())
    assert info["holder"] == "alice" and info["pid"] == os.getpid() and info["ttl_s"] == 30
    with pytest.raises(ValueError, match="no lock held by 'bob'"):
        b.release_lock("k", "bob")
    a.release_lock("k", "alice")
    assert not (tmp_path / "k.lock").exists() and not b.is_locked("k")
    assert b.acquire_lock("k", "bob", acquire_timeout=0)
    b.release_lock("k", "bob")


def test_waiter_gets_the_lock_when_the_holder_releases(tmp_path):
    a = ExpiringLockManager(tmp_path, ttl_s=30, poll_s=0.02)
    b = ExpiringLockManager(tmp_path, ttl_s=30, poll_s=0.02)
    assert a.acquire_lock("k", "alice")
    threading.Timer(0.3, a.release_lock, args=("k", "alice")).start()
    t0 = time.monotonic()
    assert b.wait_for_lock("k", timeout=10)
    assert 0.2 < time.monotonic() - t0 < 5
    assert b.acquire_lock("k", "bob", acquire_timeout=0)
    b.release_lock("k", "bob")


def test_heartbeat_keeps_a_long_hold_alive(tmp_path):
    a = ExpiringLockManager(tmp_path, ttl_s=0.6)
    b = ExpiringLockManager(tmp_path, ttl_s=0.6)
    assert a.acquire_lock("k", "alice")
    first = json.loads((tmp_path / "k.lock").read_text())["heartbeat"]
    time.sleep(1.5)  # 2.5 ttls: without heartbeats the lock would be dead
    assert json.loads((tmp_path / "k.lock").read_text())["heartbeat"] > first
    assert not b.acquire_lock("k", "bob", acquire_timeout=0)
    a.release_lock("k", "alice")


def test_lock_of_a_sigkilled_holder_is_broken_at_once(tmp_path):
    ready = tmp_path / "ready"
    holder = _spawn_holder(
        f"""
        import time
        from pathlib import Path
        from flows.locks import ExpiringLockManager
        m = ExpiringLockManager({str(tmp_path)!r}, ttl_s=3600)
        assert m.acquire_lock("stage-abc", "worker-1")
        Path({str(ready)!r}).touch()
        time.sleep(600)
        """,
        tmp_path, ready,
    )  # fmt: skip
    waiter = ExpiringLockManager(tmp_path, ttl_s=3600)
    try:
        assert waiter.is_locked("stage-abc")  # alive: honoured despite the long wait below
        assert not waiter.acquire_lock("stage-abc", "worker-2", acquire_timeout=0.5)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        info = json.loads((tmp_path / "stage-abc.lock").read_text())
        assert info["pid"] == holder.pid  # the dead holder's lock is still on disk
        assert "is gone" in lock_is_dead(info)
        t0 = time.monotonic()
        # A FileSystemLockManager would wait for ever here (ttl is an hour).
        assert waiter.acquire_lock("stage-abc", "worker-2", acquire_timeout=10)
        assert time.monotonic() - t0 < 2
        assert json.loads((tmp_path / "stage-abc.lock").read_text())["holder"] == "worker-2"
        waiter.release_lock("stage-abc", "worker-2")
    finally:
        holder.kill()


def test_lock_from_another_host_expires_after_its_ttl(tmp_path):
    stale = {"holder": "w", "host": "elsewhere", "pid": 1, "token": "t",
             "heartbeat": time.time() - 5, "ttl_s": 2.0, "deadline": None}  # fmt: skip
    (tmp_path / "k.lock").write_text(json.dumps(stale))
    m = ExpiringLockManager(tmp_path, ttl_s=2.0)
    assert "heartbeat" in lock_is_dead(stale)
    assert m.acquire_lock("k", "me", acquire_timeout=1)
    m.release_lock("k", "me")
    live = {**stale, "heartbeat": time.time()}
    (tmp_path / "k.lock").write_text(json.dumps(live))
    assert lock_is_dead(live) is None and m.is_locked("k")
    assert not m.acquire_lock("k", "me", acquire_timeout=0.3)
    # hold_timeout becomes a deadline others honour even while heartbeats go on
    (tmp_path / "k.lock").write_text(json.dumps({**live, "deadline": time.time() - 1}))
    assert m.acquire_lock("k", "me", acquire_timeout=1)
    m.release_lock("k", "me")


def test_broken_lock_is_not_deleted_by_its_late_holder(tmp_path):
    a = ExpiringLockManager(tmp_path, ttl_s=30)
    assert a.acquire_lock("k", "alice")
    # Someone judged alice dead and took over (simulated by rewriting the file).
    (tmp_path / "k.lock").write_text(json.dumps({"token": "other", "host": "x", "pid": 1,
                                                 "heartbeat": time.time(), "ttl_s": 30}))  # fmt: skip
    a.release_lock("k", "alice")
    assert json.loads((tmp_path / "k.lock").read_text())["token"] == "other"


def test_pickles_as_configuration_only(tmp_path):
    import pickle

    m = ExpiringLockManager(tmp_path, ttl_s=12)
    assert m.acquire_lock("k", "alice")
    copy = pickle.loads(pickle.dumps(m))
    assert copy == m and copy.ttl_s == 12 and not copy.is_lock_holder("k", "alice")
    m.release_lock("k", "alice")


GPU_CLAIM = """
import os, sys, time
from pathlib import Path
from flows.locks import claim_gpu_slot
device = claim_gpu_slot(timeout={timeout})
Path(sys.argv[1]).write_text(f"{{device}} {{os.environ['CUDA_VISIBLE_DEVICES']}}")
time.sleep(float(sys.argv[2]))
"""


def _claim(tmp_path: Path, name: str, hold_s: float, timeout: float = 30):
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BANKFLOW_GPU_SLOTS": "0,1",
           "BANKFLOW_GPU_SLOT_DIR": str(tmp_path / "slots")}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", GPU_CLAIM.format(timeout=timeout), str(out), str(hold_s)],
        cwd=ROOT, env=env,
    )  # fmt: skip
    return proc, out


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() in (None, 0), f"claimant exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path.name} never claimed a slot"
        time.sleep(0.05)
    time.sleep(0.05)
    return path.read_text()


def test_gpu_slots_one_device_per_process_and_freed_when_killed(tmp_path):
    a, out_a = _claim(tmp_path, "a", 600)
    b, out_b = _claim(tmp_path, "b", 600)
    try:
        got_a, got_b = _wait_file(out_a, a), _wait_file(out_b, b)
        dev_a, visible_a = got_a.split()
        dev_b, visible_b = got_b.split()
        assert {dev_a, dev_b} == {"0", "1"} and (visible_a, visible_b) == (dev_a, dev_b)
        # Both slots taken: a third claimant waits, and gets the slot of a killed holder.
        c, out_c = _claim(tmp_path, "c", 0, timeout=60)
        time.sleep(1.0)
        assert not out_c.exists() and c.poll() is None
        os.kill(a.pid, signal.SIGKILL)
        assert _wait_file(out_c, c).split() == [dev_a, dev_a]
        assert c.wait(30) == 0
    finally:
        for p in (a, b):
            p.kill()


def test_no_slots_configured_means_no_slot_handling(monkeypatch):
    from flows.locks import claim_gpu_slot

    monkeypatch.delenv("BANKFLOW_GPU_SLOTS", raising=False)
    assert claim_gpu_slot() is None


def test_data_parallel_stage_claims_all_its_slots_or_none(tmp_path, monkeypatch):
    import flows.locks as locks
    from stages.framework.distributed import config_devices
    from stages.train.stage import HeadRunConfig, TrainSection

    monkeypatch.setenv("BANKFLOW_GPU_SLOTS", "0,1,2")
    monkeypatch.setenv("BANKFLOW_GPU_SLOT_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    run = HeadRunConfig(optim={"devices": 2})
    assert config_devices(TrainSection(runs={"a": run})) == 2
    assert config_devices(HeadRunConfig()) == 1
    other = locks.ExpiringLockManager(tmp_path)
    assert other.try_acquire("gpu-1", "someone-else")
    try:
        assert locks.claim_gpu_slot(count=2) == "0,2"  # the two free ones
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,2"
        locks.release_gpu_slot()
        # 3 asked for, 2 free: none is kept while waiting.
        with pytest.raises(TimeoutError, match="no free GPU slot"):
            locks.claim_gpu_slot(count=3, timeout=0.5)
        assert not other.is_locked("gpu-0") and not other.is_locked("gpu-2")
        with pytest.raises(ValueError, match="4 GPUs asked for"):
            locks.claim_gpu_slot(count=4)
    finally:
        locks.release_gpu_slot()
        other.release_lock("gpu-1", "someone-else")
