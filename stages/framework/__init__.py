"""The stage framework: keys, idempotent outputs, atomic publication, provenance.

A stage is a plain function wrapped in a :class:`Stage`: a typed config and typed input
references go in, a small :class:`StageRef` comes out. The output of a stage run lives at
``<work_root>/<stage>/<key>/`` where

    key = hash(stage name, stage CODE_VERSION, config section, keys of the inputs)

where the config section is what its fields' markers let in (:mod:`stages.framework.keys`: no
path, no execution-only setting; files by their sha256). Changing one stage's config re-keys that stage and everything downstream of it, and
nothing upstream. Outputs are written into a staging directory, a ``COMPLETE.json``
marker is written last, and the directory is renamed into place in one step: a crash at
any point leaves nothing that reads as complete. A published output is never modified;
``force`` moves the old one aside into ``<stage>/.replaced/`` before publishing anew.

Nothing here imports Prefect (``flows/`` wraps these functions).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import importlib
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
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from stages.framework.diskspace import disk_full_as_stage_error
from stages.framework.errors import StageError
from stages.framework.keys import KeyFileError, excluded_fields, key_payload
from stages.framework.keys import hash_file as file_sha256  # read now: outputs are verified with it

log = logging.getLogger("bankflow.stages")

COMPLETE_MARKER = "COMPLETE.json"
PROVENANCE_FILE = "provenance.json"
STAGING_DIR = ".staging"
REPLACED_DIR = ".replaced"
KEY_LENGTH = 16  # hex digits of sha256 kept in keys: 64 bits, ample for one work root

# Libraries whose versions are recorded in every output's provenance.
TRACKED_LIBRARIES = (
    "bankflow",
    "numpy",
    "torch",
    "torchvision",
    "decord",
    "zarr",
    "pyarrow",
    "h5py",
    "prefect",
    "pydantic",
)


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


C = TypeVar("C", bound=BaseModel)


@dataclass
class StageContext(Generic[C]):
    """What a stage's compute function gets: its config, inputs and a place to write.

    Generic in the config: a stage's compute takes ``StageContext[TrainStageConfig]``, and
    ``ctx.config`` is a ``TrainStageConfig`` to the type checker."""

    stage: str
    key: str
    config: C
    inputs: Mapping[str, StageRef]
    staging: Path  # write every output file below this directory
    work_root: Path
    log: logging.Logger = field(default=log)
    expected_bytes: int | None = None  # the output's projected size, if the stage knows it
    # Run once the output is at its final path (this run's or another's): e.g. extract
    # deletes the publication lock it holds beside the staging dir.
    after_publish: list[Callable[[], None]] = field(default_factory=list)

    def relpath(self, *parts: str) -> str:
        """A file of this output named relative to the work root, for summaries
        (``train/<key>/predictions/val.csv``): valid wherever the work root moves."""
        return "/".join([output_relpath(self.stage, self.key), *parts])

    def input(self, name: str) -> StageRef:
        try:
            return self.inputs[name]
        except KeyError:
            raise StageError(
                f"stage {self.stage!r} needs input {name!r}; got {sorted(self.inputs)}"
            ) from None


@dataclass(frozen=True)
class Stage(Generic[C]):
    """A named, versioned unit of work.

    Attributes:
        name: one of the pipeline's stage names (``detect``, ``extract``, …).
        code_version: bump it when the stage's code changes its output; it is in the key.
        config_type: the pydantic model of this stage's config section.
        compute: writes the output into ``ctx.staging`` and returns a small summary dict;
            or where that function is, ``"package.module:function"``, imported when the
            stage runs. The pipeline's stages name theirs (``stages/<family>/config.py``),
            so that listing stages, validating configs and computing keys import no
            torch (docs/design.md §1).
        resumable: keep the staging directory of a killed run so ``compute`` can skip
            finished work (per video, per epoch); otherwise a stale staging dir is wiped.

    Traits, read where the pipeline, the flows and the report need them (one place per
    stage, not lists of names; docs/design.md §9):

        gpu: wants a GPU (flows tag its task runs and claim a GPU slot; its deployment
            is the ``gpu`` one).
        produces_model: each run publishes one *model*: ``predictions/<split>.csv``
            and a summary with ``val_map`` (summary.json ``models``, the report's
            ``model:<name>`` inputs, evaluated per model).
        trained_run: its output is a trained run (``head.pt`` + the run config it was
            trained with) that :class:`stages.train.run.TrainedRun` opens.
        self_coordinated: concurrent processes on one key coordinate themselves
            (per-video claims, one publisher), so the flows hold no lock on its key.
    """

    name: str
    code_version: str
    config_type: type[C]
    compute: Callable[[StageContext[C]], dict[str, Any] | None] | str
    resumable: bool = False
    gpu: bool = False
    produces_model: bool = False
    trained_run: bool = False
    self_coordinated: bool = False

    def compute_function(self) -> Callable[[StageContext[C]], dict[str, Any] | None]:
        """``compute``, imported if it is named by its dotted path."""
        if not isinstance(self.compute, str):
            return self.compute
        module, _, name = self.compute.partition(":")
        function: Callable[[StageContext[C]], dict[str, Any] | None]
        function = getattr(importlib.import_module(module), name)
        return function


def canonical_json(value: Any) -> str:
    """Deterministic JSON used for hashing (sorted keys, no whitespace, paths as str)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_payload(config: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return dict(config)


def stage_key(
    stage: Stage[Any],
    config: BaseModel | Mapping[str, Any],
    inputs: Mapping[str, StageRef | str],
) -> str:
    """hash(stage name, CODE_VERSION, the config's key fields, the inputs' keys).

    A typed config enters through :func:`stages.framework.keys.key_payload` (its fields' markers);
    a plain mapping enters whole.
    """
    input_keys = {
        name: (ref.key if isinstance(ref, StageRef) else str(ref)) for name, ref in inputs.items()
    }
    try:
        section = key_payload(config) if isinstance(config, BaseModel) else dict(config)
    except KeyFileError as exc:
        raise StageError(f"stage {stage.name!r}: {exc}") from None
    payload = {
        "stage": stage.name,
        "code_version": stage.code_version,
        "config": section,
        "inputs": input_keys,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def is_remote(uri: str | os.PathLike) -> bool:
    """True for an fsspec URL (``s3://…``), False for a path or ``file://``."""
    text = os.fspath(uri)
    return "://" in text and not text.startswith("file://")


def output_file(uri: str | os.PathLike, *parts: str) -> Path | str:
    """``uri/part/…``: a Path below a local output, a URL below one read in place from a
    stage cache (stages.framework.remote_cache) — feature stores and banks open either."""
    if is_remote(uri):
        return "/".join([os.fspath(uri).rstrip("/"), *parts])
    return Path(uri).joinpath(*parts)


def output_dir(work_root: Path | str, stage_name: str, key: str) -> Path:
    return Path(work_root) / stage_name / key


def output_relpath(stage_name: str, key: str) -> str:
    """An output named relative to its work root (what records, summaries and provenance
    hold, so a work root can be copied, moved or mounted elsewhere)."""
    return f"{stage_name}/{key}"


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


def _manifest_with_sha256(root: Path) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) of every file below ``root`` except the marker."""
    return [(rel, size, file_sha256(root / rel)) for rel, size in _manifest(root)]


def _digest(key: str, manifest: list[tuple[str, int]]) -> str:
    # Over (path, size) only: the digest stays what it was before files were checksummed.
    return hashlib.sha256(canonical_json({"key": key, "files": manifest}).encode()).hexdigest()


def read_published_bytes(output: Path | str, relpath: str) -> bytes:
    """The bytes of ``<output>/<relpath>``, checked against the sha256 recorded for it
    when ``output`` was published (one read: what is checked is what is returned).

    Readers of small outputs (heads, metrics, predictions, provenance) go through this,
    so a file changed after publication, even one of the same size, is refused.

    Raises:
        StageError: naming the file when ``output`` is not a published output, the file
            is missing or not in the manifest, its sha256 differs, or the output was
            published before bankflow recorded checksums (rerun that stage with --force).
    """
    path, recorded = _recorded_sha256(Path(output), relpath)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StageError(f"{path}: cannot read: {err.strerror or err}") from None
    _check_sha256(path, hashlib.sha256(data).hexdigest(), recorded)
    return data


def verify_published_file(output: Path | str, relpath: str) -> Path:
    """``<output>/<relpath>`` after checking it against its recorded sha256 (for readers
    that parse a file by path: predictions CSV/Parquet). The file is hashed a block at a
    time, not held: a predictions CSV is 0.5 GB at AVA scale (issue 22). Errors as
    :func:`read_published_bytes`."""
    path, recorded = _recorded_sha256(Path(output), relpath)
    try:
        with path.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise StageError(f"{path}: cannot read: {err.strerror or err}") from None
    _check_sha256(path, actual, recorded)
    return path


def _recorded_sha256(output: Path, relpath: str) -> tuple[Path, str]:
    """The file and the sha256 its output's manifest records for it."""
    path = output / relpath
    marker = output / COMPLETE_MARKER
    try:
        record = json.loads(marker.read_text())
        entries = {str(e[0]): list(e[1:]) for e in record["manifest"]}
    except FileNotFoundError:
        raise StageError(
            f"{path}: {output} is not a published stage output (no {COMPLETE_MARKER})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise StageError(f"{path}: unreadable manifest {marker} ({err})") from None
    entry = entries.get(Path(relpath).as_posix())
    if entry is None:
        raise StageError(f"{path}: not in the manifest of its output {marker}")
    if len(entry) < 2:
        raise StageError(
            f"{path}: its output was published without checksums (by an older bankflow); "
            "rerun the stage that wrote it with --force"
        )
    return path, str(entry[1])


def _check_sha256(path: Path, actual: str, recorded: str) -> None:
    if actual != recorded:
        raise StageError(
            f"{path}: sha256 {actual[:16]}… differs from {recorded[:16]}… recorded at "
            "publication; the file was changed afterwards (remove the output or rerun its "
            "stage with --force)"
        )


def read_published_json(output: Path | str, relpath: str) -> Any:
    """:func:`read_published_bytes` of a JSON file, parsed."""
    data = read_published_bytes(output, relpath)
    try:
        return json.loads(data)
    except ValueError as err:
        raise StageError(f"{Path(output) / relpath}: not valid JSON ({err})") from None


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
        recorded = [(str(e[0]), int(e[1])) for e in record["manifest"]]
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


def resolve_record(record: StageRef, work_root: Path | str) -> StageRef | None:
    """The output a cache record names (stage, key, digest), looked up in ``work_root``.

    None when this work root has no verified output at that key, or one with another
    digest (recomputed elsewhere, replaced): a record never points into another root.
    """
    try:
        found = read_output(work_root, record.stage, record.key)
    except StageError:
        return None
    if found is None or found.digest != record.digest:
        return None
    return found.model_copy(update={"cached": record.cached, "seconds": record.seconds})


def require_output(ref: StageRef) -> Path | str:
    """The directory of a referenced output, refusing one that is incomplete.

    An output read in place from a stage cache (``s3://…/<stage>/<key>/<upload>``) is
    complete when the cache's record beside its upload exists (stages.framework.remote_cache).
    """
    if is_remote(ref.uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(ref.uri)
        if not fs.exists(f"{path.rstrip('/').rsplit('/', 1)[0]}/{COMPLETE_MARKER}"):
            raise StageError(
                f"{ref.uri}: cached output of stage {ref.stage!r} (key {ref.key}) has no "
                "completion record; push it again"
            )
        return ref.uri
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
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
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


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


def run_stage(
    stage: Stage[C],
    config: C,
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
        stage=stage.name,
        key=key,
        config=config,
        inputs=dict(inputs),
        staging=staging,
        work_root=work_root,
    )
    log.info("stage %s: computing key %s", stage.name, key)
    with disk_full_as_stage_error(ctx):  # ENOSPC -> one line: stage, file, bytes
        summary = stage.compute_function()(ctx) or {}
    seconds = time.perf_counter() - t0

    provenance = {
        "stage": stage.name,
        "code_version": stage.code_version,
        "key": key,
        "config": config_payload(config),
        "not_in_key": excluded_fields(config),  # execution-only settings of this run
        "inputs": {
            name: {"key": ref.key, "uri": output_relpath(ref.stage, ref.key)}
            for name, ref in inputs.items()
        },
        "libraries": library_versions(),
        "git_revision": git_revision(),
        "host": platform.node(),
        "user": _user(),
        "python": platform.python_version(),
        "started": started.isoformat(),
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": seconds,
        "summary": summary,
    }
    write_json_atomic(staging / PROVENANCE_FILE, provenance)
    manifest = _manifest_with_sha256(staging)
    digest = _digest(key, [(rel, size) for rel, size, _ in manifest])
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
                _after_publish(ctx)
                return existing
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        replaced = work_root / stage.name / REPLACED_DIR / f"{key}-{stamp}"
        replaced.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, replaced)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    _after_publish(ctx)
    log.info("stage %s: published %s (%.1f s)", stage.name, final, seconds)
    return StageRef(
        stage=stage.name,
        key=key,
        uri=str(final),
        digest=digest,
        summary=summary,
        cached=False,
        seconds=seconds,
    )


def _after_publish(ctx: StageContext[Any]) -> None:
    for hook in ctx.after_publish:
        hook()


def stage_status(work_root: Path | str, stage: Stage[Any], key: str) -> dict[str, Any]:
    """``cached`` (published here), ``stale`` (other keys exist, not this one) or ``missing``."""
    out = output_dir(work_root, stage.name, key)
    ref = None
    with contextlib.suppress(StageError):
        ref = read_output(work_root, stage.name, key)
    if ref is not None:
        # The sizes read_output has just checked against the disk: no second walk of the
        # output (a feature store is one file per chunk, ~300k files at AVA scale).
        record = json.loads((out / COMPLETE_MARKER).read_text())
        size = sum(int(entry[1]) for entry in record["manifest"])
        return {"state": "cached", "uri": str(out), "bytes": size, "seconds": ref.seconds}
    stage_dir = Path(work_root) / stage.name
    others = (
        [p for p in stage_dir.iterdir() if (p / COMPLETE_MARKER).is_file()]
        if stage_dir.is_dir()
        else []
    )
    return {"state": "stale" if others else "missing", "uri": str(out), "bytes": 0, "seconds": None}
