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
from tests.flows.test_server import POOL, Server, Worker, _by_cache_key, _params, serving

pytestmark = pytest.mark.slow

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


def test_killed_worker_run_crashes_and_the_next_run_resumes(server):
    params = _params(server, "wz", world="world-zombie")
    victim = Worker(server, "victim")
    run_id = server.run("bankflow-pipeline/demo", params)
    deadline = time.monotonic() + 600
    with server.client() as c:
        while True:  # mid-flow: a stage done, the run still going, a heartbeat on record
            states = _by_cache_key(server.task_runs(run_id))
            running = c.read_flow_run(run_id).state_name == "Running"
            if running and "Completed" in states.values() and _heartbeats(server, run_id):
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


def _parse(stamp: str):
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
