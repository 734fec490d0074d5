"""Videos written with PyAV whose frames show their own frame number as a bit pattern."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

BITS = 8  # frame numbers up to 255
BLOCK = 16  # pixels per bit block: survives lossy coding and a 2x downscale
WIDTH = BITS * BLOCK  # 128
HEIGHT = 96


def numbered_frame(index: int) -> np.ndarray:
    """uint8[HEIGHT, WIDTH, 3]: top band = bits of `index` (white = 1), below a colour ramp."""
    frame = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for bit in range(BITS):
        if (index >> bit) & 1:
            frame[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255
    ramp = np.linspace(0, 255, WIDTH, dtype=np.float64)
    frame[2 * BLOCK :, :, 0] = ramp.astype(np.uint8)
    frame[2 * BLOCK :, :, 1] = (index * 7) % 256  # changes every frame: frames differ
    frame[2 * BLOCK :, :, 2] = 255 - ramp.astype(np.uint8)
    return frame


def read_frame_number(frame: np.ndarray) -> int:
    """Inverse of `numbered_frame` for a decoded (possibly resized) uint8[H, W, 3] frame."""
    height, width = frame.shape[:2]
    block_w = width / BITS
    block_h = height * BLOCK / HEIGHT
    number = 0
    for bit in range(BITS):
        # Sample the middle half of the block: edges blur under coding and resizing.
        x0, x1 = int((bit + 0.25) * block_w), int((bit + 0.75) * block_w)
        y0, y1 = int(0.25 * block_h), int(0.75 * block_h)
        if frame[y0:y1, x0:x1].mean() > 128:
            number |= 1 << bit
    return number


def write_numbered_video(
    path: Path,
    num_frames: int,
    fps: Fraction | int = 10,
    *,
    codec: str = "libx264",
    gop: int = 12,
) -> Path:
    """Encode `num_frames` numbered frames at `fps`; key frames every `gop` frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "veryfast"}  # B-frames on: reordering
        else:
            stream.bit_rate = 4_000_000
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(numbered_frame(index), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def numbered_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H.264 mp4 of 73 numbered frames at 10 fps, 128x96, key frames every 12 frames."""
    return write_numbered_video(tmp_path_factory.mktemp("video") / "numbered.mp4", 73)
