"""Working as a team: ``bankflow store ls``, ``push``, ``pull`` and ``gc``.

A *root* is a work root (a local or NFS directory where stages publish) or a stage cache
(an fsspec URL or path, :mod:`stages.framework.remote_cache`). ``ls`` lists what a root holds,
``push``/``pull`` move a config's stage outputs (or given keys, with their upstream
closure) between a work root and a cache, ``gc`` lists or deletes what no kept config
reaches, staging leftovers and replaced outputs — never anything a live stage, pull or
push holds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.locks import ExpiringLockManager, lock_is_dead
from stages.framework import (
    COMPLETE_MARKER,
    PROVENANCE_FILE,
    REPLACED_DIR,
    STAGING_DIR,
    StageError,
)
from stages.framework.remote_cache import (
    PUSHING_FILE,
    UPLOAD_PREFIX,
    CacheError,
    StageCache,
    is_url,
)

# A staging directory or upload with a file this recent may belong to a running stage
# (extraction refreshes its claims every 100 s) and is left alone.
ACTIVE_WINDOW_S = 600.0

Node = tuple[str, str]


@dataclass
class RootEntry:
    """One output, staging directory or replaced output under a root."""

    stage: str
    key: str
    state: str  # complete | staging | replaced
    bytes: int
    modified: float  # POSIX seconds: creation of a complete output, newest file otherwise
    who: str = "-"
    location: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def is_cache_root(root: str) -> bool:
    """URLs are caches; a directory is a cache when a key holds an upload prefix."""
    if is_url(root):
        return True
    path = Path(root)
    for stage_dir in _dirs(path):
        for key_dir in _dirs(stage_dir):
            if any(d.name.startswith(UPLOAD_PREFIX) for d in _dirs(key_dir)):
                return True
    return False


def _dirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _newest(path: Path) -> tuple[int, float]:
    size, newest = 0, path.stat().st_mtime
    for dirpath, _subdirs, files in os.walk(path):
        for name in files:
            st = (Path(dirpath) / name).stat()
            size += st.st_size
            newest = max(newest, st.st_mtime)
    return size, newest


def _iso_to_posix(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def work_root_entries(root: Path) -> list[RootEntry]:
    entries = []
    for stage_dir in _dirs(root):
        for key_dir in _dirs(stage_dir):
            marker = key_dir / COMPLETE_MARKER
            if not marker.is_file():
                continue
            record = json.loads(marker.read_text())
            prov = _json_file(key_dir / PROVENANCE_FILE)
            entries.append(
                RootEntry(
                    stage_dir.name,
                    key_dir.name,
                    "complete",
                    sum(size for _, size, *_ in record.get("manifest", [])),
                    _iso_to_posix(prov.get("finished")) or marker.stat().st_mtime,
                    f"{prov.get('host', '?')}/{prov.get('user', '?')}",
                    str(key_dir),
                    {"provenance": prov},
                )
            )
        for sub, state in ((STAGING_DIR, "staging"), (REPLACED_DIR, "replaced")):
            for d in sorted((stage_dir / sub).glob("*")) if (stage_dir / sub).is_dir() else []:
                size, newest = _newest(d)
                key = d.name.split(".")[0].split("-")[0]
                entries.append(RootEntry(stage_dir.name, key, state, size, newest, "-", str(d)))
    return entries


def _json_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cache_entries(cache: StageCache) -> list[RootEntry]:
    entries = []
    for e in cache.entries():
        if e.state == "complete":
            prov = _remote_json(cache, f"{e.location}/{PROVENANCE_FILE}")
            modified = _iso_to_posix(e.created)
            details = {"provenance": prov}
        else:
            modified, pushing = _upload_activity(cache, e.location)
            details = {"pushing": pushing}
        entries.append(
            RootEntry(e.stage, e.key, e.state, e.bytes, modified, e.who or "-", e.location, details)
        )
    return entries


def _remote_json(cache: StageCache, url: str) -> dict[str, Any]:
    path = cache.root + url[len(cache.url) :]
    try:
        return json.loads(cache.fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return {}


def _upload_activity(cache: StageCache, url: str) -> tuple[float, dict[str, Any]]:
    """Newest object time of an upload and its PUSHING.json (who is pushing it)."""
    path = cache.root + url[len(cache.url) :]
    newest = 0.0
    for info in cache.fs.find(path, detail=True).values():
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        if isinstance(stamp, dt.datetime):
            stamp = stamp.timestamp()
        newest = max(newest, float(stamp or 0.0))
    return newest, _remote_json(cache, f"{url}/{PUSHING_FILE}")


def list_root(root: str) -> list[RootEntry]:
    """Every output, staging directory and replaced output of a work root or cache."""
    if is_cache_root(root):
        cache = StageCache(root)
        cache.check()
        entries = cache_entries(cache)
        if not entries and cache.fs.ls(cache.root, detail=False) and not cache.is_empty_layout():
            raise CacheError(
                f"{root}: holds no bankflow stage outputs (not a work root or stage cache); "
                "give the URL that has <stage>/<key>/ below it"
            )
        return entries
    path = Path(root)
    if not path.is_dir():
        raise StageError(f"{root}: no such work root or cache")
    return work_root_entries(path)


def store_details(entry: RootEntry) -> dict[str, Any]:
    """backbone, weights sha256, dataset fingerprint, splits, videos of an extract output."""
    from featurestore import FeatureStore, StoreError

    prov = entry.details.get("provenance", {})
    out: dict[str, Any] = {"dataset": prov.get("config", {}).get("dataset_fingerprint", "-")}
    summary = prov.get("summary", {})
    splits = sorted(s for s, v in summary.items() if isinstance(v, dict) and "videos" in v)
    out["splits"] = ",".join(splits) or "-"
    out["videos"] = sum(int(summary[s]["videos"]) for s in splits)
    if splits:
        try:
            store = FeatureStore.open(f"{entry.location}/features/{splits[0]}.zarr", mode="r")
            out["backbone"] = store.schema.backbone
            out["weights"] = (store.schema.weights_sha256 or "-")[:16]
        except StoreError:
            out["backbone"] = out["weights"] = "?"
    return out


def format_entries(entries: list[RootEntry]) -> str:
    lines = [f"{'stage':<11} {'key':<17} {'state':<9} {'MB':>9} {'created':<20} {'by':<24} store"]
    for e in sorted(entries, key=lambda e: (e.stage, e.state, e.key)):
        created = dt.datetime.fromtimestamp(e.modified, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        extra = "" if e.state == "complete" else e.location
        if e.stage == "extract" and e.state == "complete":
            d = store_details(e)
            extra = (
                f"backbone {d.get('backbone', '-')} weights {d.get('weights', '-')} "
                f"dataset {d['dataset'][:16]} splits {d['splits']} videos {d['videos']}"
            )
        lines.append(
            f"{e.stage:<11} {e.key:<17} {e.state:<9} {e.bytes / 1e6:>9.2f} {created:<20} "
            f"{e.who[:24]:<24} {extra}".rstrip()
        )
    total = sum(e.bytes for e in entries)
    lines.append(f"{len(entries)} entries, {total / 1e6:.1f} MB")
    return "\n".join(lines)


# ------------------------------------------------------------------ keys of configs
def config_nodes(config_path: str, overrides: list[str], work_root: Path) -> list[Any]:
    """Every stage call (stage, key, inputs) of a config, computed without running."""
    from stages.config import load_config
    from stages.framework.cached_run import RecordingRunner
    from stages.pipeline import PipelineRun, run_pipeline

    recorder = RecordingRunner()
    cfg = load_config(config_path, overrides)
    run = PipelineRun(config=cfg, work_root=work_root, runner=recorder, with_cache=False)
    run_pipeline(run, write=False)
    return recorder.calls


# ------------------------------------------------------------------ push / pull
def upstream_closure(nodes: Iterable[Node], inputs_of) -> list[Node]:
    """``nodes`` and everything upstream of them (``inputs_of(node)`` gives its inputs)."""
    seen: dict[Node, None] = {}
    todo = list(nodes)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen[node] = None
        todo.extend(inputs_of(node))
    return list(seen)


def local_inputs(work_root: Path, node: Node) -> list[Node]:
    prov = _json_file(work_root / node[0] / node[1] / PROVENANCE_FILE)
    return [(name, rec["key"]) for name, rec in prov.get("inputs", {}).items()]


def cached_inputs(cache: StageCache, node: Node) -> list[Node]:
    url = cache.data_url(*node)
    if url is None:
        raise CacheError(f"{cache.url}/{node[0]}/{node[1]}: not in the cache")
    prov = _remote_json(cache, f"{url}/{PROVENANCE_FILE}")
    return [(name, rec["key"]) for name, rec in prov.get("inputs", {}).items()]


def parse_keys(keys: list[str]) -> list[Node]:
    nodes = []
    for text in keys:
        stage, sep, key = text.partition("/")
        if not sep or not stage or not key:
            raise StageError(f"{text!r}: expected STAGE/KEY, e.g. extract/0123456789abcdef")
        nodes.append((stage, key))
    return nodes


def transfer(
    direction: str, work_root: Path, cache: StageCache, nodes: list[Node]
) -> list[tuple[Node, str, int, float]]:
    """Push or pull each node; (node, what happened, bytes, seconds) per node."""
    from stages.framework import read_output

    done = []
    for node in nodes:
        t0 = time.perf_counter()
        if direction == "push":
            if read_output(work_root, *node, verify=False) is None:
                done.append((node, "not local", 0, 0.0))
                continue
            n = cache.push(work_root, *node)
            what = "pushed" if n else "in cache"
        else:
            if not cache.has(*node):
                state = "local" if read_output(work_root, *node, verify=False) else "missing"
                done.append((node, f"not in cache ({state})", 0, 0.0))
                continue
            n = cache.pull(work_root, *node)
            what = "pulled" if n else "local"
        done.append((node, what, n, time.perf_counter() - t0))
    return done


# ------------------------------------------------------------------ gc
def live_lock(lock_dirs: list[str], node: Node) -> str | None:
    """Who holds a live Prefect stage lock (``<stage>-<key>.lock``) on ``node``, if anyone."""
    for directory in lock_dirs:
        info = ExpiringLockManager(directory).read(f"{node[0]}-{node[1]}")
        if info is not None and lock_is_dead(info) is None:
            return f"locked by {info.get('holder', '?')} on {info.get('host', '?')}"
    return None


def gc_plan(
    entries: list[RootEntry],
    *,
    keep: set[Node] | None,
    older_than_days: float | None,
    lock_dirs: list[str],
    now: float | None = None,
) -> list[tuple[RootEntry, str | None]]:
    """(entry, reason to keep or None to remove) for every entry that gc would consider."""
    now = time.time() if now is None else now
    plan = []
    for e in entries:
        node = (e.stage, e.key)
        age = now - e.modified
        if e.state == "complete" and (keep is None or node in keep):
            continue  # reachable (or no --keep given: complete outputs are not judged)
        reason = live_lock(lock_dirs, node)
        if reason is None and e.state == "staging":
            pushing = e.details.get("pushing") or {}
            if pushing and lock_is_dead(pushing) is None:
                reason = f"push in progress by {pushing.get('host')}:{pushing.get('pid')}"
            elif not pushing and age < ACTIVE_WINDOW_S:
                reason = f"written {age:.0f} s ago: may be in use"
        if reason is None and older_than_days is not None and age < older_than_days * 86400:
            reason = f"younger than {older_than_days:g} days"
        plan.append((e, reason))
    return plan


def remove_entry(root: str, entry: RootEntry) -> None:
    import shutil

    if is_cache_root(root):
        cache = StageCache(root)
        if entry.state == "complete":
            cache.delete_output(entry.stage, entry.key)
        else:
            cache.delete_upload(entry.stage, entry.key, entry.location.rsplit("/", 1)[-1])
        return
    path = Path(entry.location)
    if entry.state == "complete":
        # The marker goes first: from then on nothing reads this as an output.
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def stage_output_info(store_url: str) -> str:
    """Lines for ``store info``: the stage key, extraction config and dataset fingerprint
    of the extract output a store belongs to (``<output>/features/<split>.zarr``)."""
    import fsspec

    from featurestore import FeatureStore

    text = store_url.rstrip("/")
    output = text.rsplit("/", 2)[0] if "/features/" in text else None
    store_prov = FeatureStore.open(store_url, mode="r", allow_incomplete=True).provenance
    prov: dict[str, Any] = {}
    if output is not None:
        try:
            fs, path = fsspec.core.url_to_fs(output)
            prov = json.loads(fs.cat_file(f"{path}/{PROVENANCE_FILE}"))
        except (FileNotFoundError, ValueError):
            prov = {}
    key = prov.get("key") or store_prov.get("key") or "-"
    config = prov.get("config", {})
    lines = [
        f"stage key  {prov.get('stage') or store_prov.get('stage') or '-'} {key}",
        f"dataset    fingerprint {config.get('dataset_fingerprint', '-')}",
        f"extraction {json.dumps(config.get('extract', '-'), sort_keys=True)}",
    ]
    if not prov:
        lines.append("           (no provenance.json beside the store: not in a stage output)")
    return "\n".join(lines)
