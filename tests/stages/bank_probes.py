"""Relational probes for the stage-2 heads: a long-term bank dumped from a probe store and a
bank head trained on its windows (issue #21, the identity probe of IGMN's memory).

The probe worlds are ``tests/stages/relational_probes.py``'s; this adds what the bank
stage does on them, with the project's own code:

- the bank: :func:`stages.train.dump.dump_video` (a stage-1 head over every keyframe of a
  video, :func:`models.heads.bank_features.bank_rows`) and
  :func:`stages.train.dump.write_bank_video` into a real (zarr)
  :class:`featurestore.banks.BankStore`, rows aligned with the store's actors, the store's
  track ids copied in: what the dump stage writes per video;
- the windows: :func:`stages.train.bank.bank_attach` (alignment check, then
  :class:`stages.train.window.BankWindowReader` with a :class:`WindowConfig`) as the
  loop's ``attach`` hook, as the train_bank stage sets it;
- the head: built by :func:`models.heads.contract.build_from_data` from the bank's array
  shapes (``bank_dim``), optionally started from the stage-1 head
  (``init_from_stage1``), trained by :func:`stages.train.loop.train` and predicted by
  :func:`stages.train.loop.predict` (which reads the windows through the same hook).

The identity probe's label is whether the actor's track was marked at the video's first
keyframe (timestamp 0), so a window must reach back to timestamp 0 from every scored
keyframe: ``before`` >= the video's last timestamp (the probe's timestamps are whole
seconds 0, 1, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featurestore.banks import BankStore, feature_video_digest
from models.heads.contract import HeadData, build_from_data, head_reads
from stages.train.bank import bank_attach
from stages.train.config import WindowConfig
from stages.train.dump import dump_video, row_shapes, write_bank_video
from stages.train.loop import predict, train
from stages.train.optim import OptimConfig
from stages.train.recipes import scaled_recipe
from tests.stages.relational_probes import (
    CHANNELS,
    MARKER,
    ProbeResult,
    ProbeSplit,
    ProbeWorld,
    average_precision,
    probe_data,
    probe_index,
)

# Widths of the stage-2 heads at probe size (a 16-channel store), depths as the papers.
BANK_PROBE_WIDTHS = {
    "igmn": {"hidden_dim": 64, "memory_dim": 64, "attention_hidden": 32, "fuse_hidden": 64},
    "lfb": {"hidden_dim": 64},
}
# The stage-1 head each stage-2 head's bank is dumped from, and the bank's kind.
BANK_SOURCE = {"igmn": ("igmn_dam", "identity"), "lfb": ("linear", "lfb")}


def dump_probe_bank(split: ProbeSplit, stage1: nn.Module, kind: str, root: Path) -> BankStore:
    """Dump bank ``kind`` of ``stage1`` over every video of ``split``'s store to ``root``
    (the dump stage's per-video path: ``dump_video`` then ``write_bank_video``)."""
    store = split.store
    videos = store.videos()
    bank: BankStore | None = None
    for video_id in videos:
        t0 = time.perf_counter()
        rows, _ = dump_video(stage1, kind, store, video_id, batch_keyframes=32)
        if bank is None:
            bank = BankStore.create(
                root, kind=kind, arrays=row_shapes(rows),
                provenance={"probe": "bank", "kind": kind}, expected_videos=videos,
            )  # fmt: skip
        write_bank_video(
            bank, store, video_id, rows,
            video_key=feature_video_digest(store.zarr_store, video_id)[:32],
            seconds=time.perf_counter() - t0,
        )  # fmt: skip
    assert bank is not None, "a probe split has videos"
    bank.finalize()
    return bank


def bank_window(keyframes: int) -> WindowConfig:
    """A window around each keyframe that reaches the video's first keyframe from its last
    (``before`` = keyframes - 1 s) and sees the rest of the video too (``after``)."""
    span = float(max(keyframes - 1, 1))
    return WindowConfig(before=span, after=span)


def stage2_optim(head: str, recipe: str, *, epochs: int = 20) -> OptimConfig:
    """``recipe`` = "paper": IGMN §4.1 (SGD 0.003 @ 12, wd 5e-4, ×0.1 at 93k/120k of 140k it,
    the igmn_dam recipe, the same paper's training) scaled to 32 keyframes per step; "adamw":
    the loop's default AdamW 1e-3. LFB's own recipe is not among the recipes: "paper" for
    lfb runs the SlowFast AVA recipe its stage-1 linear head trains with."""
    if recipe == "adamw":
        return OptimConfig(epochs=epochs, batch_keyframes=32)
    if recipe != "paper":
        raise ValueError(f"recipe must be 'paper' or 'adamw', got {recipe!r}")
    paper = {"igmn": "igmn_dam", "lfb": "linear"}[head]
    return scaled_recipe(paper, batch_keyframes=32, epochs=epochs).optim


@dataclass
class BankProbeResult(ProbeResult):
    """A probe result with the val scores (store order, every actor) and the AP of the
    trained head on its own train split (how well it fits what it was trained on)."""

    scores: np.ndarray
    train_ap: float


@dataclass
class BankProbe:
    """A world with the banks dumped for one stage-2 head."""

    world: ProbeWorld
    train_bank: BankStore
    val_bank: BankStore
    stage1: nn.Module


def dump_world_banks(world: ProbeWorld, stage1: nn.Module, kind: str, root: Path) -> BankProbe:
    """The train and val banks of ``kind`` dumped from ``stage1`` under ``root``."""
    return BankProbe(
        world=world,
        train_bank=dump_probe_bank(world.train, stage1, kind, root / "train.zarr"),
        val_bank=dump_probe_bank(world.val, stage1, kind, root / "val.zarr"),
        stage1=stage1,
    )


def run_bank_probe(
    head: str, probe: BankProbe, ckpt_dir: Path, *, optim: OptimConfig,
    window: WindowConfig, init_stage1: bool = False, seed: int = 0,
) -> BankProbeResult:  # fmt: skip
    """Train stage-2 ``head`` on the probe's train bank windows; its AP on the scored val
    actors (chance = their positive rate)."""
    torch.manual_seed(seed)
    data_info = HeadData(in_channels=CHANNELS, num_classes=1, bank_arrays=probe.train_bank.arrays)
    model, _ = build_from_data(head, data_info, BANK_PROBE_WIDTHS[head])
    if init_stage1:
        init = model.init_from_stage1
        assert init is not None, head
        init(probe.stage1.state_dict())
    world = probe.world
    data = probe_data(world, set(head_reads(model)))
    assert data.val is not None
    data.attach = bank_attach(
        [(data.train, probe.train_bank), (data.val, probe.val_bank)], window, preload=True
    )
    t0 = time.perf_counter()
    train(model, data, optim, ckpt_dir, prefetch=0)
    scores = predict(model, data.val, data, prefetch=0)[:, 0]
    keep = world.val.scored
    labels = world.val.labels[keep, 0]
    seconds = time.perf_counter() - t0
    fit = predict(model, data.train, data, prefetch=0)[:, 0]
    fitted = world.train.scored
    return BankProbeResult(
        ap=average_precision(scores[keep], labels),
        chance=float(labels.mean()),
        seconds=seconds,
        scores=scores,
        train_ap=average_precision(fit[fitted], world.train.labels[fitted, 0]),
    )


def ap_by_timestamp(split: ProbeSplit, scores: np.ndarray) -> dict[int, tuple[float, float]]:
    """(AP, chance) of the scored actors of each keyframe timestamp of ``split``."""
    index = probe_index(split)
    stamps = np.repeat(index.timestamp, np.diff(index.actor_offset))
    out = {}
    for t in np.unique(stamps[split.scored]).tolist():
        keep = split.scored & (stamps == t)
        labels = split.labels[keep, 0]
        out[int(t)] = (average_precision(scores[keep], labels), float(labels.mean()))
    return out


def first_keyframe_oracle_ap(probe: BankProbe) -> float:
    """AP of reading the bank itself: the marker channel of the actor's own track's row at
    the video's first keyframe (what an identity-aware memory can reach; 1.0 if the bank
    holds the cue)."""
    scores = []
    bank, split = probe.val_bank, probe.world.val
    for video_id in split.store.videos():
        _, offsets, track = bank.index(video_id)
        features = bank.read_video(video_id)["features"]
        first = dict(zip(track[: offsets[1]].tolist(), features[: offsets[1], MARKER], strict=True))
        scores += [first[int(t)] for t in track]
    keep = split.scored
    return average_precision(np.asarray(scores)[keep], split.labels[keep, 0])
