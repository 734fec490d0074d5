"""Partner oracle: can the demo world's stored features teach the person-interaction classes?

Issue #21, part 3. The classes talk / listen / watch / wait are decided by *another*
person (its talk cue, whether it faces back, whether it touches the table). A relation
head must (a) find that person and (b) read its cue from the stored features. This
experiment separates the two on a demo work root's extract stage: small classifiers on the
stored pooled actor features, each given more of the relation *explicitly*:

- ``own``: the actor's pooled feature (what the linear head sees), linear and MLP;
- ``own+scene``: plus the keyframe's mean context (scene-level evidence);
- ``own+others``: plus the max and mean of the other actors' pooled features;
- ``own+partner``: plus the pooled feature of the nearest other actor and its offset
  (dx, dy in the actor's heights): the partner handed over, its perception left to the
  backbone;
- ``own+partner labels``: plus the *ground-truth* labels of that nearest actor (talk,
  touch, ... as 0/1) and its offset: the partner perceived perfectly (an upper bound of what
  a relation head could add with a perfect backbone);

all trained on the train split's GT boxes (their labels), scored on the val split's
detected boxes (labelled by IoU >= 0.5 with the GT, as the train stage does), AP per
actor. Run (prints a table)::

    PYTHONPATH=$PWD python -m tests.benchmarks.partner_oracle WORK_ROOT

``WORK_ROOT`` is a demo work root (``bankflow demo --work-root``); its world is
``WORK_ROOT/world``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.data import Dataset, DatasetConfig
from stages.evaluate.result import GROUP_OF_LABEL_TYPE
from stages.extract.stage import store_path
from stages.train.data import KeyframeSource, build_index, collate, open_split
from stages.train.stage import evaluated_labelmap
from tests.stages.relational_probes import average_precision

GROUP = "person_interaction"


def _published(work_root: Path, stage: str) -> Path:
    runs = sorted(p for p in (work_root / stage).iterdir() if (p / "COMPLETE.json").is_file())
    if len(runs) != 1:
        raise SystemExit(f"{work_root / stage}: expected one published output, got {len(runs)}")
    return runs[0]


def _split(extract_dir: Path, dataset: Dataset, labelmap, split: str):
    store = open_split(Path(store_path(extract_dir, split)))
    index = build_index(store, dataset.gt(split), labelmap, label_iou=0.5)
    source = KeyframeSource(store, index, preload=True, arrays={"pooled", "context"})
    batch = collate(source.get(np.arange(len(index))), use_roi=False, use_roi_t=False)
    return index, batch


def _features(index, batch, labels: np.ndarray) -> dict[str, np.ndarray]:
    pooled = batch.pooled.numpy()
    scene = batch.context.mean(dim=(2, 3)).numpy()[batch.batch_index.numpy()]
    boxes = index.boxes
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    height = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    n, c = pooled.shape
    others_max = np.zeros((n, c), np.float32)
    others_mean = np.zeros((n, c), np.float32)
    partner = np.zeros((n, c), np.float32)
    partner_labels = np.zeros((n, labels.shape[1]), np.float32)
    offset = np.zeros((n, 3), np.float32)  # dx/h, dy/h, has a partner
    for k in range(len(index)):
        rows = np.arange(index.actor_offset[k], index.actor_offset[k + 1])
        for i in rows:
            others = rows[rows != i]
            if not len(others):
                continue
            others_max[i] = pooled[others].max(0)
            others_mean[i] = pooled[others].mean(0)
            j = others[np.argmin(np.hypot(*(centre[others] - centre[i]).T))]
            partner[i] = pooled[j]
            partner_labels[i] = labels[j]
            offset[i] = [*((centre[j] - centre[i]) / height[i]), 1.0]
    return {
        "own": pooled,
        "own+scene": np.concatenate([pooled, scene], 1),
        "own+others": np.concatenate([pooled, others_max, others_mean], 1),
        "own+partner": np.concatenate([pooled, partner, offset], 1),
        "own+partner labels": np.concatenate([pooled, partner_labels, offset], 1),
    }


def _fit(x: np.ndarray, y: np.ndarray, hidden: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    d = x.shape[1]
    model: nn.Module = nn.Linear(d, y.shape[1])
    if hidden:
        model = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, y.shape[1])
        )
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    mean, std = xt.mean(0), xt.std(0).clamp(min=1e-3)
    model.register_buffer("mean", mean)
    model.register_buffer("std", std)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(60):
        for idx in torch.randperm(len(xt), generator=g).split(256):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model((xt[idx] - mean) / std), yt[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main(argv: list[str]) -> int:
    work_root = Path(argv[0]).resolve()
    dataset_config = DatasetConfig(root=work_root / "world")
    dataset = Dataset.open(dataset_config)
    labelmap = evaluated_labelmap(dataset, dataset_config)
    store_dir = _published(work_root, "extract")
    torch.set_num_threads(1)
    tr_index, tr_batch = _split(store_dir, dataset, labelmap, "train")
    va_index, va_batch = _split(store_dir, dataset, labelmap, "val")
    train_x = _features(tr_index, tr_batch, tr_index.labels)
    val_x = _features(va_index, va_batch, va_index.labels)
    group = [k for k, c in enumerate(labelmap.ids)
             if GROUP_OF_LABEL_TYPE.get(labelmap.label_type(int(c)) or "") == GROUP
             and va_index.labels[:, k].any()]  # fmt: skip
    names = [labelmap.names[k].split(" (")[0] for k in group]
    print(f"train actors {len(tr_index.labels)}, val actors {len(va_index.labels)}; "
          f"val positives: " + ", ".join(f"{n} {int(va_index.labels[:, k].sum())}"
                                         for n, k in zip(names, group, strict=True)))  # fmt: skip
    print("\n| input | model | " + " | ".join(names) + " | group mean |")
    print("|---" * (len(names) + 3) + "|")
    runs = [("own", 0), *((name, 128) for name in train_x)]
    for name, hidden in runs:
        model = _fit(train_x[name], tr_index.labels, hidden)
        with torch.no_grad():
            xv = torch.from_numpy(val_x[name]).float()
            scores = model((xv - model.mean) / model.std).numpy()
        aps = [average_precision(scores[:, k], va_index.labels[:, k]) for k in group]
        kind = "linear" if hidden == 0 else f"MLP {hidden}"
        print(f"| {name} | {kind} | " + " | ".join(f"{ap:.3f}" for ap in aps)
              + f" | {np.mean(aps):.3f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
