"""AVA-format data: CSV/pbtxt/pickle readers and writers, dataset config and checks."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ava import (
        read_detections_csv,
        read_excluded_csv,
        read_gt_csv,
        read_mmaction_proposals,
        read_predictions_parquet,
        stream_detections_csv,
        stream_predictions_parquet,
        write_predictions_csv,
        write_predictions_parquet,
    )
    from .check import DatasetReport, check_dataset
    from .dataset import Dataset, DatasetConfig, SplitFiles
    from .errors import DataError, DataErrors
    from .labelmap import read_labelmap, write_labelmap
    from .types import (
        NO_ACTION,
        NO_PERSON,
        BoxTable,
        ExcludedKeyframes,
        LabelMap,
        PredictionRows,
        RowBlocks,
    )

# Imported on first use: a pipeline config (stages.data.dataset) loads no CSV parser,
# no checker.
_LAZY = {
    "read_detections_csv": "stages.data.ava",
    "read_excluded_csv": "stages.data.ava",
    "read_gt_csv": "stages.data.ava",
    "read_mmaction_proposals": "stages.data.ava",
    "read_predictions_parquet": "stages.data.ava",
    "stream_detections_csv": "stages.data.ava",
    "stream_predictions_parquet": "stages.data.ava",
    "write_predictions_csv": "stages.data.ava",
    "write_predictions_parquet": "stages.data.ava",
    "DatasetReport": "stages.data.check",
    "check_dataset": "stages.data.check",
    "Dataset": "stages.data.dataset",
    "DatasetConfig": "stages.data.dataset",
    "SplitFiles": "stages.data.dataset",
    "DataError": "stages.data.errors",
    "DataErrors": "stages.data.errors",
    "read_labelmap": "stages.data.labelmap",
    "write_labelmap": "stages.data.labelmap",
    "NO_ACTION": "stages.data.types",
    "NO_PERSON": "stages.data.types",
    "BoxTable": "stages.data.types",
    "ExcludedKeyframes": "stages.data.types",
    "LabelMap": "stages.data.types",
    "PredictionRows": "stages.data.types",
    "RowBlocks": "stages.data.types",
}

__all__ = [
    "NO_ACTION",
    "NO_PERSON",
    "BoxTable",
    "DataError",
    "DataErrors",
    "Dataset",
    "DatasetConfig",
    "DatasetReport",
    "ExcludedKeyframes",
    "LabelMap",
    "PredictionRows",
    "RowBlocks",
    "SplitFiles",
    "check_dataset",
    "read_detections_csv",
    "read_excluded_csv",
    "read_gt_csv",
    "read_labelmap",
    "read_mmaction_proposals",
    "read_predictions_parquet",
    "stream_detections_csv",
    "stream_predictions_parquet",
    "write_labelmap",
    "write_predictions_csv",
    "write_predictions_parquet",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
