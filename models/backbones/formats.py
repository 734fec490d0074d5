"""Reading checkpoint files: torch zips / pickles (``.pyth``, ``.pth``, ``.pt``) and Caffe2
pickles (``.pkl``), without ever running code from the file.

- torch files load with ``weights_only=True``; numpy arrays, scalars and dtypes in their
  metadata (MMAction2 ``meta``, PySlowFast ``cfg``) are allowed by name, nothing else.
- Caffe2 pickles (PySlowFast's AVA zoo) hold ``{"blobs": {name: numpy array}}``; they are
  read by an unpickler that can only rebuild numpy arrays, dtypes and plain containers.

Both give a :class:`CheckpointFile`: the tensors plus the training config the file embeds,
if any (PySlowFast writes its YAML ``cfg`` into every checkpoint, MMAction2 often its
Python config text into ``meta``).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

TORCH = "torch"
CAFFE2_PICKLE = "caffe2-pickle"

# What a numpy array / scalar / dtype pickles to, under numpy 1 and numpy 2 module names.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_CONTAINER_GLOBALS = {("collections", "OrderedDict"), ("_codecs", "encode")}


@dataclass
class CheckpointFile:
    """One checkpoint file's tensors and what it says about how it was trained."""

    path: str
    container: str  # TORCH or CAFFE2_PICKLE
    tensors: dict[str, Tensor]
    pyslowfast_cfg: str | None = None  # the YAML dump PySlowFast stores as ``cfg``
    mmaction2_cfg: str | None = None  # the Python config text in MMAction2's ``meta``


def _numpy_safe_globals() -> list[Any]:
    """(object, pickled name) pairs for torch's weights-only unpickler."""
    multiarray = (getattr(np, "_core", None) or np.core).multiarray  # numpy 2 / 1
    pairs: list[Any] = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        pairs.append((multiarray._reconstruct, f"{module}._reconstruct"))
        pairs.append((multiarray.scalar, f"{module}.scalar"))
    pairs += [np.ndarray, np.dtype]
    for code in "?bBhHiIlLqQefdgFDG":  # the dtype classes numpy 1.25+ pickles by name
        pairs.append(type(np.dtype(code)))
    return pairs


def read_checkpoint_file(path: str | Path, *, allow_pickle: bool = False) -> CheckpointFile:
    """Read one checkpoint file (format from its content, not its name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(2)
    # A plain (non-zip) pickle is a Caffe2 file or a legacy torch file; the restricted
    # Caffe2 reader tells them apart (a legacy torch file starts with a magic number).
    if _is_plain_pickle(head):
        try:
            return _caffe2_file(path, read_caffe2_pickle(path))
        except _NotCaffe2:
            pass
    obj = _torch_load(path, allow_pickle=allow_pickle)
    return _torch_file(path, obj)


def _is_plain_pickle(head: bytes) -> bool:
    return head[:1] in (b"\x80", b"(", b"}")


def _torch_load(path: Path, *, allow_pickle: bool) -> Any:
    try:
        # allow_pickle is the caller's explicit opt-in for a file it trusts.
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        hint = "" if allow_pickle else " (if you trust this file, pass allow_pickle=True)"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read checkpoint {path}: {first_line}{hint}") from exc


class _NotCaffe2(ValueError):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            multiarray = (getattr(np, "_core", None) or np.core).multiarray  # numpy 2 / 1
            if name in ("_reconstruct", "scalar"):
                return getattr(multiarray, name)
            return getattr(np, name)
        if (module, name) in _CONTAINER_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only numpy arrays are allowed in a Caffe2 pickle"
        )


def read_caffe2_pickle(path: str | Path) -> dict[str, Any]:
    """The ``{"blobs": {...}, ...}`` dict of a Caffe2 pickle, numpy arrays only."""
    data = Path(path).read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise _NotCaffe2(f"{path} is a torch zip file")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "refusing" in str(exc):
            raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
        raise _NotCaffe2(str(exc)) from exc
    except Exception as exc:
        raise _NotCaffe2(str(exc)) from exc
    if not isinstance(obj, Mapping) or not isinstance(obj.get("blobs"), Mapping):
        raise _NotCaffe2(f"{path} holds no 'blobs' dict")
    return dict(obj)


def _caffe2_file(path: Path, obj: Mapping[str, Any]) -> CheckpointFile:
    tensors = {
        str(k): torch.from_numpy(np.ascontiguousarray(v))
        for k, v in obj["blobs"].items()
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiub"
    }
    if not tensors:
        raise ValueError(f"checkpoint {path}: Caffe2 'blobs' holds no numpy arrays")
    return CheckpointFile(str(path), CAFFE2_PICKLE, tensors)


def _torch_file(path: Path, obj: Any) -> CheckpointFile:
    tensors = unwrap_state_dict(obj, source=str(path))
    file = CheckpointFile(str(path), TORCH, tensors)
    if isinstance(obj, Mapping):
        cfg = obj.get("cfg")
        if isinstance(cfg, str) and cfg.strip():
            file.pyslowfast_cfg = cfg
        meta = obj.get("meta")
        if isinstance(meta, Mapping):
            # mmcv 1.x writes the config text as meta["config"], mmengine as meta["cfg"].
            text = meta.get("cfg", meta.get("config"))
            if isinstance(text, str) and text.strip():
                file.mmaction2_cfg = text
    return file


def unwrap_state_dict(obj: Any, *, source: str = "<state dict>") -> dict[str, Tensor]:
    """The tensors of a checkpoint object: ``model_state`` (PySlowFast), ``state_dict``
    (MMAction2/mmengine), ``model``, or the dict itself; a DDP ``module.`` prefix is removed."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {source}: expected a dict, got {type(obj).__name__}")
    for wrapper in ("model_state", "state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"checkpoint {source}: holds no tensors (keys: {list(obj)[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors
