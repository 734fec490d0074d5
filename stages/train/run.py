"""A trained run: its ``head.pt`` written and read back, its typed run config, what produced it.

The one module that owns a model-producing stage's output (docs/design.md §5):
:func:`save_head_file` is how ``train``, ``train_bank`` and ``rebalance`` write
``head.pt``; :func:`load_trained_head` / :class:`TrainedRun` how ``dump``,
``train_bank`` (``init: stage1``), ``rebalance``, ``predict`` (TTA), ``bankflow infer``
and the attention pictures read it back (strictly: the saved state must fit the head its
build record makes, and the file is read with ``weights_only=True``).

``bankflow infer``, the attention pictures and test-time augmentation all start from the
directory of one train run (``<work_root>/train/<key>/``). Its ``head.pt`` rebuilds the
head; its provenance names the extract run it trained on, whose provenance in turn names
the backbone (config, and fine-tuned weights when a finetune stage fed it), the detect
run (the person detector) and the track run (linking thresholds). Upstream outputs are
found through the key recorded in each provenance, beside the run in the same work root
(or at the recorded URI), so a work root can be moved or copied as a whole.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models.heads import Head, build_head
from stages.data import Dataset, DatasetConfig, LabelMap
from stages.framework import (
    COMPLETE_MARKER,
    PROVENANCE_FILE,
    StageError,
    read_published_bytes,
    read_published_json,
)

if TYPE_CHECKING:
    from stages.train.config import BankRunConfig, HeadRunConfig

HEAD_FILE = "head.pt"  # the trained head of a train, train_bank or rebalance output
POSE_LABEL_TYPE = "PERSON_MOVEMENT"


def save_head_file(
    directory: Path,
    *,
    head: str,
    kwargs: dict[str, Any],
    state: dict[str, Any],
    in_channels: int,
    classes: list[int],
    **extra: Any,
) -> Path:
    """Write ``directory/head.pt``: the head's name and build arguments (so
    :func:`models.heads.build_head` alone rebuilds it), its ``state``, ``in_channels``,
    ``classes`` (label ids in output order) and what the stage adds (``extra``: plain
    values only, as everything here, so it loads with ``weights_only=True``)."""
    path = directory / HEAD_FILE
    record = {
        "head": head,
        "kwargs": kwargs,
        "state": state,
        "in_channels": in_channels,
        "classes": classes,
        **extra,
    }
    torch.save(record, path)
    return path


def build_saved_head(saved: dict[str, Any], path: Path) -> Head:
    """The head a ``head.pt`` record describes, its state loaded strictly, in eval mode.

    Raises:
        StageError: naming ``path``: the record does not build a head, or its state does
            not fit it.
    """
    try:
        model = build_head(
            str(saved["head"]),
            in_channels=int(saved["in_channels"]),
            num_classes=len(saved["classes"]),
            **dict(saved.get("kwargs") or {}),
        )
    except (TypeError, ValueError) as err:
        raise StageError(f"{path}: cannot rebuild its {saved['head']!r} head ({err})") from None
    missing, unexpected = model.load_state_dict(saved["state"], strict=False)
    if missing or unexpected:
        raise StageError(
            f"{path} does not fit a {saved['head']!r} head "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def load_trained_head(run_dir: Path) -> tuple[Head, dict[str, Any]]:
    """The trained head of a model-producing stage output (eval mode, CPU) and its saved
    record (:func:`load_head_file`)."""
    saved = load_head_file(run_dir)
    return build_saved_head(saved, run_dir / HEAD_FILE), saved


def read_provenance(path: Path) -> dict[str, Any]:
    """The provenance of a published stage output, refusing an incomplete one."""
    if not (path / COMPLETE_MARKER).is_file():
        raise StageError(f"{path}: not a complete stage output (no {COMPLETE_MARKER})")
    provenance = read_published_json(path, PROVENANCE_FILE)
    if not isinstance(provenance, dict):
        raise StageError(f"{path / PROVENANCE_FILE}: expected a JSON object")
    return provenance


def load_head_file(run_dir: Path) -> dict[str, Any]:
    """The record a model-producing stage saved as ``head.pt``: ``head``, ``kwargs``,
    ``state``, ``in_channels``, ``classes`` (and what the stage added).

    The file must match the sha256 recorded when the run was published, and is read with
    ``weights_only=True``: tensors and plain containers only, never code.

    Raises:
        StageError: naming the file (missing, changed since publication, not a plain
            tensor file, not a dict).
    """
    path = run_dir / HEAD_FILE
    if not path.is_file():
        raise StageError(f"{path}: no trained head (is {run_dir} a train-stage output?)")
    data = read_published_bytes(run_dir, HEAD_FILE)
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageError(
            f"{path}: not a plain tensor file; refusing to load it ({first})"
        ) from None
    if not isinstance(saved, dict) or not {"head", "state", "classes"} <= set(saved):
        raise StageError(f"{path}: expected a dict with head, state and classes")
    return saved


def upstream_dir(path: Path, provenance: dict[str, Any], name: str) -> Path:
    """The output directory of input ``name`` of the stage output at ``path``.

    Looks beside ``path`` first (``<work_root>/<stage>/<key>``, the layout of every work
    root), then at the URI recorded at the time (relative to the work root; absolute in
    outputs of older bankflow versions).
    """
    inputs = provenance.get("inputs", {})
    if name not in inputs:
        raise StageError(
            f"{path}: stage {provenance.get('stage')!r} had no {name!r} input "
            f"(its inputs: {sorted(inputs)})"
        )
    key = inputs[name]["key"]
    work_root = path.parent.parent
    for candidate in (work_root / name / key, work_root / inputs[name]["uri"]):
        if (candidate / COMPLETE_MARKER).is_file():
            return candidate
    raise StageError(
        f"{path}: its {name!r} input (key {key}) is neither at {path.parent.parent / name / key} "
        f"nor at {inputs[name]['uri']}"
    )


@dataclass
class TrainedRun:
    """One train run's directory, its head file and provenance.

    Attributes:
        path: the run's output directory.
        saved: the contents of ``head.pt``: ``head``, ``kwargs``, ``state``, ``in_channels``,
            ``classes`` (label ids in the head's output order).
        provenance: the run's ``provenance.json``.
    """

    path: Path
    saved: dict[str, Any]
    provenance: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, *, stages: tuple[str, ...] = ("train",)) -> TrainedRun:
        """The run at ``path``, an output of one of ``stages`` (``train_bank`` too for a
        caller that rebuilds the stage-2 bank: see :mod:`stages.tools.infer`)."""
        path = Path(path)
        provenance = read_provenance(path)
        if provenance.get("stage") not in stages:
            expected = " or ".join(stages)
            raise StageError(
                f"{path}: is an output of stage {provenance.get('stage')!r}, expected a "
                f"{expected} run"
            )
        if not (path / HEAD_FILE).is_file():
            raise StageError(f"{path}: train run without {HEAD_FILE}")
        saved = load_head_file(path)
        return cls(path=path, saved=saved, provenance=provenance)

    @property
    def name(self) -> str:
        return str(self.provenance["config"].get("name", self.path.name))

    @property
    def head_name(self) -> str:
        return str(self.saved["head"])

    @property
    def stage(self) -> str:
        """The stage that trained it: ``train`` (stage 1) or ``train_bank`` (stage 2)."""
        return str(self.provenance["stage"])

    @cached_property
    def extract_dir(self) -> Path:
        return upstream_dir(self.path, self.provenance, "extract")

    @cached_property
    def extract_provenance(self) -> dict[str, Any]:
        return read_provenance(self.extract_dir)

    def stage_dir(self, name: str) -> Path | None:
        """The output of an upstream stage of the extraction (``detect``, ``track``,
        ``finetune``), or None when the extraction had no such input."""
        if name not in self.extract_provenance.get("inputs", {}):
            return None
        return upstream_dir(self.extract_dir, self.extract_provenance, name)

    def stage_config(self, name: str) -> dict[str, Any]:
        """The config section of upstream stage ``name`` (``{}`` when it did not run)."""
        directory = self.stage_dir(name)
        if directory is None:
            return {}
        return dict(read_provenance(directory)["config"].get(name) or {})

    @cached_property
    def dataset_config(self) -> DatasetConfig:
        return DatasetConfig.model_validate(self.provenance["config"]["dataset"])

    def build_head(self) -> Head:
        """The trained head in eval mode, on the CPU."""
        return build_saved_head(self.saved, self.path / HEAD_FILE)

    @cached_property
    def run_config(self) -> HeadRunConfig | BankRunConfig:
        """The run's typed ``run`` section: a :class:`stages.train.stage.HeadRunConfig`
        (``train``) or :class:`stages.train.bank.BankRunConfig` (``train_bank``)."""
        from stages.train.config import BankRunConfig, HeadRunConfig

        run = self.provenance.get("config", {}).get("run")
        if not isinstance(run, dict):
            raise StageError(
                f"{self.path / PROVENANCE_FILE}: has no 'run' section (not a head training run)"
            )
        config_type = BankRunConfig if self.stage == "train_bank" else HeadRunConfig
        return config_type.model_validate(run)

    def memory_dim(self) -> int:
        """The width of the online memory of a ``bank_mode: online`` stage-2 run."""
        from models.heads import HEADS, head_class

        saved = self.saved
        try:
            return int(
                head_class(HEADS[str(saved["head"])]).memory_dim(
                    int(saved["in_channels"]), dict(saved.get("kwargs") or {})
                )
            )
        except (KeyError, ValueError) as err:
            raise StageError(f"{self.path}: no online memory width ({err})") from None

    def classes(self, labelmap: LabelMap | None = None) -> tuple[LabelMap, list[int]]:
        """The head's classes as a label map (output order) and the dense indices of the
        mutually exclusive (softmax) ones.

        From the run's dataset by default (its label map and exclusive classes, as the run
        was trained); ``labelmap`` (e.g. read from a copied ``.pbtxt``) replaces it when
        the dataset is not at hand, the exclusive classes then being its PERSON_MOVEMENT
        ones.
        """
        ids = [int(i) for i in self.saved["classes"]]
        if labelmap is None:
            try:
                dataset = Dataset.open(self.dataset_config)
                full, exclusive_ids = dataset.labelmap, set(dataset.exclusive_ids.tolist())
            except (OSError, ValueError) as err:
                raise StageError(
                    f"{self.path}: the run's dataset at {self.dataset_config.root} cannot be "
                    f"read for its label map ({err}); pass the label map file instead"
                ) from err
        else:
            full = labelmap
            exclusive_ids = {
                int(i)
                for i, t in zip(full.ids, full.label_types, strict=True)
                if t == POSE_LABEL_TYPE
            }
        missing = [i for i in ids if i not in full]
        if missing:
            raise StageError(
                f"{self.path}: the head predicts label ids {missing[:5]} that the label map "
                f"{full.source or '(given)'} does not have"
            )
        subset = full.subset(ids)
        if [int(i) for i in subset.ids] != ids:  # subset keeps file order; the head may not
            raise StageError(
                f"{self.path}: the head's classes {ids[:5]}... are not in the label map's order"
            )
        exclusive = [k for k, i in enumerate(ids) if i in exclusive_ids]
        return subset, exclusive
