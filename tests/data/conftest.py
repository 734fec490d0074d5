"""Helpers for data-layer tests: tiny videos written with PyAV, an AVA-format directory
with the real AVA file names (not the demo world's) and offset 900."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from stages.data import DatasetConfig, SplitFiles

# Encoders by container: webm needs VP8/VP9, the others take MPEG-4 part 2.
_CODECS = {".webm": "libvpx", ".mkv": "mpeg4", ".mp4": "mpeg4", ".avi": "mpeg4", ".mov": "mpeg4"}


def write_video(
    path: Path, *, seconds: float, fps: int = 4, size: tuple[int, int] = (32, 48)
) -> Path:
    """Write a small video of ``seconds * fps`` frames (H, W = ``size``) whose brightness
    changes every frame."""
    height, width = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_CODECS[path.suffix], rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            frame = np.full((height, width, 3), (i * 23) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


LABELMAP_TEXT = """\
# A v2.2-style label map with types; ids are not contiguous on purpose.
label {
  name: "stand"
  label_id: 12
  label_type: PERSON_MOVEMENT
}
label { name: 'sit' label_id: 11 label_type: PERSON_MOVEMENT }
label {
  label_type: OBJECT_MANIPULATION  # fields in any order
  name: "carry/hold (an object)"
  label_id: 17
}
label {
  name: "watch (a person)"
  label_id: 80
  label_type: PERSON_INTERACTION
}
"""

# Real AVA v2.2 file names; the demo world uses others.
REAL_NAMES = {
    "labelmap": "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
    "train_gt": "ava_train_v2.2.csv",
    "train_excluded": "ava_train_excluded_timestamps_v2.2.csv",
    "val_gt": "ava_val_v2.2.csv",
    "val_excluded": "ava_val_excluded_timestamps_v2.2.csv",
    "val_proposals": "ava_detection_val_boxes_and_labels.csv",
}

TRAIN_GT = """\
-5KQ66BBWC4,0901,0.100,0.200,0.400,0.900,12,0
-5KQ66BBWC4,0901,0.100,0.200,0.400,0.900,17,0
-5KQ66BBWC4,0901,0.500,0.100,0.800,0.950,11,1
-5KQ66BBWC4,0902,0.110,0.210,0.410,0.910,12,0
-5KQ66BBWC4,0903,0.120,0.220,0.420,0.920,12,0
0123,901,0.200,0.200,0.600,0.800,11,0
0123,902,0.200,0.200,0.600,0.800,80,0
0123,902,0.200,0.200,0.600,0.800,11,0
"""
TRAIN_EXCLUDED = "0123,0903\n"
VAL_GT = """\
clipC,0902,0.000,0.000,1.000,1.000,12,3
clipC,0903,0.300,0.300,0.500,0.700,17,3
"""
VAL_PROPOSALS = """\
clipC,0902,0.010,0.020,0.990,0.980,,0.97
clipC,0902,0.300,0.300,0.500,0.700,,3.1e-2
clipC,0903,0.300,0.300,0.500,0.700,,0.88
"""


@dataclass(frozen=True)
class AvaDir:
    """An AVA-format dataset made for one test."""

    root: Path
    config: DatasetConfig

    def annotation(self, name: str) -> Path:
        return self.config.annotation_path(name)


def make_ava_dir(root: Path) -> AvaDir:
    """Videos of 4 s (mkv, mp4, webm; one id starts with '-', one looks numeric), real AVA
    file names, timestamps 901..903 (offset 900)."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / REAL_NAMES["labelmap"]).write_text(LABELMAP_TEXT)
    (ann / REAL_NAMES["train_gt"]).write_text(TRAIN_GT)
    (ann / REAL_NAMES["train_excluded"]).write_text(TRAIN_EXCLUDED)
    (ann / REAL_NAMES["val_gt"]).write_text(VAL_GT)
    (ann / REAL_NAMES["val_proposals"]).write_text(VAL_PROPOSALS)
    write_video(root / "videos" / "-5KQ66BBWC4.mkv", seconds=4)
    write_video(root / "videos" / "0123.mp4", seconds=4)
    write_video(root / "videos" / "clipC.webm", seconds=4, fps=5)
    config = DatasetConfig(
        root=root,
        labelmap=REAL_NAMES["labelmap"],
        splits={
            "train": SplitFiles(gt=REAL_NAMES["train_gt"], excluded=REAL_NAMES["train_excluded"]),
            "val": SplitFiles(
                gt=REAL_NAMES["val_gt"],
                # No excluded file named: val has none (a named file must exist, issue 20).
                proposals=REAL_NAMES["val_proposals"],
            ),
        },
    )
    return AvaDir(root=root, config=config)


@pytest.fixture
def ava_dir(tmp_path: Path) -> AvaDir:
    return make_ava_dir(tmp_path / "ava")
