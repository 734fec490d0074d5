"""Checks run once before any stage: every named file exists, every name is safe, the
dataset's annotation files read, every video they name has a file.

A bad input then stops the run in a second with one line naming the file (and row),
not hours later inside a stage, or never (a missing excluded-timestamps file named in a
config used to be skipped silently).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.config import ConfigError, PipelineConfig
from stages.data import Dataset, DatasetConfig
from stages.data.errors import DataError
from stages.data.kinetics import find_clip
from stages.data.types import BoxTable
from stages.data.videos import VIDEO_EXTENSIONS, find_video


def used_splits(config: PipelineConfig) -> list[str]:
    """The dataset splits some stage of ``config`` reads, in first-use order."""
    names = [*config.detect.splits, *config.extract.splits, config.evaluate.split]
    names += [r.train_split for r in config.train.runs.values()]
    names += [r.val_split for r in config.train.runs.values()]
    if config.report is not None:
        names.append(config.report.train_split)
    if config.finetune is not None:
        names.append(config.finetune.split)
    if config.detect.source == "fasterrcnn" and config.detect.finetune is not None:
        names.append(config.detect.finetune.split)
    return list(dict.fromkeys(names))


def named_files(config: PipelineConfig, dataset: DatasetConfig) -> list[tuple[str, Path]]:
    """(config key, path) of every file the config names that a stage will open."""
    if dataset.tubes is not None:
        # A tube dataset's classes, splits and boxes all come from its one GT file.
        files = [("dataset.tubes.annotation", dataset.annotation_path(dataset.tubes.annotation))]
    else:
        files = [("dataset.labelmap", dataset.annotation_path(dataset.labelmap))]
        for split in used_splits(config):
            if split in dataset.splits:
                for field, name in dataset.splits[split].named_files().items():
                    files.append((f"dataset.splits.{split}.{field}", dataset.annotation_path(name)))
    return files + config_files(config)


def config_files(config: PipelineConfig) -> list[tuple[str, Path]]:
    """(config key, path) of every file outside the dataset that the config names."""
    files = [(f"detect.proposals.{s}", Path(p)) for s, p in config.detect.proposals.items()]
    if config.detect.source == "fasterrcnn" and config.detect.checkpoint:
        files.append(("detect.checkpoint", Path(config.detect.checkpoint)))
    if config.extract.weights:
        files.append(("extract.weights", Path(config.extract.weights)))
    return files


def check_named_files(config: PipelineConfig, dataset: DatasetConfig) -> None:
    """Raise for the first file the config names that does not exist (one line)."""
    for split in used_splits(config):
        if split not in dataset.splits:
            raise ConfigError(
                f"split {split!r} is read by a stage but the dataset has no such split "
                f"(its splits: {', '.join(dataset.splits)}; set dataset.splits.{split})"
            )
    for key, path in named_files(config, dataset):
        if not path.is_file():
            raise DataError(path, None, f"file named by {key} does not exist")


def _check_videos_exist(dataset: Dataset, table: BoxTable) -> None:
    """Every video a table names has a file (existence only: decoding is the stages' job)."""
    names, first = np.unique(table.video.astype(str), return_index=True)
    for name, row in sorted(zip(names.tolist(), first.tolist(), strict=True), key=lambda x: x[1]):
        videos = dataset.config.videos_path
        if find_video(videos, name) is None and find_clip(videos, name) is None:
            exts = "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
            raise DataError(
                table.source,
                int(table.line[row]),
                f"video {name!r} has no file {dataset.config.videos_path}/{name}.<{exts}>",
            )


def preflight(config: PipelineConfig, dataset_config: DatasetConfig) -> None:
    """Every check above, in order; raises :class:`DataError` or :class:`ConfigError`."""
    if not Path(dataset_config.root).is_dir():
        raise DataError(dataset_config.root, None, "dataset directory does not exist")
    dataset = Dataset.open(dataset_config)  # with <root>/dataset.yaml merged
    check_named_files(config, dataset.config)
    dataset.labelmap  # noqa: B018 - read and checked once here
    for split in used_splits(config):
        files = dataset.config.splits[split]
        tables = [dataset.gt(split)] if files.gt is not None else []
        dataset.excluded(split)
        if split not in config.detect.proposals:
            proposals = dataset.proposals(split)
            tables += [proposals] if proposals is not None else []
        for table in tables:
            _check_videos_exist(dataset, table)


def check_before_run(config: PipelineConfig) -> None:
    """The checks a run makes before Prefect starts (``bankflow run``, ``stage``, ``demo``):
    the files the config names exist, and, for a dataset already on disk (no demo world
    to build first), every check of :func:`preflight`. A mistake then costs about a second
    and one line, not Prefect's start-up and a failed flow run."""
    for key, path in config_files(config):
        if not path.is_file():
            raise DataError(path, None, f"file named by {key} does not exist")
    if config.world is None:
        preflight(config, config.dataset)
