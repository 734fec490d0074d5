"""A worker killed mid-flow (issue 20): its flow run ends ``Crashed``, the next run resumes.

``bankflow serve --heartbeat 30 --crash-after 45`` (30 s is Prefect's shortest heartbeat);
a worker runs the tiny pipeline deployment and is SIGKILLed with its flow-run process once
a stage has completed and the server has a heartbeat of the run. The server's automation
must set the run Crashed about 45 s after its last heartbeat; a new worker's run of the same
parameters then takes the finished stages from cache and completes. Measured times are in
``<tmp>/timings.json`` (``-s`` prints them).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from flows.serve import CRASH_AUTOMATION, HEARTBEAT_ENV, ensure_crash_automation, ensure_pool
from tests.flows.test_server import (
    BIGGER,
    FINAL,
    POOL,
    Server,
    Worker,
    _by_cache_key,
    _params,
    serving,
)

HEARTBEAT_S = 30
CRASH_AFTER_S = 45


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("zombie")
    with serving(root, "--heartbeat", str(HEARTBEAT_S), "--crash-after", str(CRASH_AFTER_S)) as srv:
        yield srv
    (root / "timings.json").write_text(json.dumps(srv.timings, indent=2))
    print("\nzombie test timings (s):", json.dumps(srv.timings))


def _heartbeats(server: Server, run_id: uuid.UUID) -> list[dict]:
    """The run's ``prefect.flow-run.heartbeat`` events stored by the server."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    with server.client() as c:
        response = c.request(
            "POST", "/events/filter", json={"filter": flt.model_dump(mode="json"), "limit": 50}
        )
    return response.json()["events"]


def _automations(server: Server) -> list:
    with server.client() as c:
        return c.read_automations_by_name(CRASH_AUTOMATION)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heartbeat", "10"], "--heartbeat 10: Prefect's minimum is 30 s"),
        (["--crash-after", "30"], "--crash-after 30 must exceed --heartbeat 30"),
    ],
)
def test_heartbeat_settings_that_cannot_work_are_refused(
    args: list[str], message: str, tmp_path, monkeypatch, capsys
) -> None:
    """One line, exit 2, nothing started (no server log)."""
    from flows.cli import main as bankflow

    home = tmp_path / "home"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    code = bankflow(["serve", "--workers", "0", "--no-deploy", "--work-root",
                     str(tmp_path / "w"), *args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (home / "server.log").exists()


def test_the_pool_template_gets_the_heartbeat_and_keeps_the_rest() -> None:
    from prefect.workers.process import ProcessWorker

    from flows.serve import with_heartbeat

    base = ProcessWorker.get_default_base_job_template()
    got = with_heartbeat(base, 40)
    assert got["variables"]["properties"]["env"]["default"] == {HEARTBEAT_ENV: "40"}
    assert with_heartbeat(got, 40) == got  # idempotent
    del got["variables"]["properties"]["env"]["default"]
    assert got == base  # nothing else changed, and the input was not mutated
    assert "default" not in base["variables"]["properties"]["env"]


@pytest.mark.slow
def test_serve_sets_up_heartbeats_and_the_crash_automation_once(server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (automation,) = _automations(server)
    assert automation.trigger.within.total_seconds() == CRASH_AFTER_S
    with server.client() as c:
        template = c.read_work_pool(POOL).base_job_template
    assert template["variables"]["properties"]["env"]["default"][HEARTBEAT_ENV] == "30"
    # Again, as a second `bankflow serve` on the same PREFECT_HOME would: nothing changes.
    with temporary_settings({PREFECT_API_URL: server.api}):
        ensure_pool(POOL, HEARTBEAT_S)
        ensure_crash_automation(CRASH_AFTER_S)
    assert [a.id for a in _automations(server)] == [automation.id]
    with server.client() as c:
        assert c.read_work_pool(POOL).base_job_template == template


@pytest.mark.slow
def test_killed_worker_run_crashes_and_the_next_run_resumes(server):
    # 12 videos and a wider backbone: extraction lasts ~10-30 s here, the window to kill in.
    params = _params(server, "wz", *BIGGER, world="world-zombie")
    victim = Worker(server, "victim")
    run_id = server.run("bankflow-pipeline/demo", params)
    deadline = time.monotonic() + 600
    with server.client() as c:
        while True:  # mid-flow: a stage done, the run still going, a heartbeat on record
            states = _by_cache_key(server.task_runs(run_id))
            state = c.read_flow_run(run_id).state_name
            assert state not in FINAL, f"the run ended ({state}) before it could be killed"
            if (
                state == "Running"
                and "Completed" in states.values()
                and _heartbeats(server, run_id)
            ):
                break
            assert victim.proc.poll() is None and time.monotonic() < deadline, states
            time.sleep(0.2)
    done_before = {name for name, state in states.items() if state == "Completed"}
    victim.kill()
    killed_at = time.monotonic()
    with server.client() as c:
        while (run := c.read_flow_run(run_id)).state_name == "Running":
            # The automation fires CRASH_AFTER_S after the last heartbeat (at most
            # HEARTBEAT_S before the kill) and is evaluated every 5 s; 60 s for a loaded host.
            assert time.monotonic() - killed_at < CRASH_AFTER_S + 60, "still Running"
            time.sleep(1)
    server.timings["crashed_after_kill_s"] = round(time.monotonic() - killed_at, 1)
    assert run.state_name == "Crashed", run.state
    assert f"no heartbeat for {CRASH_AFTER_S} s" in (run.state.message or "")
    last_beat = max(e["occurred"] for e in _heartbeats(server, run_id))
    silence = (run.state.timestamp - _parse(last_beat)).total_seconds()
    server.timings["crashed_after_last_heartbeat_s"] = round(silence, 1)
    assert silence >= CRASH_AFTER_S, silence  # the automation's silence, not anything sooner

    rescuer = Worker(server, "rescuer")
    try:
        resumed_id = server.run("bankflow-pipeline/demo", params)
        resumed = server.wait(resumed_id, timeout=600)  # no lock of the dead run holds it
    finally:
        rescuer.stop()
    assert resumed.state_name == "Completed", server.logs(resumed_id)[-30:]
    states = _by_cache_key(server.task_runs(resumed_id))
    assert {states[name] for name in done_before} == {"Cached"}, (done_before, states)
    assert set(states) > done_before and "Completed" in states.values(), states
    server.timings["cached_after_resume"] = sorted(n.split("-")[0] for n in done_before)


def _parse(stamp: str):
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
