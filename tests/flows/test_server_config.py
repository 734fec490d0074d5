"""prefect.yaml, the per-stage flows and serve's helpers agree with the stage catalog."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

from flows import stage_flows
from flows.serve import split_gpus, worker_command
from flows.tasks import GPU_STAGES, SELF_COORDINATED_STAGES, cache_policy
from stages.catalog import STAGE_ORDER, STAGES

ROOT = Path(__file__).resolve().parents[2]


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["entrypoint"]: d for d in spec["deployments"]}


def test_prefect_yaml_has_pipeline_and_every_stage():
    deployments = _deployments()
    pipeline = deployments["flows/pipeline.py:pipeline"]
    assert pipeline["name"] == "demo" and pipeline["work_pool"]["name"] == "bankflow"
    assert pipeline["parameters"]["config"] == "flows/configs/demo.yaml"
    assert (ROOT / pipeline["parameters"]["config"]).is_file()
    assert pipeline["parameters"]["overrides"] == []
    for stage in {*STAGE_ORDER, *STAGES}:
        entry = f"flows/stage_flows.py:stage_{stage}"
        assert entry in deployments, f"prefect.yaml has no deployment for stage {stage!r}"
        dep = deployments[entry]
        assert dep["name"] == ("gpu" if stage in GPU_STAGES else "cpu"), stage
        assert dep["work_pool"]["name"] == "bankflow"
        assert set(dep["parameters"]) == {"config", "overrides", "work_root", "force"}


def test_every_stage_has_a_flow_at_its_entrypoint():
    for entry, dep in _deployments().items():
        path, name = entry.split(":")
        assert (ROOT / path).is_file()
        if path == "flows/stage_flows.py":
            flow = getattr(stage_flows, name)
            stage = name.removeprefix("stage_")
            assert flow.name == f"stage-{stage}"
            params = inspect.signature(flow.fn).parameters
            assert list(params) == ["config", "overrides", "work_root", "force"]
            assert set(dep["parameters"]) == set(params)


def test_container_deployments_cover_every_stage():
    spec = yaml.safe_load((ROOT / "docker" / "prefect.containers.yaml").read_text())
    entries = {d["entrypoint"] for d in spec["deployments"]}
    assert "flows/pipeline.py:pipeline" in entries
    for stage in {*STAGE_ORDER, *STAGES}:
        assert f"flows/stage_flows.py:stage_{stage}" in entries, stage
    (step,) = spec["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/bankflow"
    assert "WORKDIR /opt/bankflow" in (ROOT / "docker" / "Dockerfile.worker").read_text()


def test_isolation_rule(tmp_path):
    for stage in STAGES:
        policy = cache_policy(stage, tmp_path)
        if stage in SELF_COORDINATED_STAGES:
            assert policy.isolation_level.value == "READ_COMMITTED" and policy.lock_manager is None
        else:
            assert policy.isolation_level.value == "SERIALIZABLE"
            assert policy.lock_manager.directory == str(tmp_path / ".prefect" / "results" / "locks")


def test_gpus_are_dealt_to_workers():
    assert split_gpus(4, 2) == [["0", "2"], ["1", "3"]]
    assert split_gpus(0, 1) == [[]]
    assert split_gpus(2, 1) == [["0", "1"]]
    cmd = worker_command("bankflow", "w0", 2)
    assert cmd[-8:] == ["--pool", "bankflow", "--type", "process", "--name", "w0", "--limit", "2"]


def test_results_and_locks_on_an_fsspec_url(monkeypatch, tmp_path):
    import fsspec
    from prefect.filesystems import RemoteFileSystem

    from flows.locks import ExpiringLockManager
    from flows.tasks import _forget_record, locks_location, result_storage

    assert result_storage(tmp_path) == tmp_path / ".prefect" / "results"
    url = f"memory://bankflow-{tmp_path.name}/results"
    monkeypatch.setenv("BANKFLOW_RESULTS", url)
    storage = result_storage(tmp_path)
    assert isinstance(storage, RemoteFileSystem) and storage.basepath == url
    assert locks_location(tmp_path) == f"{url}/locks"
    a, b = ExpiringLockManager(locks_location(tmp_path)), ExpiringLockManager(f"{url}/locks")
    assert a.acquire_lock("train-k", "w1", acquire_timeout=0)
    assert not b.acquire_lock("train-k", "w2", acquire_timeout=0.2)
    a.release_lock("train-k", "w1")
    assert b.acquire_lock("train-k", "w2", acquire_timeout=0)
    b.release_lock("train-k", "w2")
    fs = fsspec.filesystem("memory")
    record = f"/bankflow-{tmp_path.name}/results/train-k"
    fs.pipe(record, b"{}")
    _forget_record(str(tmp_path), "train-k", "output missing")  # the record goes
    assert not fs.exists(record)
