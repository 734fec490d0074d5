"""A stage cache shared by a team: stage outputs on any fsspec URL (``s3://``, NFS path).

Layout under the cache URL, one prefix per uploaded output::

    <cache>/<stage>/<key>/COMPLETE.json      the completion record, written last
    <cache>/<stage>/<key>/<upload>/…          the output's files (one upload per push)

A push copies the files of a published local output (``<work_root>/<stage>/<key>/``)
under a fresh ``<upload>`` prefix, then creates ``COMPLETE.json`` with an *exclusive*
create (``O_EXCL`` on a path, a conditional write on S3) naming that upload. Object
stores cannot rename a prefix, so the record is the commit: files of an upload nobody
names are staging (a killed push, or the loser of two concurrent pushes, which deletes
its own upload); they never read as complete and ``bankflow gc`` removes them. A pull
downloads into ``<work_root>/<stage>/.staging/`` and publishes with one rename, like a
computed output.

Credentials are never handled here: fsspec and botocore read them from their standard
places (environment, ``~/.aws``, instance roles); the only things recorded are URLs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import platform
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from stages.framework import (
    COMPLETE_MARKER,
    STAGING_DIR,
    StageError,
    _fsync_dir,
    file_sha256,
    output_dir,
    read_output,
    write_json_atomic,
)

log = logging.getLogger("bankflow.cache")

UPLOAD_PREFIX = "up-"
PUSHING_FILE = "PUSHING.json"  # who is uploading (gc leaves live uploads alone)
PUSH_TTL_S = 6 * 3600.0  # an upload by another host untouched this long is abandoned


class CacheConfig(BaseModel):
    """The ``cache:`` section of a pipeline config: where the team's outputs are shared."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None  # fsspec URL or path; --cache and BANKFLOW_CACHE override it
    # Feature stores and banks: ``pull`` copies them into the work root; ``in_place``
    # has the stages that read them read the cache through fsspec.
    stores: Literal["pull", "in_place"] = "pull"
    push: bool = True  # push what this run computes (and local outputs the cache lacks)


class CacheError(StageError):
    """The cache URL cannot be used (the message names the URL and what to do)."""


def is_url(location: str | os.PathLike) -> bool:
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def describe_error(url: str, exc: BaseException) -> str:
    """One line for an fsspec/botocore failure on ``url``: what went wrong, what to do."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    if name == "NoCredentialsError" or ("credentials" in text.lower() and "unable" in text.lower()):
        return (
            f"{url}: no credentials for this object store; set AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE (or ~/.aws/credentials)"
        )
    if name == "ProfileNotFound":
        return f"{url}: {text}; check AWS_PROFILE and ~/.aws/config"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or (
        "could not connect" in text.lower()
    ):
        return (
            f"{url}: cannot reach the object store ({text}); check the endpoint "
            "(AWS_ENDPOINT_URL_S3 / ~/.aws/config) and the network"
        )
    if "bucket does not exist" in text.lower() or "NoSuchBucket" in text:
        return f"{url}: the bucket does not exist; create it or fix the URL"
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return f"{url}: access denied ({text}); check the credentials' permissions"
    return f"{url}: {name}: {text}"


@dataclass(frozen=True)
class CacheEntry:
    """One stage output (or staging upload) found under a work root or cache."""

    stage: str
    key: str
    state: str  # complete | staging | replaced
    bytes: int
    created: str | None
    who: str | None  # host/user that produced or pushed it
    location: str


class StageCache:
    """Stage outputs shared through an fsspec URL (see the module docstring).

    Args:
        url: ``s3://bucket/prefix``, ``gs://…``, a local or NFS path.
    """

    def __init__(self, url: str | os.PathLike) -> None:
        self.url = os.fspath(url).rstrip("/")
        import fsspec  # here: a pipeline config's cache section is read without fsspec
        from fsspec.implementations.local import LocalFileSystem

        try:
            if is_url(self.url):
                self.fs, self.root = fsspec.core.url_to_fs(self.url)
            else:
                self.fs = LocalFileSystem(auto_mkdir=True)
                self.root = str(Path(self.url.removeprefix("file://")).absolute())
        except (ImportError, ValueError) as exc:
            raise CacheError(f"{self.url}: not a usable cache URL ({exc})") from None
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"StageCache({self.url!r})"

    @property
    def local(self) -> bool:
        """A cache on a local or mounted (NFS) file system, not behind a URL."""
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    # ----------------------------------------------------------------- paths
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _url(self, *parts: str) -> str:
        return "/".join([self.url, *parts])

    def check(self) -> None:
        """Fail with one line if the cache cannot be listed (endpoint, bucket, credentials)."""
        try:
            if self.local:
                if Path(self.root).exists() and not Path(self.root).is_dir():
                    raise CacheError(
                        f"{self.url}: is a file; a stage cache is a directory or an fsspec URL"
                    )
                Path(self.root).mkdir(parents=True, exist_ok=True)
            else:
                self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise CacheError(describe_error(self.url, exc)) from None
            # An empty prefix in an existing bucket is a fresh cache: fine.
        except CacheError:
            raise
        except Exception as exc:
            raise CacheError(describe_error(self.url, exc)) from None

    # ----------------------------------------------------------------- records
    def record(self, stage: str, key: str) -> dict[str, Any] | None:
        """The completion record of ``stage``/``key`` in the cache, or None."""
        path = self._path(stage, key, COMPLETE_MARKER)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise CacheError(describe_error(self._url(stage, key), exc)) from None
        try:
            record = json.loads(data)
            if not isinstance(record.get("upload"), str) or "manifest" not in record:
                raise ValueError("not a record")
        except (ValueError, AttributeError):
            raise CacheError(
                f"{self._url(stage, key, COMPLETE_MARKER)}: not a bankflow cache record; "
                "is this URL a bankflow cache?"
            ) from None
        return record

    def has(self, stage: str, key: str) -> bool:
        return self.record(stage, key) is not None

    def data_url(self, stage: str, key: str) -> str | None:
        """Where the files of a complete cached output are (for reading in place)."""
        record = self.record(stage, key)
        return None if record is None else self._url(stage, key, record["upload"])

    # ----------------------------------------------------------------- push / pull
    def push(self, work_root: Path | str, stage: str, key: str) -> int:
        """Upload the published local output ``stage``/``key``; bytes sent (0 if present).

        Two pushes of one key may run at once: both upload, one creates the record, the
        other sees it exists, deletes its own upload and returns 0.
        """
        ref = read_output(work_root, stage, key)
        if ref is None:
            raise StageError(f"{output_dir(work_root, stage, key)}: no published output to push")
        if self.has(stage, key):
            return 0
        local = ref.path
        done = json.loads((local / COMPLETE_MARKER).read_text())
        manifest = [tuple(e) for e in done["manifest"]]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        upload = f"{UPLOAD_PREFIX}{stamp}-{uuid.uuid4().hex[:12]}"
        sources = [str(local / rel) for rel, *_ in manifest]
        targets = [self._path(stage, key, upload, rel) for rel, *_ in manifest]
        log.info("cache: pushing %s/%s (%d files) to %s", stage, key, len(sources), self.url)
        pushing = {
            "host": platform.node(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "ttl_s": PUSH_TTL_S,
        }
        try:
            self.fs.pipe_file(
                self._path(stage, key, upload, PUSHING_FILE), json.dumps(pushing).encode()
            )
            self.fs.put(sources, targets)
            record = {
                "upload": upload,
                "digest": done["digest"],
                "manifest": manifest,
                "summary": done.get("summary", {}),
                "seconds": done.get("seconds", 0.0),
                "pushed": {
                    "host": platform.node(),
                    "user": _user(),
                    "time": dt.datetime.now(dt.UTC).isoformat(),
                },
            }
            created = self._create_exclusive(
                self._path(stage, key, COMPLETE_MARKER), json.dumps(record, indent=1).encode()
            )
        except CacheError:
            raise
        except Exception as exc:
            raise CacheError(describe_error(self._url(stage, key), exc)) from None
        if not created:
            log.info("cache: %s/%s was pushed by someone else meanwhile", stage, key)
            self._remove(self._path(stage, key, upload))
            return 0
        self._remove(self._path(stage, key, upload, PUSHING_FILE))
        return sum(size for _, size, *_ in manifest)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def _remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def pull(self, work_root: Path | str, stage: str, key: str) -> int:
        """Download ``stage``/``key`` into the work root and publish it; bytes received."""
        work_root = Path(work_root)
        if read_output(work_root, stage, key, verify=False) is not None:
            return 0
        record = self.record(stage, key)
        if record is None:
            raise CacheError(f"{self._url(stage, key)}: not in the cache")
        manifest = [tuple(e) for e in record["manifest"]]
        staging = work_root / stage / STAGING_DIR / f"{key}.pull-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        sources = [self._path(stage, key, record["upload"], rel) for rel, *_ in manifest]
        targets = [str(staging / rel) for rel, *_ in manifest]
        for target in targets:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        log.info("cache: pulling %s/%s (%d files) from %s", stage, key, len(sources), self.url)
        try:
            if sources:
                self.fs.get(sources, targets)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise CacheError(describe_error(self._url(stage, key), exc)) from None
        for (rel, size, *digest), target in zip(manifest, targets, strict=True):
            got = Path(target).stat().st_size
            if got != size:
                shutil.rmtree(staging, ignore_errors=True)
                raise CacheError(
                    f"{self._url(stage, key, record['upload'], rel)}: {got} bytes, the record "
                    f"says {size}; the cached output is damaged (remove it with bankflow gc)"
                )
            if digest and file_sha256(Path(target)) != digest[0]:
                shutil.rmtree(staging, ignore_errors=True)
                raise CacheError(
                    f"{self._url(stage, key, record['upload'], rel)}: sha256 differs from the "
                    "record's; the cached output is damaged (remove it with bankflow gc)"
                )
        final = output_dir(work_root, stage, key)
        write_json_atomic(
            staging / COMPLETE_MARKER,
            {
                "digest": record["digest"],
                "manifest": manifest,
                "summary": relocate(record.get("summary", {}), f"/{stage}/{key}", str(final)),
                "seconds": record.get("seconds", 0.0),
                "pulled_from": self._url(stage, key),
            },
        )
        _fsync_dir(staging)
        try:
            os.replace(staging, final)
        except OSError:
            # Published meanwhile by another pull or run: same key, keep theirs.
            shutil.rmtree(staging, ignore_errors=True)
            return 0
        _fsync_dir(final.parent)
        return sum(size for _, size, *_ in manifest)

    # ----------------------------------------------------------------- listing
    def entries(self) -> Iterator[CacheEntry]:
        """Every output and upload in the cache (``complete`` or ``staging``)."""
        for stage_dir in self._ls(self.root):
            stage = stage_dir.rsplit("/", 1)[-1]
            for key_dir in self._ls(stage_dir):
                key = key_dir.rsplit("/", 1)[-1]
                record = self.record(stage, key)
                for upload_dir in self._ls(key_dir):
                    upload = upload_dir.rsplit("/", 1)[-1]
                    if record is not None and upload == record["upload"]:
                        pushed = record.get("pushed", {})
                        yield CacheEntry(
                            stage,
                            key,
                            "complete",
                            sum(size for _, size, *_ in record["manifest"]),
                            pushed.get("time"),
                            f"{pushed.get('host')}/{pushed.get('user')}",
                            self._url(stage, key, upload),
                        )
                    elif upload.startswith(UPLOAD_PREFIX):
                        yield CacheEntry(
                            stage,
                            key,
                            "staging",
                            self._du(upload_dir),
                            None,
                            None,
                            self._url(stage, key, upload),
                        )

    def is_empty_layout(self) -> bool:
        """True when every top-level entry is a directory of key directories (or empty)."""
        try:
            top = self.fs.ls(self.root, detail=True, refresh=True)
        except FileNotFoundError:
            return True
        return all(e["type"] == "directory" for e in top) and not any(
            e["type"] != "directory"
            for d in top
            for e in self.fs.ls(d["name"], detail=True, refresh=True)
        )

    def _ls(self, path: str) -> list[str]:
        try:
            found = self.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise CacheError(describe_error(self.url, exc)) from None
        return sorted(e["name"].rstrip("/") for e in found if e["type"] == "directory")

    def _du(self, path: str) -> int:
        try:
            return int(self.fs.du(path, total=True))
        except FileNotFoundError:
            return 0

    def delete_upload(self, stage: str, key: str, upload: str) -> None:
        self._remove(self._path(stage, key, upload))

    def delete_output(self, stage: str, key: str) -> None:
        """Remove a complete output: the record first, so no reader sees half of it."""
        record = self.record(stage, key)
        if record is not None:
            self._remove(self._path(stage, key, COMPLETE_MARKER))
        self._remove(self._path(stage, key))


def relocate(value: Any, marker: str, new_dir: str) -> Any:
    """``value`` with every path inside another work root's ``…/<stage>/<key>`` pointing
    into ``new_dir`` instead (a pulled summary names the puller's files, not the pusher's)."""
    if isinstance(value, dict):
        return {k: relocate(v, marker, new_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, marker, new_dir) for v in value]
    if isinstance(value, str) and value.startswith("/") and marker in value:
        return new_dir + value.split(marker, 1)[1]
    return value


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


def open_cache(url: str | None) -> StageCache | None:
    """The cache named by ``url`` (checked), or None when no cache is configured."""
    if not url:
        return None
    cache = StageCache(url)
    cache.check()
    return cache
