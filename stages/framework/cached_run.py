"""Running the pipeline against a shared stage cache: plan first, then pull, compute, push.

Before anything runs, a dry pass of the pipeline gives every stage call's key and inputs
(keys never need outputs). Each call then gets one *source*, decided from the last stage
backwards:

* ``local``: published in this work root already;
* ``pulled``: in the cache and needed here, downloaded before use;
* ``remote``: in the cache and not needed here (its consumers are local or pulled from
  the cache), or a feature store / bank read in place (``cache.stores: in_place``);
* ``computed``: needed and nowhere: computed, then pushed;
* ``skipped``: not needed and not in the cache (an upstream stage whose consumers came
  from the cache: a cached extraction does not re-run its fine-tuning).

A call is *needed* when it has no consumer in this run (what the user asked for), when a
consumer is computed (it reads the inputs), or when a consumer is pulled and the call is
in the cache (a pulled output brings its upstream closure, so ``bankflow infer`` and
``upstream_dir`` find everything beside it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.catalog import STAGES
from stages.framework import StageError, StageRef, output_dir, read_output, stage_key
from stages.framework.remote_cache import StageCache, open_cache

log = logging.getLogger("bankflow.cache")

# Outputs that are large and read by key (feature stores, banks): may be read in place.
STORE_STAGES = frozenset({"extract", "dump"})

Node = tuple[str, str]  # (stage, key)


@dataclass
class CallRecord:
    stage: str
    key: str
    inputs: list[Node]


@dataclass
class RecordingRunner:
    """A dry runner that remembers each call's key and inputs (the plan's first pass)."""

    calls: list[CallRecord] = field(default_factory=list)

    def __call__(
        self,
        stage: str,
        config: BaseModel,
        inputs: dict[str, StageRef],
        work_root: Path,
        force: bool,
    ) -> tuple[StageRef, bool]:
        key = stage_key(STAGES[stage], config, inputs)
        self.calls.append(CallRecord(stage, key, [(r.stage, r.key) for r in inputs.values()]))
        ref = StageRef(stage=stage, key=key, uri=str(output_dir(work_root, stage, key)), digest="")
        return ref, False


def _local(work_root: Path, stage: str, key: str) -> bool:
    try:
        return read_output(work_root, stage, key) is not None
    except StageError:
        return False


def plan_sources(
    calls: list[CallRecord],
    work_root: Path,
    cache: StageCache,
    *,
    stores: str = "pull",
    force: frozenset[str] = frozenset(),
) -> dict[Node, str]:
    """The source of every call (see the module docstring), last stage first."""
    consumers: dict[Node, list[Node]] = {}
    for call in calls:
        for node in call.inputs:
            consumers.setdefault(node, []).append((call.stage, call.key))
    sources: dict[Node, str] = {}
    for call in reversed(calls):
        node = (call.stage, call.key)
        if node in sources:
            continue
        if call.stage in force:
            sources[node] = "computed"
            continue
        if _local(work_root, *node):
            sources[node] = "local"
            continue
        in_cache = cache.has(*node)
        users = [sources.get(c) for c in consumers.get(node, [])]
        needed = not users or "computed" in users or (in_cache and "pulled" in users)
        if not needed:
            sources[node] = "remote" if in_cache else "skipped"
        elif in_cache:
            in_place = stores == "in_place" and call.stage in STORE_STAGES and bool(users)
            sources[node] = "remote" if in_place else "pulled"
        else:
            sources[node] = "computed"
    return sources


@dataclass
class CachedRunner:
    """Wraps a runner (direct or Prefect): pulls before, pushes after, per the plan."""

    inner: Any
    cache: StageCache
    sources: dict[Node, str]
    push: bool = True
    outcomes: dict[Node, dict[str, Any]] = field(default_factory=dict)

    def __call__(
        self,
        stage: str,
        config: BaseModel,
        inputs: dict[str, StageRef],
        work_root: Path,
        force: bool,
    ) -> tuple[StageRef, bool]:
        key = stage_key(STAGES[stage], config, inputs)
        node = (stage, key)
        source = self.sources.get(node, "computed")
        outcome: dict[str, Any] = {"source": source, "bytes_pulled": 0, "bytes_pushed": 0}
        self.outcomes[node] = outcome
        if source in ("remote", "skipped"):
            record = self.cache.record(stage, key) if source == "remote" else None
            uri = (
                self.cache.data_url(stage, key)
                if record is not None
                else str(output_dir(work_root, stage, key))
            )
            ref = StageRef(
                stage=stage,
                key=key,
                uri=str(uri),
                digest=(record or {}).get("digest", ""),
                summary=(record or {}).get("summary", {}),
                cached=True,
                seconds=float((record or {}).get("seconds", 0.0)),
            )
            log.info("stage %s: %s (key %s)", stage, source, key)
            return ref, True
        if source == "pulled":
            outcome["bytes_pulled"] = self.cache.pull(work_root, stage, key)
        ref, cached = self.inner(stage, config, inputs, work_root, force)
        if source == "computed" and ref.cached and not force:
            outcome["source"] = "local"  # published by another process meanwhile
        if self.push and not self.cache.has(stage, key):
            outcome["bytes_pushed"] = self.cache.push(work_root, stage, key)
        return ref, cached


def use_cache(run: Any, run_pipeline: Callable[..., Any]) -> None:
    """Plan ``run`` (a :class:`stages.pipeline.PipelineRun`) against its stage cache —
    ``--cache``, else ``BANKFLOW_CACHE``, else the config's ``cache.url`` — if any: a dry
    pass records every call, then the run's runner becomes a :class:`CachedRunner`."""
    url = run.cache_url or os.environ.get("BANKFLOW_CACHE") or run.config.cache.url
    cache = open_cache(url)
    if cache is None:
        return
    recorder = RecordingRunner()
    dry = type(run)(
        config=run.config,
        work_root=run.work_root,
        runner=recorder,
        until=run.until,
        force=run.force,
        with_cache=False,
    )
    run_pipeline(dry, write=False)
    sources = plan_sources(
        recorder.calls, run.work_root, cache, stores=run.config.cache.stores, force=run.force
    )
    run.cache = cache
    run.runner = CachedRunner(run.runner, cache, sources, push=run.config.cache.push)
