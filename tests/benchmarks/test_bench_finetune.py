"""Does the finetune stage make features carry signal? Run: pytest -m bench -s.

On the default demo world with the demo's backbone it times the stage (per epoch, loss
curve), then fits the same linear probe (multi-label logistic regression) on pooled
actor features of the train split from the fine-tuned and from the random-init backbone,
and scores both on the held-out val split: pose top-1 accuracy and mean per-class AP.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import build_backbone
from models.losses import ava_scores
from models.roi import actor_rois
from stages.data import DataError, Dataset, DatasetConfig
from stages.evaluate.ap import precision_recall, rank_by_score, voc_ap
from stages.extract.finetune import (
    HEAD_FILE,
    STAGE,
    ClipSupply,
    FinetuneConfig,
    FinetuneStageConfig,
    gt_actor_index,
)
from stages.extract.stage import WEIGHTS_FILE, ExtractConfig
from stages.framework import run_stage
from stages.world import WorldConfig, build_world

DEMO_BACKBONE = {"width": 16, "depths": [1, 1, 1, 1], "alpha": 4, "t_slow": 4}
DEMO_EXTRACT = ExtractConfig(
    backbone="slowfast_tiny", backbone_kwargs=DEMO_BACKBONE, num_frames=16, frame_stride=1,
    short_side=None, device="cpu",
)  # fmt: skip
DEMO_FINETUNE = FinetuneConfig(
    epochs=3, batch_keyframes=8, lr=2e-3, weight_decay=1e-2, num_threads=1
)


def pooled_features(model, dataset, split, cap, seed):
    """(pooled [A, C], labels [A, K]) of the GT persons of up to ``cap`` keyframes."""
    index = gt_actor_index(dataset.gt(split), dataset.labelmap)
    rows = np.arange(len(index))
    if cap < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), cap, replace=False))
    supply = ClipSupply(dataset, index, rows, DEMO_EXTRACT, FinetuneConfig(clip_cache="stream"))
    mean = torch.tensor(DEMO_EXTRACT.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(DEMO_EXTRACT.std).view(1, 3, 1, 1, 1)
    feats, labels = [], []
    with torch.inference_mode():
        for batch in supply.epoch(0):
            for s in batch:
                x = torch.from_numpy(s.clip).permute(3, 0, 1, 2)[None].float() / 255.0
                fmap = model((x - mean) / std)
                boxes = torch.from_numpy(s.boxes)
                _, pooled = actor_rois(
                    fmap, boxes, torch.zeros(len(boxes), dtype=torch.long),
                    input_size=tuple(s.clip.shape[1:3]),
                )  # fmt: skip
                feats.append(pooled)
                labels.append(torch.from_numpy(s.labels))
    return torch.cat(feats), torch.cat(labels)


def linear_probe(train, val, exclusive):
    """Fit a standardized logistic-regression probe on train; (top1, mAP) on val."""
    (xt, yt), (xv, yv) = train, val
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    torch.manual_seed(0)
    probe = torch.nn.Linear(xt.shape[1], yt.shape[1])
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = ava_scores(probe(xv), exclusive).numpy()
    return score(scores, yv, exclusive)


def score(scores, labels, exclusive):
    """(pose top-1 accuracy, mean per-class AP) of actor scores [A, K] against labels."""
    y = labels.numpy().astype(bool)
    aps = []
    for c in range(y.shape[1]):
        if y[:, c].any():
            order = rank_by_score(scores[:, c])
            aps.append(voc_ap(*precision_recall(y[order, c], int(y[:, c].sum()))))
    pose = y[:, exclusive]
    has = pose.any(1)
    top = scores[:, exclusive][has].argmax(1)
    return float(pose[has][np.arange(has.sum()), top].mean()), float(np.mean(aps))


@pytest.mark.bench
def test_bench_finetune_demo_world(tmp_path: Path) -> None:
    world = tmp_path / "world"
    build_world(world, WorldConfig())
    try:
        Dataset.open(DatasetConfig(root=world)).labelmap  # noqa: B018
    except DataError:  # the generator's dataset.yaml may carry keys the reader rejects
        (world / "dataset.yaml").write_text("timestamp_offset: 900\n")
    config = FinetuneStageConfig(
        dataset=DatasetConfig(root=world), dataset_fingerprint="bench",
        finetune=DEMO_FINETUNE, extract=DEMO_EXTRACT,
    )  # fmt: skip
    t0 = time.perf_counter()
    ref = run_stage(STAGE, config, {}, tmp_path / "work")
    print(f"\nfinetune on {os.cpu_count()} cores: {time.perf_counter() - t0:.1f} s total")
    for e in ref.summary["epochs"]:
        print(
            f"  epoch {e['epoch']}: loss {e['loss']:.3f} (first step {e['first_step_loss']:.3f}, "
            f"last {e['last_step_loss']:.3f}), train top-1 {e['train_top1']:.3f}, "
            f"{e['seconds']:.1f} s"
        )
    dataset = Dataset.open(config.dataset)
    exclusive = [dataset.labelmap.index_of(int(i)) for i in dataset.exclusive_ids]
    torch.set_num_threads(1)
    results = {}
    for name, weights in (("random init", None), ("finetuned", ref.path / WEIGHTS_FILE)):
        torch.manual_seed(DEMO_EXTRACT.seed)  # extract's random init for weights=None
        kwargs = {} if weights is None else {"weights": str(weights)}
        model = build_backbone("slowfast_tiny", **DEMO_BACKBONE, **kwargs).eval()
        train = pooled_features(model, dataset, "train", 10_000, seed=1)
        val = pooled_features(model, dataset, "val", 10_000, seed=1)
        results[name] = linear_probe(train, val, exclusive)
        if weights is not None:  # the stage's own head on the held-out split
            head = torch.load(ref.path / HEAD_FILE, weights_only=True)
            with torch.no_grad():
                logits = val[0] @ head["classifier.weight"].T + head["classifier.bias"]
            top1, m_ap = score(ava_scores(logits, exclusive).numpy(), val[1], exclusive)
            print(f"  finetuned backbone + its head: val pose top-1 {top1:.3f}, val mAP {m_ap:.3f}")
        print(f"  probe ({name}): val pose top-1 {results[name][0]:.3f}, "
              f"val mAP {results[name][1]:.3f}")  # fmt: skip
    assert ref.summary["loss_last_epoch"] < ref.summary["loss_first_epoch"]
    assert results["finetuned"][0] > results["random init"][0]
    assert results["finetuned"][1] > results["random init"][1]
    shutil.rmtree(tmp_path / "work", ignore_errors=True)
