"""Decode-once keyframe clips vs naive per-clip random access (run: pytest -m bench -s).

Keyframes every second, SlowFast fast-path clips (32 frames at stride 2), on bikes.mp4
(25 fps, 10 s) and a longer synthetic H.264 video (30 fps, 60 s, key frame every 2 s).
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stages.video import (
    ClipSpec,
    VideoReader,
    iter_keyframe_clips,
    prefetch_keyframe_clips,
)

pytestmark = pytest.mark.bench

SPEC = ClipSpec(num_frames=32, stride=2)


def write_panning_video(path: Path, seconds: int, fps: int, width: int, height: int) -> Path:
    """A textured scene panning one pixel per frame: realistic motion for the encoder."""
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, size=(height // 8, (width + seconds * fps) // 8, 3))
    scene = np.repeat(np.repeat(scene.astype(np.uint8), 8, axis=0), 8, axis=1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        stream.options = {"preset": "veryfast", "crf": "23"}
        for index in range(seconds * fps):
            frame = np.ascontiguousarray(scene[:height, index : index + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def keyframe_times(reader: VideoReader) -> np.ndarray:
    """One keyframe per whole second of the video (offset 0)."""
    return np.arange(0, int(reader.num_frames / reader.fps), dtype=np.float64)


def bench_video(path: Path, label: str) -> None:
    reader = VideoReader(path)
    times = keyframe_times(reader)

    start = time.perf_counter()
    clips = [c.frame_indices for c in iter_keyframe_clips(reader, times, offset=0, spec=SPEC)]
    once_s = time.perf_counter() - start
    unique = np.unique(np.concatenate(clips)).size
    ratio = reader.decode_counter / unique

    naive = VideoReader(path)
    start = time.perf_counter()
    for indices in clips:
        naive.get_frames(indices)
    naive_s = time.perf_counter() - start

    print(
        f"\n[{label}] {reader.num_frames} frames {reader.width}x{reader.height} "
        f"@ {reader.fps:g} fps, {len(clips)} keyframes, 32x2 clips"
        f"\n  decoded / unique needed = {reader.decode_counter} / {unique} = {ratio:.3f}"
        f"  (naive per-clip: {naive.decode_counter} / {unique} = "
        f"{naive.decode_counter / unique:.2f})"
        f"\n  decode-once {once_s:.2f} s, naive random access {naive_s:.2f} s, "
        f"naive / once = {naive_s / once_s:.2f}x"
    )
    assert ratio <= 1.05


def bench_prefetch(path: Path, label: str) -> None:
    """Consumer work per clip ≈ decode time per clip: prefetch should hide most decoding."""
    probe = VideoReader(path)
    times = keyframe_times(probe)
    start = time.perf_counter()
    for _ in iter_keyframe_clips(probe, times, offset=0, spec=SPEC):
        pass
    work_s = (time.perf_counter() - start) / len(times)

    def consume(clips) -> float:
        start = time.perf_counter()
        for _ in clips:
            time.sleep(work_s)  # stands in for the backbone (releases the GIL like torch)
        return time.perf_counter() - start

    serial = consume(iter_keyframe_clips(VideoReader(path), times, offset=0, spec=SPEC))
    overlapped = consume(
        prefetch_keyframe_clips(VideoReader(path), times, offset=0, spec=SPEC, depth=2)
    )
    print(
        f"[{label}] prefetch: consumer work {work_s * 1e3:.0f} ms/clip; serial {serial:.2f} s, "
        f"prefetch depth 2 {overlapped:.2f} s ({serial / overlapped:.2f}x)"
    )


def test_bench_decode_bikes(bikes_mp4: Path) -> None:
    bench_video(bikes_mp4, "bikes.mp4")
    bench_prefetch(bikes_mp4, "bikes.mp4")


def test_bench_decode_long_synthetic(tmp_path: Path) -> None:
    path = write_panning_video(tmp_path / "pan.mp4", seconds=60, fps=30, width=320, height=240)
    bench_video(path, "synthetic 60 s")
    bench_prefetch(path, "synthetic 60 s")
