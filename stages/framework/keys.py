"""What enters a stage key: every config field says so with one of three markers.

A stage key names an output by what decides its contents, so teammates with the same data
and settings share outputs wherever their files live and whatever machine they run on:

* ``InKey[T]``: the value enters the key (it changes results: learning rate, splits,
  training batch size, a run's name written into its outputs).
* ``FileInKey[T]``: a path to a file (weights, a checkpoint, a proposal file); the sha256
  of the file's bytes enters the key, never the path. ``None`` stays ``None``; a dict or
  list of paths is keyed entry by entry.
* ``FileOrNameInKey[T]``: a file or a name (a backbone's source config: a YAML / Python
  file, or a preset / hub name): an existing file enters by its sha256, anything else by
  its value.
* ``InKeyIfSet[T]``: like ``InKey``, but a ``None`` value stays out of the key: a field
  added after outputs were shared (its default ``None`` = the old behaviour) keeps every
  existing key, and enters only the keys of the configs that set it.
* ``NotInKey[T]``: execution only (device, inference batch size, RAM budgets, worker
  counts, disk checks, where a dataset lives); left out of the key and recorded in the
  provenance with the rest of the config.

Datasets enter by their content fingerprint (``dataset_fingerprint``), inputs by their
keys (:func:`stages.framework.stage_key`). Usage::

    class ExtractConfig(BaseModel):
        backbone: InKey[str] = "slowfast_r50"
        weights: FileInKey[str | None] = None
        device: NotInKey[Literal["auto", "cpu", "cuda"]] = "auto"

A field without a marker enters the key (the safe side: never shares an output wrongly);
``tests/framework/test_keys.py`` fails on any unmarked field of a pipeline stage.
"""

from __future__ import annotations

import enum
import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

T = TypeVar("T")


class KeyRole(enum.Enum):
    VALUE = "value"  # the value enters the key
    FILE = "file"  # the sha256 of the named file enters the key
    FILE_OR_NAME = "file_or_name"  # an existing file by its sha256, else the value
    VALUE_IF_SET = "value_if_set"  # the value enters the key unless it is None
    EXCLUDED = "excluded"  # execution only: not in the key, recorded in provenance


InKey = Annotated[T, KeyRole.VALUE]
InKeyIfSet = Annotated[T, KeyRole.VALUE_IF_SET]
FileInKey = Annotated[T, KeyRole.FILE]
FileOrNameInKey = Annotated[T, KeyRole.FILE_OR_NAME]
NotInKey = Annotated[T, KeyRole.EXCLUDED]


class KeyFileError(ValueError):
    """A file that enters a key (weights, checkpoint, proposals) cannot be read."""


def field_role(model: type[BaseModel], name: str) -> KeyRole | None:
    """The marker of ``model.name``, or None when the field has none."""
    roles = [m for m in model.model_fields[name].metadata if isinstance(m, KeyRole)]
    if len(roles) > 1:
        raise TypeError(f"{model.__name__}.{name}: more than one key marker {roles}")
    return roles[0] if roles else None


# (absolute path, size, mtime_ns) -> sha256: a key is computed several times per run
# (status, the task's cache key, the run itself); a large checkpoint is hashed once.
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str], *, field: str = "file") -> str:
    """sha256 (hex) of a file's bytes, memoised by path, size and modification time."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise KeyFileError(f"{field}: {p}: cannot read ({exc.strerror or exc})") from None
    if not p.is_file():
        raise KeyFileError(f"{field}: {p} is not a file")
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    digest = _FILE_DIGESTS.get(memo)
    if digest is None:
        digest = _FILE_DIGESTS[memo] = hash_file(p)
    return digest


def hash_file(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read now (never memoised: integrity checks use it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _file_payload(value: Any, where: str) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _file_payload(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_file_payload(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str | os.PathLike):
        return {"sha256": file_sha256(value, field=where)}
    raise TypeError(f"{where}: a FileInKey field holds paths, got {type(value).__name__}")


def declared_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation names (``Model | None``, ``dict[str, Model]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in declared_models(arg)]


def _value_payload(value: Any, where: str, declared: type[BaseModel] | None) -> Any:
    if isinstance(value, BaseModel):
        # A subclass instance in a field of its base type enters with the base's fields
        # (as pydantic serializes it): a pipeline section passed as a stage's settings.
        model = declared if declared is not None and isinstance(value, declared) else None
        return key_payload(value, where, model=model)
    if isinstance(value, dict):
        return {str(k): _value_payload(v, f"{where}.{k}", declared) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_value_payload(v, f"{where}[{i}]", declared) for i, v in enumerate(value)]
    return to_jsonable_python(value)


def key_payload(
    config: BaseModel, where: str = "", *, model: type[BaseModel] | None = None
) -> dict[str, Any]:
    """The part of ``config`` that enters a key: JSON-able, no path, no execution field.

    Nested models are walked with their own markers; ``model`` (default: the config's
    type) says whose fields count. ``where`` prefixes field names in errors
    (``extract.weights: /x/w.pt: cannot read``).
    """
    model = model or type(config)
    payload: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        role = field_role(model, name)
        if role is KeyRole.EXCLUDED:
            continue
        value = getattr(config, name)
        dotted = f"{where}.{name}" if where else name
        if role is KeyRole.VALUE_IF_SET and value is None:
            continue
        if role is KeyRole.FILE:
            payload[name] = _file_payload(value, dotted)
        elif role is KeyRole.FILE_OR_NAME:
            is_file = isinstance(value, str | os.PathLike) and Path(value).expanduser().is_file()
            payload[name] = _file_payload(value, dotted) if is_file else to_jsonable_python(value)
        else:
            declared = declared_models(info.annotation)
            payload[name] = _value_payload(
                value, dotted, declared[0] if len(declared) == 1 else None
            )
    return payload


def excluded_fields(
    config: BaseModel, prefix: str = "", *, model: type[BaseModel] | None = None
) -> list[str]:
    """Dotted names of the fields of ``config`` left out of its key (for provenance)."""
    model = model or type(config)
    out: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if field_role(model, name) is KeyRole.EXCLUDED:
            out.append(dotted)
            continue
        value = getattr(config, name)
        declared = declared_models(info.annotation)
        if isinstance(value, BaseModel):
            sub = declared[0] if len(declared) == 1 and isinstance(value, declared[0]) else None
            out.extend(excluded_fields(value, f"{dotted}.", model=sub))
    return out
