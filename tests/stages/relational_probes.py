"""Relational probes: synthetic feature stores where one relation decides each actor's label.

A probe world is a set of videos of keyframes. Each keyframe gets a synthetic backbone
map ``[C, H, W]`` (Gaussian noise), its actors are painted into the map inside their
boxes, and the store's per-actor arrays are pooled from that map exactly as extraction
pools them (:func:`models.roi.actor_rois`: RoIAlign 7 x 7, aligned, max-pool), so
``context``, ``pooled``, ``roi`` and ``roi_t`` relate to each other as in a real store.
The world is written to a real (zarr) :class:`featurestore.FeatureStore`, read back with
:class:`stages.train.data.KeyframeSource` and trained with :func:`stages.train.loop.train`,
the project's one training loop.

Channels of the map: ``MARKER`` (an actor's own tag, painted in its box), ``OBJECT`` (a
thing of the scene, painted above an actor's box, outside every box), ``PERSON`` (body
presence in every box) and the rest: a random appearance vector per identity (constant
along a track) on top of the noise.

Actors stand in three vertical slots (left / middle / right third of the image) so their
boxes never overlap; a box spans y in [0.45, 0.95] and the object sits 1-2 cells above it.

Probes (one class; the label of actor ``i`` is decided only by):
- ``control``: ``i``'s own marker.
- ``actor_actor``: another actor of the same keyframe carries a marker (``i``'s own marker
  is drawn independently and says nothing).
- ``actor_context``: an object lies just above ``i``'s box (outside it); objects above other
  actors are drawn independently.
- ``actor_context_actor``: another actor ``j`` of the keyframe has an object above it
  (an object above ``i`` itself says nothing).
- ``identity``: ``i``'s track carried the marker at the video's first keyframe; later
  keyframes show an independent marker (only later keyframes are scored).
- ``overlap`` (IGMN-DAM's case, not in ``PROBES``): two actors whose boxes overlap (~0.3
  wide, centres 0.2 apart: one or two of the four map columns of a box are shared); ``i``'s
  own marker decides, but the other actor's marker is painted in the shared columns, inside
  ``i``'s box, so a feature pooled over the box cannot tell whose marker it holds.

Chance level is the positive rate of the scored actors (the AP of a constant score).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featurestore import FeatureStore, StoreSchema, VideoFeatures
from models.heads import head_reads
from models.roi import actor_rois
from stages.data import LabelMap
from stages.train.data import KeyframeSource, SplitIndex, build_index
from stages.train.loop import TrainData, predict, train
from stages.train.recipes import HeadRecipe, build_recipe_head, probe_recipe

PROBES = ("control", "actor_actor", "actor_context", "actor_context_actor", "identity")
RELATIONAL = PROBES[1:]
# Probes outside the stage-1 table: overlapping boxes (IGMN-DAM's interfering actors).
OVERLAP = "overlap"
ALL_PROBES = (*PROBES, OVERLAP)

MARKER, OBJECT, PERSON = 0, 1, 2
CHANNELS, HEIGHT, WIDTH, ROI_T = 16, 8, 12, 2
NOISE = 0.3  # std of the map noise
MARK = 1.5  # marker amplitude inside a marked box
OBJ = 2.0  # object amplitude


@dataclass
class ProbeSplit:
    """A probe split on disk: the store and the per-actor labels / scored mask in store order."""

    store: FeatureStore
    labels: np.ndarray  # float32 [A, 1]
    scored: np.ndarray  # bool [A]


def _schema() -> StoreSchema:
    return StoreSchema(
        backbone="relational_probe",
        weights_sha256=None,
        detector_key=None,
        clip={"frames": 1, "stride": 1, "fps": None, "short_side": 64},
        context_shape=(CHANNELS, HEIGHT, WIDTH),
        pooled_dim=CHANNELS,
        roi_shape=(CHANNELS, 7, 7),
        roi_t_shape=(CHANNELS, ROI_T, 7, 7),
        dtype="float32",
    )


def _cells(lo: float, hi: float, n: int) -> slice:
    """Map cells whose centres ((k + 0.5) / n) lie in [lo, hi)."""
    first = int(np.ceil(lo * n - 0.5))
    last = int(np.ceil(hi * n - 0.5))
    return slice(max(first, 0), min(max(last, first + 1), n))


def _keyframe(
    rng: np.random.Generator, probe: str, tracks: list[dict], first: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(map [C, H, W], boxes [n, 4], labels [n], scored [n]) of one keyframe."""
    n = len(tracks)
    fmap = rng.normal(0.0, NOISE, (CHANNELS, HEIGHT, WIDTH)).astype(np.float32)
    p_mark = 0.4 if probe in ("actor_actor",) else 0.5
    p_obj = 0.35 if probe == "actor_context_actor" else 0.5
    marks = rng.random(n) < p_mark
    objs = (
        rng.random(n) < p_obj
        if probe in ("actor_context", "actor_context_actor")
        else (np.zeros(n, bool))
    )
    if probe == "identity" and first:
        marks = np.array([t["bit"] for t in tracks])
    boxes = np.zeros((n, 4), np.float32)
    for i, t in enumerate(tracks):
        slot = t["slot"]
        if probe == OVERLAP:  # two boxes sharing one or two map columns
            width = rng.uniform(0.28, 0.32)
            cx = 0.4 + 0.2 * slot + rng.uniform(-0.01, 0.01)
        else:
            width = rng.uniform(0.17, 0.24)
            cx = (slot + 0.5) / 3 + rng.uniform(-0.03, 0.03)
        y1 = rng.uniform(0.45, 0.5)
        y2 = rng.uniform(0.9, 0.95)
        boxes[i] = (cx - width / 2, y1, cx + width / 2, y2)
        xs, ys = _cells(boxes[i, 0], boxes[i, 2], WIDTH), _cells(y1, y2, HEIGHT)
        fmap[PERSON, ys, xs] += 1.0
        fmap[3:, ys, xs] += t["look"][:, None, None]
        if marks[i]:
            fmap[MARKER, ys, xs] += MARK
        if objs[i]:  # two cells above the box: rows 1..2 of 8, outside every box
            col = min(int(cx * WIDTH), WIDTH - 1)
            fmap[OBJECT, 1:3, max(col - 1, 0) : col + 1] += OBJ
    others = lambda v: np.array([v[np.arange(n) != i].any() for i in range(n)])  # noqa: E731
    scored = np.ones(n, bool)
    if probe in ("control", OVERLAP):
        labels = marks
    elif probe == "actor_actor":
        labels = others(marks)
    elif probe == "actor_context":
        labels = objs
    elif probe == "actor_context_actor":
        labels = others(objs)
    elif probe == "identity":
        labels = np.array([t["bit"] for t in tracks])
        scored[:] = not first
    else:
        raise ValueError(f"unknown probe {probe!r}; expected one of {ALL_PROBES}")
    return fmap, boxes, labels.astype(np.float32), scored


def write_probe(
    root: Path, probe: str, *, videos: int, keyframes: int = 4, seed: int = 0,
    same_look: bool = False,
) -> ProbeSplit:  # fmt: skip
    """Write a probe world of ``videos`` x ``keyframes`` keyframes (2-3 actors each) to a
    feature store at ``root``; returns it with the labels of its actors in store order."""
    rng = np.random.default_rng([seed, ALL_PROBES.index(probe)])
    store = FeatureStore.create(root, _schema(), provenance={"probe": probe, "seed": seed})
    names = [f"v{v:03d}" for v in range(videos)]
    look = np.ones(CHANNELS - 3)  # every actor's appearance with ``same_look``
    labels, scored = [], []
    for name in names:
        n = 2 if probe == OVERLAP else int(rng.integers(2, 4))
        slots = rng.permutation(2) if probe == OVERLAP else rng.permutation(3)[:n]
        tracks = [
            {
                "slot": int(s),
                "look": look if same_look else rng.normal(0, 1, CHANNELS - 3),
                "bit": rng.random() < 0.5,
            }
            for s in slots
        ]
        maps, boxes, offsets = [], [], [0]
        for k in range(keyframes):
            fmap, b, lab, sc = _keyframe(rng, probe, tracks, first=k == 0)
            maps.append(fmap)
            boxes.append(b)
            labels.append(lab)
            scored.append(sc)
            offsets.append(offsets[-1] + len(b))
        context = np.stack(maps)
        all_boxes = np.concatenate(boxes)
        counts = torch.tensor([len(b) for b in boxes])
        batch_index = torch.repeat_interleave(torch.arange(keyframes), counts)
        fm = torch.from_numpy(context)
        roi, pooled = actor_rois(
            fm, torch.from_numpy(all_boxes), batch_index, input_size=(HEIGHT, WIDTH)
        )
        roi_t = roi[:, :, None].repeat(1, 1, ROI_T, 1, 1)
        store.write_video(
            name,
            VideoFeatures(
                timestamps=np.arange(keyframes, dtype=np.int32),
                context=context,
                actor_offset=np.asarray(offsets, np.int64),
                boxes=all_boxes,
                scores=np.ones(len(all_boxes), np.float32),
                track=np.tile(np.arange(len(tracks), dtype=np.int32), keyframes),
                pooled=pooled.numpy(),
                roi=roi.numpy(),
                roi_t=roi_t.numpy(),
            ),
        )
    store.finalize(names)
    return ProbeSplit(
        store=store,
        labels=np.concatenate(labels)[:, None].astype(np.float32),
        scored=np.concatenate(scored),
    )


def probe_data(world: ProbeWorld, arrays: set[str]) -> TrainData:
    """Both splits of ``world`` preloaded, with the arrays a head reads (``arrays``)."""

    def source(split: ProbeSplit) -> KeyframeSource:
        return KeyframeSource(split.store, probe_index(split), preload=True, arrays=arrays)

    return TrainData(
        train=source(world.train), val=source(world.val), exclusive=[],
        use_roi="roi" in arrays, use_roi_t="roi_t" in arrays,
    )  # fmt: skip


def probe_index(split: ProbeSplit) -> SplitIndex:
    """The :class:`SplitIndex` of a probe store (what :func:`stages.train.data.build_index`
    builds from a GT table), labelled with the probe's labels."""
    labelmap = LabelMap(ids=np.array([1]), names=("probe",), label_types=(None,))
    index = build_index(split.store, None, labelmap)
    index.labels = split.labels
    return index


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP of one class (mean precision at each positive, ties by order)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@dataclass
class ProbeResult:
    ap: float
    chance: float
    seconds: float


@dataclass
class ProbeWorld:
    """The train and val splits of one probe."""

    probe: str
    train: ProbeSplit
    val: ProbeSplit


def probe_world(
    root: Path, probe: str, *, train_videos: int = 12, val_videos: int = 6,
    keyframes: int = 32, seed: int = 0, same_look: bool = False,
) -> ProbeWorld:  # fmt: skip
    """Write ``probe``'s train and val stores under ``root`` (val drawn from another seed)."""
    return ProbeWorld(
        probe=probe,
        train=write_probe(root / "train", probe, videos=train_videos, keyframes=keyframes,
                          seed=seed, same_look=same_look),
        val=write_probe(root / "val", probe, videos=val_videos, keyframes=keyframes,
                        seed=seed + 1000, same_look=same_look),
    )  # fmt: skip


def run_probe(
    head: str, world: ProbeWorld, ckpt_dir: Path, *, recipe: HeadRecipe | None = None,
    model: nn.Module | None = None,
) -> ProbeResult:  # fmt: skip
    """Train ``head`` (or ``model``, with ``head``'s recipe) with ``recipe`` (default: the
    head's probe-size paper recipe) on the world's train split with the project's training
    loop; its AP on the scored val actors."""
    recipe = recipe or probe_recipe(head)
    torch.manual_seed(recipe.optim.seed)
    if model is None:
        model = build_recipe_head(head, recipe, in_channels=CHANNELS, num_classes=1)
    data = probe_data(world, set(head_reads(model)))
    t0 = time.perf_counter()
    train(model, data, recipe.optim, ckpt_dir, prefetch=0)
    assert data.val is not None
    scores = predict(model, data.val, data, prefetch=0)[:, 0]
    keep = world.val.scored
    labels = world.val.labels[keep, 0]
    return ProbeResult(
        ap=average_precision(scores[keep], labels),
        chance=float(labels.mean()),
        seconds=time.perf_counter() - t0,
    )


def _scene_cues(split: ProbeSplit, probe: str) -> list[tuple[int, int]]:
    """(actors, actors carrying the probe's cue) of each actor's keyframe, in store order."""
    cues: list[tuple[int, int]] = []
    for video in split.store.videos():
        context = np.asarray(split.store.array(video, "context")[:])
        pooled = np.asarray(split.store.array(video, "pooled")[:])
        offsets = np.asarray(split.store.array(video, "actor_offset")[:])
        for k in range(len(offsets) - 1):
            n = int(offsets[k + 1] - offsets[k])
            if probe == "actor_actor":
                cue = int((pooled[offsets[k] : offsets[k + 1], MARKER] > 1.0).sum())
            else:  # objects: 2 x 2 cells each in the two rows above the boxes
                cue = int((context[k, OBJECT, 1:3] > 1.0).sum()) // 4
            cues += [(n, cue)] * n
    return cues


def scene_level_ap(world: ProbeWorld) -> float:
    """AP of the best score that knows each keyframe's actor count and how many actors
    carry the cue (marker or object) but not which one is the scored actor: the label rate
    of each (count, cues) cell on the train split, applied to val."""
    if world.probe not in ("actor_actor", "actor_context", "actor_context_actor"):
        raise ValueError(f"no scene-level cue for probe {world.probe!r}")
    rates: dict[tuple[int, int], list[float]] = {}
    train_cues = _scene_cues(world.train, world.probe)
    for cue, label in zip(train_cues, world.train.labels[:, 0], strict=True):
        rates.setdefault(cue, []).append(float(label))
    val_cues = _scene_cues(world.val, world.probe)
    scores = np.array([np.mean(rates.get(cue, [0.5])) for cue in val_cues])
    return average_precision(scores, world.val.labels[:, 0])
