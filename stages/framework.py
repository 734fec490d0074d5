"""The stage framework: keys, idempotent outputs, atomic publication, provenance.

A stage is a plain function wrapped in a :class:`Stage`: a typed config and typed input
references go in, a small :class:`StageRef` comes out. The output of a stage run lives at
``<work_root>/<stage>/<key>/`` where

    key = hash(stage name, stage CODE_VERSION, config section, keys of the inputs)

so changing one stage's config re-keys that stage and everything downstream of it, and
nothing upstream. Outputs are written into a staging directory, a ``COMPLETE.json``
marker is written last, and the directory is renamed into place in one step: a crash at
any point leaves nothing that reads as complete. A published output is never modified;
``force`` moves the old one aside into ``<stage>/.replaced/`` before publishing anew.

Nothing here imports Prefect (``flows/`` wraps these functions).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.diskspace import disk_full_as_stage_error

log = logging.getLogger("bankflow.stages")

COMPLETE_MARKER = "COMPLETE.json"
PROVENANCE_FILE = "provenance.json"
STAGING_DIR = ".staging"
REPLACED_DIR = ".replaced"
KEY_LENGTH = 16  # hex digits of sha256 kept in keys: 64 bits, ample for one work root

# Libraries whose versions are recorded in every output's provenance.
TRACKED_LIBRARIES = (
    "bankflow", "numpy", "torch", "torchvision", "decord", "zarr", "pyarrow",
    "h5py", "prefect", "pydantic",
)  # fmt: skip


class StageError(RuntimeError):
    """A stage could not run or its output is unusable (message names stage and path)."""


class StageRef(BaseModel):
    """A small, serializable reference to one published stage output.

    Prefect results carry these, never tensors or arrays.
    """

    model_config = ConfigDict(frozen=True)

    stage: str
    key: str
    uri: str  # the output directory
    digest: str  # sha256 over the output's manifest (relative path, size) and key
    summary: dict[str, Any] = {}  # small figures the stage reports (sizes, metrics)
    cached: bool = False  # True when this call found the output already published
    seconds: float = 0.0  # wall time of the run that produced it

    @property
    def path(self) -> Path:
        return Path(self.uri)


@dataclass
class StageContext:
    """What a stage's compute function gets: its config, inputs and a place to write."""

    stage: str
    key: str
    config: BaseModel
    inputs: Mapping[str, StageRef]
    staging: Path  # write every output file below this directory
    work_root: Path
    log: logging.Logger = field(default=log)
    expected_bytes: int | None = None  # the output's projected size, if the stage knows it

    def input(self, name: str) -> StageRef:
        try:
            return self.inputs[name]
        except KeyError:
            raise StageError(
                f"stage {self.stage!r} needs input {name!r}; got {sorted(self.inputs)}"
            ) from None


@dataclass(frozen=True)
class Stage:
    """A named, versioned unit of work.

    Attributes:
        name: one of the pipeline's stage names (``detect``, ``extract``, …).
        code_version: bump it when the stage's code changes its output; it is in the key.
        config_type: the pydantic model of this stage's config section.
        compute: writes the output into ``ctx.staging`` and returns a small summary dict.
        resumable: keep the staging directory of a killed run so ``compute`` can skip
            finished work (per video, per epoch); otherwise a stale staging dir is wiped.
    """

    name: str
    code_version: str
    config_type: type[BaseModel]
    compute: Callable[[StageContext], dict[str, Any] | None]
    resumable: bool = False


def canonical_json(value: Any) -> str:
    """Deterministic JSON used for hashing (sorted keys, no whitespace, paths as str)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_payload(config: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return dict(config)


def stage_key(
    stage: Stage,
    config: BaseModel | Mapping[str, Any],
    inputs: Mapping[str, StageRef | str],
) -> str:
    """hash(stage name, CODE_VERSION, config section, the inputs' keys)."""
    input_keys = {
        name: (ref.key if isinstance(ref, StageRef) else str(ref)) for name, ref in inputs.items()
    }
    payload = {
        "stage": stage.name,
        "code_version": stage.code_version,
        "config": config_payload(config),
        "inputs": input_keys,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def output_dir(work_root: Path | str, stage_name: str, key: str) -> Path:
    return Path(work_root) / stage_name / key


def _manifest(root: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every file below ``root`` except the marker, sorted."""
    entries = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel != COMPLETE_MARKER:
                entries.append((rel, full.stat().st_size))
    return sorted(entries)


def _digest(key: str, manifest: list[tuple[str, int]]) -> str:
    return hashlib.sha256(canonical_json({"key": key, "files": manifest}).encode()).hexdigest()


def read_output(
    work_root: Path | str, stage_name: str, key: str, *, verify: bool = True
) -> StageRef | None:
    """The published output of ``stage_name`` at ``key``, or None if there is none.

    A directory without the completion marker is not an output. With ``verify`` the
    files on disk must still match the manifest recorded at publication (a deleted or
    truncated file makes the output unusable: :class:`StageError`).
    """
    out = output_dir(work_root, stage_name, key)
    marker = out / COMPLETE_MARKER
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    if verify:
        recorded = [tuple(e) for e in record["manifest"]]
        actual = _manifest(out)
        if actual != recorded:
            missing = sorted(set(recorded) - set(actual))
            raise StageError(
                f"{out}: published output of stage {stage_name!r} no longer matches its "
                f"manifest (first differences: {missing[:3]}); remove it or rerun with force"
            )
    return StageRef(
        stage=stage_name,
        key=key,
        uri=str(out),
        digest=record["digest"],
        summary=record.get("summary", {}),
        cached=True,
        seconds=float(record.get("seconds", 0.0)),
    )


def require_output(ref: StageRef) -> Path:
    """The directory of a referenced output, refusing one that is incomplete."""
    path = ref.path
    if not (path / COMPLETE_MARKER).is_file():
        raise StageError(
            f"{path}: output of stage {ref.stage!r} (key {ref.key}) is incomplete or missing; "
            "rerun that stage"
        )
    return path


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    """The project's git revision (with ``-dirty`` when the tree has changes), if any."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, value: Any, *, sort_keys: bool = True) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=sort_keys, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_stage(
    stage: Stage,
    config: BaseModel,
    inputs: Mapping[str, StageRef],
    work_root: Path | str,
    *,
    force: bool = False,
) -> StageRef:
    """Run ``stage`` unless its output at this key is already published.

    Returns at once with ``cached=True`` when a verified output exists. Otherwise the
    compute function writes into ``<stage>/.staging/<key>/``; provenance and the
    completion marker are added, and the directory is renamed to ``<stage>/<key>/``.
    """
    if not isinstance(config, stage.config_type):
        raise StageError(
            f"stage {stage.name!r} expects a {stage.config_type.__name__} config, "
            f"got {type(config).__name__}"
        )
    work_root = Path(work_root)
    key = stage_key(stage, config, inputs)
    final = output_dir(work_root, stage.name, key)
    if not force:
        existing = read_output(work_root, stage.name, key)
        if existing is not None:
            log.info("stage %s: cached at %s", stage.name, final)
            return existing
    for _name, ref in inputs.items():
        require_output(ref)

    staging = work_root / stage.name / STAGING_DIR / key
    if staging.exists() and not stage.resumable:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    ctx = StageContext(
        stage=stage.name, key=key, config=config, inputs=dict(inputs),
        staging=staging, work_root=work_root,
    )  # fmt: skip
    log.info("stage %s: computing key %s", stage.name, key)
    with disk_full_as_stage_error(ctx):  # ENOSPC -> one line: stage, file, bytes
        summary = stage.compute(ctx) or {}
    seconds = time.perf_counter() - t0

    provenance = {
        "stage": stage.name,
        "code_version": stage.code_version,
        "key": key,
        "config": config_payload(config),
        "inputs": {name: {"key": ref.key, "uri": ref.uri} for name, ref in inputs.items()},
        "libraries": library_versions(),
        "git_revision": git_revision(),
        "host": platform.node(),
        "python": platform.python_version(),
        "started": started.isoformat(),
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": seconds,
        "summary": summary,
    }
    write_json_atomic(staging / PROVENANCE_FILE, provenance)
    manifest = _manifest(staging)
    digest = _digest(key, manifest)
    # The marker goes in last; until the rename below nothing is at the final path.
    write_json_atomic(
        staging / COMPLETE_MARKER,
        {"digest": digest, "manifest": manifest, "summary": summary, "seconds": seconds},
    )
    _fsync_dir(staging)

    if final.exists():
        if not force:
            # Another process published the same key meanwhile: same inputs, same output.
            shutil.rmtree(staging, ignore_errors=True)
            existing = read_output(work_root, stage.name, key)
            if existing is not None:
                return existing
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        replaced = work_root / stage.name / REPLACED_DIR / f"{key}-{stamp}"
        replaced.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    log.info("stage %s: published %s (%.1f s)", stage.name, final, seconds)
    return StageRef(
        stage=stage.name, key=key, uri=str(final), digest=digest,
        summary=summary, cached=False, seconds=seconds,
    )  # fmt: skip


def stage_status(work_root: Path | str, stage: Stage, key: str) -> dict[str, Any]:
    """``cached`` (published here), ``stale`` (other keys exist, not this one) or ``missing``."""
    out = output_dir(work_root, stage.name, key)
    ref = None
    with contextlib.suppress(StageError):
        ref = read_output(work_root, stage.name, key)
    if ref is not None:
        size = sum(size for _, size in _manifest(out))
        return {"state": "cached", "uri": str(out), "bytes": size, "seconds": ref.seconds}
    stage_dir = Path(work_root) / stage.name
    others = (
        [p for p in stage_dir.iterdir() if (p / COMPLETE_MARKER).is_file()]
        if stage_dir.is_dir()
        else []
    )
    return {"state": "stale" if others else "missing", "uri": str(out), "bytes": 0, "seconds": None}
