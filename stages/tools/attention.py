"""Attention pictures: a trained relation head's maps drawn over the keyframe image.

A head declares its picture (``ATTENTION``: which ``HeadOutput.attention`` maps, in which
style; :mod:`models.heads.contract`); this module draws each style. As the papers'
qualitative figures do, for one keyframe and its actors:

* ``actor_pairs``, **acar** (``attention["hr2o"]`` [B, L, Nmax, M, H, W]): for each query actor *i* (a row)
  and each actor *j* of the keyframe (a column), the last HR2O block's weight of *j* at
  every location (eq. 1; a softmax over *j* per location) as a heat map over the image,
  box *i* in green, box *j* in red. Where *i* looks at *j* shows which parts of the scene
  relate the two (ACAR Fig. 5).
* ``context_tokens``, **amcr** (``attention["bhoi"]`` [N, M]): each actor's attention to the M multi-scale
  context tokens of the last BHOI block, one column per pooling scale (3×3, 5×5, 7×7
  cells tiling the frame), as AMCRNet's Fig. 4 shows where an actor looks in the scene.
* ``enlarged_box``, **igmn_dam** (``attention["semantic"]``, ``["identity"]`` [N, R, R]): the semantic and
  identity maps of the Dual Attention Module over each actor's enlarged box (IGMN Fig. 6:
  the semantic map spreads to related context, the identity map stays on the person).

The keyframe's features come from a feature store (the run's own, or the one
``bankflow infer`` wrote for a raw video), the image from the video file (its keyframe's
centre frame at native size). The keyframe's frame follows the dataset's time base, as
extraction did (:func:`keyframe_frame`): AVA seconds minus the dataset's offset at the
video's fps; a Kinetics clip's own start second (AVA-Kinetics); a tube dataset's 1-based
frame numbers, whatever the fps. PNGs are drawn with matplotlib's ``Figure`` directly (its
Agg canvas; no pyplot, so no display and no global figure state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from featurestore import FeatureStore, KeyframeFeatures
from models.heads import HEADS, Head, head_class
from stages.data import Dataset
from stages.data.kinetics import kinetics_clip
from stages.extract.stage import FEATURES_DIR
from stages.framework import StageError
from stages.train.data import collate
from stages.train.run import TrainedRun
from stages.video import VideoError, VideoReader, center_frame

# The heads with a picture and its first map, from the heads' declarations.
PICTURED = {
    name: picture.maps[0]
    for name, entry in HEADS.items()
    if (picture := head_class(entry).ATTENTION) is not None
}
ALPHA = 0.55  # heat-map opacity over the image


@dataclass(frozen=True)
class Panel:
    """One image of the figure: a heat map [H, W] over the frame and boxes to outline."""

    title: str
    heat: np.ndarray  # float [H, W] at the image size, NaN where the map does not reach
    boxes: list[tuple[np.ndarray, str]]  # (normalized box, colour)
    # Colour scale: (0, 1) for weights that are probabilities of their own (HR2O's softmax
    # over actors, DAM's sigmoids), so panels compare; None: stretched per panel (BHOI's
    # softmax over ~80 tokens is small everywhere).
    limits: tuple[float, float] | None = (0.0, 1.0)


def upsample(grid: np.ndarray, height: int, width: int, *, smooth: bool = True) -> np.ndarray:
    """A map [h, w] covering the frame, resized to [height, width] (bilinear, or nearest
    for token grids whose cells are what the model saw)."""
    t = torch.as_tensor(np.asarray(grid, dtype=np.float32))[None, None]
    mode = "bilinear" if smooth else "nearest"
    kwargs = {"align_corners": False} if smooth else {}
    return F.interpolate(t, size=(height, width), mode=mode, **kwargs)[0, 0].numpy()


def paste_in_box(grid: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map [R, R] over the normalized ``box``, placed on a NaN frame [height, width]."""
    out = np.full((height, width), np.nan, dtype=np.float32)
    x1, y1, x2, y2 = (np.asarray(box) * [width, height, width, height]).round().astype(int)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(width, max(x2, x1 + 1)), min(height, max(y2, y1 + 1))
    out[y1:y2, x1:x2] = upsample(grid, y2 - y1, x2 - x1)
    return out


def enlarged(box: np.ndarray, scale: float) -> np.ndarray:
    """``box`` scaled about its centre and clipped to [0, 1] (IGMN's context box)."""
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) * scale / 2
    return np.clip(np.concatenate([centre - half, centre + half]), 0.0, 1.0)


def head_panels(
    head_name: str,
    head: Head,
    attention: dict[str, torch.Tensor],
    boxes: np.ndarray,
    height: int,
    width: int,
    *,
    max_actors: int,
) -> list[list[Panel]]:
    """The figure's rows of panels for one keyframe's ``attention`` maps, drawn in the
    style the head declares (``head.ATTENTION``).

    Raises:
        StageError: the head declares no picture, or its maps are missing.
    """
    picture = head.ATTENTION
    if picture is None:
        raise StageError(
            f"head {head_name!r} has no attention picture; heads with one: {sorted(PICTURED)}"
        )
    absent = [name for name in picture.maps if name not in attention]
    if absent:
        raise StageError(
            f"{head_name}: the head gave no {', '.join(absent)} attention (an option without "
            "it, e.g. acar's hr2o='rn', has none to draw)"
        )
    n = min(len(boxes), max_actors)
    rows: list[list[Panel]] = []
    if picture.style == "actor_pairs":
        att = attention[picture.maps[0]][0, -1].numpy()  # (Nmax, M, H, W), last block
        for i in range(n):
            rows.append(
                [
                    Panel(
                        f"actor {i} -> actor {j}",
                        upsample(att[i, j], height, width),
                        [(boxes[i], "lime"), (boxes[j], "red")],
                    )
                    for j in range(n)
                ]
            )
    elif picture.style == "context_tokens":
        att = attention[picture.maps[0]].numpy()  # (N, M)
        scales = list(cast(tuple[int, ...], head.context_scales))  # AMCRHead's
        if att.shape[1] != sum(s * s for s in scales):
            raise StageError(f"{head_name}: {att.shape[1]} context tokens, scales {scales}")
        for i in range(n):
            row, start = [], 0
            for s in scales:
                cells = att[i, start : start + s * s].reshape(s, s)
                start += s * s
                row.append(
                    Panel(
                        f"actor {i}, context {s}x{s}",
                        upsample(cells, height, width, smooth=False),
                        [(boxes[i], "lime")],
                        limits=None,
                    )
                )
            rows.append(row)
    else:  # enlarged_box
        scale = float(cast(float, head.context_scale))  # IGMNDAMHead's
        for i in range(n):
            region = enlarged(boxes[i], scale)
            rows.append(
                [
                    Panel(
                        f"actor {i}, {name}",
                        paste_in_box(attention[name][i].numpy(), region, height, width),
                        [(boxes[i], "lime"), (region, "white")],
                    )
                    for name in picture.maps
                ]
            )
    return rows


def draw_figure(image: np.ndarray, rows: list[list[Panel]], out: Path, title: str) -> None:
    """Panels (rows × columns) of heat maps over ``image`` [H, W, 3], saved as PNG."""
    height, width = image.shape[:2]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    panel_w = 3.2
    fig = Figure(figsize=(panel_w * n_cols, panel_w * height / width * n_rows + 0.6))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            ax = axes[r, c]
            ax.imshow(image)
            vmin, vmax = panel.limits or (None, None)
            ax.imshow(
                np.ma.masked_invalid(panel.heat), cmap="jet", alpha=ALPHA, vmin=vmin, vmax=vmax
            )
            for box, colour in panel.boxes:
                x1, y1, x2, y2 = np.asarray(box) * [width, height, width, height]
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=colour))
            ax.set_title(panel.title, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def store_video_id(stores: list[Path], stem: str) -> str:
    """The id under which the stores hold the video file ``<stem>``: the stem itself, or
    for a Kinetics clip file ``<youtube_id>_<start>_<end>`` the YouTube id if a store
    holds that (AVA-Kinetics CSVs may name a clip either way)."""
    clip = kinetics_clip(stem)
    if clip is None:
        return stem
    for path in stores:
        videos = FeatureStore.open(path, mode="r").videos()
        if stem in videos:
            return stem
        if clip[0] in videos:
            return clip[0]
    return stem


def keyframe_frame(
    timestamp: int,
    offset: float,
    frames_per_timestamp: float | None,
    fps: float,
    num_frames: int,
    video: Path,
) -> int:
    """The file's frame index shown at keyframe ``timestamp`` (the clip centre extraction
    used): ``(timestamp - offset) * rate``, the rate being ``frames_per_timestamp`` (1 for
    a tube dataset's frame numbers) or, for seconds (None), the video's ``fps``."""
    rate = fps if frames_per_timestamp is None else frames_per_timestamp
    return center_frame(float(timestamp), offset, rate, num_frames=num_frames, video=video)


def _find_keyframe(
    stores: list[Path], video_id: str, timestamp: int
) -> tuple[FeatureStore, KeyframeFeatures]:
    for path in stores:
        store = FeatureStore.open(path, mode="r")
        if video_id in store.videos():
            stamps = np.asarray(store.array(video_id, "timestamps")[:])
            if timestamp in stamps.tolist():
                return store, store.read_keyframes([(video_id, timestamp)])[0]
            raise StageError(
                f"{path}: video {video_id!r} has no actors at timestamp {timestamp} (its "
                f"keyframes: {stamps[:10].tolist()}{'...' if len(stamps) > 10 else ''})"
            )
    raise StageError(f"video {video_id!r} is in none of the stores {[str(p) for p in stores]}")


def attention_picture(
    run_dir: str | Path,
    video: str | Path,
    timestamp: int,
    out: str | Path,
    *,
    store: str | Path | None = None,
    video_id: str | None = None,
    offset: float | None = None,
    frame_numbers: bool | None = None,
    max_actors: int = 4,
) -> dict[str, Any]:
    """Draw the attention of the train run at ``run_dir`` on one keyframe into ``out`` (PNG).

    Args:
        video: the video file (its keyframe frame is the picture's background).
        timestamp: the keyframe's CSV timestamp (a tube dataset's: its 1-based frame).
        store: a feature store holding the keyframe; None: the run's own stores (any split).
        video_id: the keyframe's video id in the store; None: the video file's stem (a
            Kinetics clip file's YouTube id where the store holds that).
        offset: CSV time of the video's first frame; None: the run's dataset's offset of
            this video (its own for a Kinetics clip; 1 for frame numbers), or with an
            explicit ``store`` 0 (1 with ``frame_numbers``), as ``bankflow infer`` writes.
        frame_numbers: timestamps are 1-based frame numbers (a tube dataset) rather than
            seconds; None: as the run's dataset (seconds with an explicit ``store``).
        max_actors: draw at most this many actors (rows).

    Returns:
        What was drawn: head, map names and raw shapes, panels, image size, the frame
        index drawn, output path.
    """
    run = TrainedRun.open(run_dir)
    video, out = Path(video), Path(out)
    if store is not None:
        stores = [Path(store)]
    else:
        stores = sorted((run.extract_dir / FEATURES_DIR).glob("*.zarr"))
    video_id = video_id or store_video_id(stores, video.stem)
    feature_store, keyframe = _find_keyframe(stores, video_id, int(timestamp))
    dataset = None if store is not None else Dataset.open(run.dataset_config)
    if frame_numbers is None:
        frame_numbers = dataset is not None and dataset.frames_per_timestamp is not None
    rate = 1.0 if frame_numbers else None
    if offset is None:
        if dataset is not None:
            offset = dataset.offset_of(video_id)
        else:
            offset = 1.0 if frame_numbers else 0.0
    schema = feature_store.schema
    if schema.clip.get("flip"):
        raise StageError(f"{feature_store.url}: a flipped store; draw from the unflipped view")
    head = run.build_head()
    batch = collate(
        [keyframe], use_roi=schema.roi_shape is not None, use_roi_t=schema.roi_t_shape is not None
    )
    with torch.no_grad():
        output = head(batch)
    attention = {k: v.detach().cpu() for k, v in output.attention.items()}
    boxes = keyframe.boxes.astype(np.float64)
    try:
        with VideoReader(video) as reader:
            frame = keyframe_frame(
                int(timestamp), offset, rate, reader.fps, reader.num_frames, video
            )
            image = reader.get_frames(np.array([frame]))[0]
    except (VideoError, ValueError) as err:
        raise StageError(f"attention: {err}") from err
    height, width = image.shape[:2]
    rows = head_panels(run.head_name, head, attention, boxes, height, width, max_actors=max_actors)
    when = f"frame {int(timestamp)}" if frame_numbers else f"{int(timestamp):04d}"
    title = f"{run.name} ({run.head_name}) on {video_id},{when}"
    draw_figure(image, rows, out, title)
    return {
        "head": run.head_name,
        "out": str(out),
        "image": [height, width],
        "frame": frame,
        "video_id": video_id,
        "actors": len(boxes),
        "panels": [len(r) for r in rows],
        "overlays": sorted({tuple(panel.heat.shape) for row in rows for panel in row}),
        "maps": {k: list(v.shape) for k, v in attention.items()},
    }
