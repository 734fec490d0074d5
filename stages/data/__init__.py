"""AVA-format data: CSV/pbtxt/pickle readers and writers, dataset config and checks."""

from .ava import (
    read_detections_csv,
    read_excluded_csv,
    read_gt_csv,
    read_mmaction_proposals,
    read_predictions_parquet,
    write_predictions_csv,
    write_predictions_parquet,
)
from .check import DatasetReport, check_dataset
from .dataset import Dataset, DatasetConfig, SplitFiles
from .errors import DataError, DataErrors
from .labelmap import read_labelmap, write_labelmap
from .types import NO_ACTION, NO_PERSON, BoxTable, ExcludedKeyframes, LabelMap

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
    "SplitFiles",
    "check_dataset",
    "read_detections_csv",
    "read_excluded_csv",
    "read_gt_csv",
    "read_labelmap",
    "read_mmaction_proposals",
    "read_predictions_parquet",
    "write_labelmap",
    "write_predictions_csv",
    "write_predictions_parquet",
]
