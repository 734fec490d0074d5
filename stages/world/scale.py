"""A features-only world at AVA's cardinality × F, for dry runs of every stage after extract.

``bankflow world --features-only --scale F OUT`` writes, streaming one video at a time:

* ``OUT/world``: an AVA-format dataset (label map of AVA's 60 evaluated class ids, train/val
  GT, person proposals, empty excluded lists, ``dataset.yaml``). ``videos/`` holds one
  *empty* file per video: preflight checks that every named video has a file; no stage
  decodes them, because the extract output is pre-seeded (below).
* ``OUT/scale.yaml``: a pipeline config (stage-1 linear and ACAR heads, LFB and ACFB
  dumps, a stage-2 LFB head with 60-s windows, cRT, an ensemble of 3 models, evaluate,
  report). ``bankflow run --config OUT/scale.yaml --work-root OUT/work`` continues at train.
* ``OUT/work``: the work root. detect (from the proposals) and track run as real stages;
  the extract output is published by the framework (``stages.framework.run_stage``) at
  the key the real extract stage has for ``scale.yaml``, with a compute that writes the
  feature store through ``featurestore.FeatureStore`` (the extract stage's own writer)
  from random fp16 features instead of a backbone. Every reader and ``bankflow status``
  see a normal cached extract output (its summary says ``synthetic: true``).

Cardinality (AVA v2.2, docs/findings.md "AVA scale"): 235 train and 64 val videos, one
keyframe per second at timestamps 902..1798; F scales the number of videos (and, below
one video, its length). Persons per keyframe follow ``PERSONS_P`` (1-3 persons on ~85 % of
keyframes, a tail to 10), each person has one pose label and a Poisson number of other
labels drawn from a Zipf law over the remaining classes (AVA's long tail). Proposals are
the GT boxes with jitter and misses plus low-score false positives. Features carry no
signal: mAPs are at chance, the point is cost, not accuracy.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# AVA v2.2 (Gu et al., CVPR 2018; the v2.2 release): videos per split, keyframe seconds.
AVA_TRAIN_VIDEOS = 235
AVA_VAL_VIDEOS = 64
AVA_FIRST_TS = 902
AVA_LAST_TS = 1798
AVA_KEYFRAMES_PER_VIDEO = AVA_LAST_TS - AVA_FIRST_TS + 1
# The 60 evaluated class ids of AVA v2.x (ava_action_list_v2.2_for_activitynet_2019.pbtxt).
AVA_EVAL_IDS = (
    1,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    17,
    20,
    22,
    24,
    26,
    27,
    28,
    29,
    30,
    34,
    36,
    37,
    38,
    41,
    43,
    45,
    46,
    47,
    48,
    49,
    51,
    52,
    54,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    66,
    67,
    68,
    69,
    70,
    72,
    73,
    74,
    76,
    77,
    78,
    79,
    80,
)
POSE_IDS = (1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)  # PERSON_MOVEMENT: one per person
# Pose frequencies (stand, sit, walk dominate, as in AVA); the rest share the remainder.
_POSE_WEIGHTS = {12: 0.50, 11: 0.28, 14: 0.10, 8: 0.03, 1: 0.02, 10: 0.02}
# Persons per annotated keyframe, n = 1..10 (AVA's is dominated by 1-3 persons).
PERSONS_P = np.array([0.40, 0.28, 0.16, 0.07, 0.04, 0.02, 0.012, 0.008, 0.006, 0.004])
OTHER_LABELS_MEAN = 1.2  # non-pose labels per person (Poisson)
ZIPF_EXPONENT = 1.1  # long tail of the non-pose classes
PROPOSAL_MISS = 0.05
FALSE_POSITIVES_PER_KEYFRAME = 0.5
POOLED_DIM = 2304  # SlowFast R50 (2048 slow + 256 fast channels)
NOISE_POOL = 1 << 18  # fp16 values the features are cut from (``_noise``)
TRACK_SECTION = {"boxes": {"train": "gt", "val": "detections"}}


@dataclass(frozen=True)
class ScaleWorldConfig:
    """What decides a scale world. ``context_grid``: side of the stored pooled context map
    (1 = the globally pooled map); ``context_channels``: its channels (None = pooled_dim)."""

    scale: float
    seed: int = 0
    context_grid: int = 4
    context_channels: int | None = None
    pooled_dim: int = POOLED_DIM

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 4:
            raise ValueError(f"--scale must be in (0, 4], got {self.scale}")
        if self.context_grid < 1 or self.pooled_dim < 1:
            raise ValueError("context_grid and pooled_dim must be >= 1")

    def split_shape(self, split: str) -> tuple[int, int]:
        """(videos, keyframes per video) of a split at this scale."""
        full = AVA_TRAIN_VIDEOS if split == "train" else AVA_VAL_VIDEOS
        keyframes = full * AVA_KEYFRAMES_PER_VIDEO * self.scale
        videos = max(1, math.ceil(full * self.scale - 1e-9))
        return videos, max(2, min(AVA_KEYFRAMES_PER_VIDEO, round(keyframes / videos)))


def video_ids(split: str, n: int) -> list[str]:
    return [f"{split}_{i:04d}" for i in range(n)]


def labelmap_text() -> str:
    blocks = []
    for cid in AVA_EVAL_IDS:
        kind = "PERSON_MOVEMENT" if cid in POSE_IDS else "PERSON_INTERACTION"
        blocks.append(
            f'label {{\n  name: "ava_{cid}"\n  label_id: {cid}\n  label_type: {kind}\n}}\n'
        )
    return "".join(blocks)


def _label_probs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pose = np.array(POSE_IDS)
    rest = 1.0 - sum(_POSE_WEIGHTS.values())
    others_n = len(pose) - len(_POSE_WEIGHTS)
    pose_p = np.array([_POSE_WEIGHTS.get(int(c), rest / others_n) for c in pose])
    other = np.array([c for c in AVA_EVAL_IDS if c not in POSE_IDS])
    other_p = 1.0 / np.arange(1, len(other) + 1) ** ZIPF_EXPONENT
    return pose, pose_p / pose_p.sum(), other, other_p / other_p.sum()


def _fmt_rows(video: str, ts: np.ndarray, boxes: np.ndarray, last: list[str]) -> str:
    b = np.round(boxes, 3)
    return "".join(
        f"{video},{t:04d},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{tail}\n"
        for t, (x1, y1, x2, y2), tail in zip(ts.tolist(), b.tolist(), last, strict=True)
    )


def _video_annotations(
    rng: np.random.Generator, video: str, n_kf: int
) -> tuple[str, str, int, int]:
    """GT and proposal CSV text of one video; (gt text, proposals text, keyframes, boxes)."""
    ts = np.arange(AVA_FIRST_TS, AVA_FIRST_TS + n_kf)
    counts = rng.choice(np.arange(1, len(PERSONS_P) + 1), size=n_kf, p=PERSONS_P)
    kf = np.repeat(np.arange(n_kf), counts)
    person = np.concatenate([np.arange(c) for c in counts]) if n_kf else np.zeros(0, int)
    # Person p of a video sits in a slot of its own that drifts slowly: tracks link.
    n_people = int(counts.max())
    cx0, cy0 = rng.uniform(0.15, 0.85, n_people), rng.uniform(0.35, 0.65, n_people)
    drift = 0.05 * np.sin(kf / 30.0 + person)
    cx = np.clip(cx0[person] + drift, 0.1, 0.9)
    cy = np.clip(cy0[person], 0.3, 0.7)
    w, h = 0.12 + 0.04 * np.cos(person), 0.5 + 0.05 * np.sin(person)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clip(0, 1)
    pose, pose_p, other, other_p = _label_probs()
    n_box = len(kf)
    actions = [rng.choice(pose, size=n_box, p=pose_p)]
    owner = [np.arange(n_box)]
    n_other = rng.poisson(OTHER_LABELS_MEAN, n_box)
    extra_owner = np.repeat(np.arange(n_box), n_other)
    extra = rng.choice(other, size=len(extra_owner), p=other_p)
    pairs = (
        np.unique(np.stack([extra_owner, extra], 1), axis=0)
        if len(extra)
        else np.zeros((0, 2), int)
    )
    actions.append(pairs[:, 1])
    owner.append(pairs[:, 0])
    a, o = np.concatenate(actions), np.concatenate(owner)
    order = np.lexsort((a, o))
    a, o = a[order], o[order]
    gt = _fmt_rows(
        video,
        ts[kf[o]],
        boxes[o],
        [f"{x},{p}" for x, p in zip(a.tolist(), person[o].tolist(), strict=True)],
    )
    # Proposals: kept GT boxes jittered, plus false positives with low scores.
    keep = rng.random(n_box) >= PROPOSAL_MISS
    side = np.stack([w, h, w, h], 1)[keep]
    det = (boxes[keep] + rng.normal(0, 0.03, (int(keep.sum()), 4)) * side).clip(0, 1)
    det_kf, det_score = kf[keep], rng.uniform(0.7, 1.0, int(keep.sum()))
    n_fp = rng.poisson(FALSE_POSITIVES_PER_KEYFRAME, n_kf)
    fp_kf = np.repeat(np.arange(n_kf), n_fp)
    xy = rng.uniform(0.0, 0.7, (len(fp_kf), 2))
    fp = np.concatenate([xy, xy + rng.uniform(0.1, 0.3, (len(fp_kf), 2))], 1).clip(0, 1)
    det = np.concatenate([det, fp])
    det_kf = np.concatenate([det_kf, fp_kf])
    det_score = np.concatenate([det_score, rng.uniform(0.2, 0.6, len(fp_kf))])
    x1, x2 = np.minimum(det[:, 0], det[:, 2]), np.maximum(det[:, 0], det[:, 2]) + 1e-3
    y1, y2 = np.minimum(det[:, 1], det[:, 3]), np.maximum(det[:, 1], det[:, 3]) + 1e-3
    det = np.stack([x1, y1, x2, y2], 1).clip(0, 1)
    order = np.argsort(det_kf, kind="stable")
    props = _fmt_rows(
        video, ts[det_kf[order]], det[order], [f",{s:.3f}" for s in det_score[order].tolist()]
    )
    return gt, props, n_kf, n_box


def write_dataset(root: Path, cfg: ScaleWorldConfig) -> dict[str, Any]:
    """The AVA-format dataset of a scale world, one video at a time (bounded memory)."""
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (root / "videos").mkdir(exist_ok=True)
    (ann / "action_list.pbtxt").write_text(labelmap_text())
    doc = {
        "timestamp_offset": 0,
        "videos_dir": "videos",
        "annotations_dir": "annotations",
        "labelmap": "action_list.pbtxt",
        "exclusive_classes": list(POSE_IDS),
        "splits": {
            s: {
                "gt": f"{s}.csv",
                "proposals": f"person_boxes_{s}.csv",
                "excluded": f"excluded_timestamps_{s}.csv",
            }
            for s in ("train", "val")
        },
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    counts: dict[str, Any] = {}
    for split_i, split in enumerate(("train", "val")):
        n_videos, n_kf = cfg.split_shape(split)
        (ann / f"excluded_timestamps_{split}.csv").write_text("")
        kfs = boxes = 0
        with (
            (ann / f"{split}.csv").open("w") as gt_f,
            (ann / f"person_boxes_{split}.csv").open("w") as p_f,
        ):
            for i, vid in enumerate(video_ids(split, n_videos)):
                rng = np.random.default_rng([cfg.seed, split_i, i])
                gt, props, k, b = _video_annotations(rng, vid, n_kf)
                gt_f.write(gt)
                p_f.write(props)
                (root / "videos" / f"{vid}.mp4").touch()  # placeholder: never decoded
                kfs, boxes = kfs + k, boxes + b
        counts[split] = {"videos": n_videos, "keyframes": kfs, "gt_boxes": boxes}
    return counts


def pipeline_config(cfg: ScaleWorldConfig, dataset_root: Path) -> dict[str, Any]:
    """The pipeline config of a scale world (what ``scale.yaml`` holds)."""
    g = cfg.context_grid
    window = {"before": 30, "after": 30, "max_per_second": 2}  # 60-s windows (LFB)
    return {
        "name": f"scale_{cfg.scale:g}",
        "dataset": {"root": str(dataset_root.resolve())},
        "world": None,
        "detect": {"source": "proposals", "min_score": 0.2},
        "track": TRACK_SECTION,
        "extract": {"backbone": "slowfast_r50", "context_grid": [g, g], "device": "cpu"},
        "train": {
            "runs": {
                "linear": {"head": "linear", "optim": {"epochs": 1, "batch_keyframes": 16}},
                "acar": {
                    "head": "acar",
                    "head_kwargs": {"reduce_dim": 64, "dim": 32},
                    "optim": {"epochs": 1, "batch_keyframes": 16},
                },
            }
        },
        "dump": {
            "banks": {
                "lfb": {"from": "linear", "kind": "lfb"},
                "acfb": {"from": "acar", "kind": "acfb"},
            }
        },
        "train_bank": {
            "runs": {
                "lfb": {
                    "head": "lfb",
                    "bank": "lfb",
                    "head_kwargs": {"fbo": "avg", "hidden_dim": 64},
                    "window": window,
                    "optim": {"epochs": 1, "batch_keyframes": 16},
                }
            }
        },
        "evaluate": {"split": "val"},
        "rebalance": {"models": ["linear"], "epochs": 1},
        "ensemble": {"runs": {"all": {"members": ["linear", "linear_crt", "lfb"]}}},
        "report": {"title": f"scale world F={cfg.scale:g}"},
    }


def _noise(pool: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` fp16 N(0, 1) values: the pool from a random offset, repeated (a copy at memcpy
    speed; drawing fresh normals costs more than writing them)."""
    start = int(rng.integers(len(pool)))
    return np.resize(np.roll(pool, -start) if start else pool, n)


def _write_store_compute(cfg: ScaleWorldConfig):
    """The compute of the pre-seeded extract output: the store from random features."""

    def compute(ctx) -> dict[str, Any]:
        from featurestore import FeatureStore, VideoFeatures
        from stages.detect.track import read_actors
        from stages.extract.stage import store_path
        from stages.extract.video import build_schema

        ex = ctx.config.extract
        channels = cfg.context_channels or cfg.pooled_dim
        schema = build_schema(
            ex,
            (cfg.pooled_dim, cfg.context_grid, cfg.context_grid),
            None,
            None,
            ctx.inputs["detect"].key,
        )
        if channels != cfg.pooled_dim:
            from dataclasses import replace

            schema = replace(schema, context_shape=(channels, cfg.context_grid, cfg.context_grid))
        summary: dict[str, Any] = {}
        pool = np.random.default_rng(cfg.seed).standard_normal(NOISE_POOL, np.float32)
        pool = pool.astype(np.float16)
        for split_i, split in enumerate(ex.splits):
            actors = read_actors(ctx.input("track").uri, split)
            video = actors["video"].to_numpy(zero_copy_only=False).astype(str)
            names, starts = np.unique(video, return_index=True)
            ends = np.r_[starts[1:], len(video)] if len(starts) else starts
            order = np.argsort(starts)
            store = FeatureStore.create(
                store_path(ctx.staging, split),
                schema,
                provenance={"synthetic": True, "scale": cfg.scale},
                expected_videos=list(names),
            )
            n_kf = n_act = 0
            for i in order:
                rows = slice(int(starts[i]), int(ends[i]))
                ts = actors["timestamp"].slice(rows.start, rows.stop - rows.start).to_numpy()
                part = actors.slice(rows.start, rows.stop - rows.start)
                uniq, per = np.unique(ts, return_counts=True)
                rng = np.random.default_rng([cfg.seed, 7, split_i, int(i)])
                n = len(ts)
                ctx_n = len(uniq) * int(np.prod(schema.context_shape))
                boxes = np.stack([part[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], 1)
                feats = VideoFeatures(
                    timestamps=uniq.astype(np.int32),
                    context=_noise(pool, rng, ctx_n).reshape(len(uniq), *schema.context_shape),
                    actor_offset=np.r_[0, np.cumsum(per)].astype(np.int64),
                    boxes=boxes.astype(np.float32),
                    scores=part["score"].to_numpy().astype(np.float32),
                    track=part["track"].to_numpy().astype(np.int32),
                    pooled=_noise(pool, rng, n * cfg.pooled_dim).reshape(n, cfg.pooled_dim),
                )
                store.write_video(str(names[i]), feats, provenance={"synthetic": True})
                n_kf, n_act = n_kf + len(uniq), n_act + n
            store.finalize()
            summary[split] = {
                "videos": len(names),
                "keyframes": n_kf,
                "actors": n_act,
                "bytes": store.nbytes(),
                "synthetic": True,
                "context_shape": list(schema.context_shape),
            }
        return summary

    return compute


def build_scale_world(out: Path, cfg: ScaleWorldConfig) -> dict[str, Any]:
    """Dataset, config and work root (detect, track run; extract pre-seeded) under ``out``."""
    from stages.config import load_config
    from stages.extract import stage as extract
    from stages.framework import Stage, run_stage
    from stages.pipeline import PipelineRun, dataset_section, prepare_dataset, run_pipeline

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = write_dataset(out / "world", cfg)
    config_path = out / "scale.yaml"
    config_path.write_text(yaml.safe_dump(pipeline_config(cfg, out / "world"), sort_keys=False))
    config = load_config(config_path, [])
    work = out / "work"
    run = PipelineRun(config=config, work_root=work, until="track", with_cache=False)
    run_pipeline(run, write=False)
    dataset, fingerprint = prepare_dataset(config)
    section = dataset_section(config, dataset, fingerprint)
    stage = Stage(
        name="extract",
        code_version=extract.STAGE.code_version,
        config_type=extract.ExtractStageConfig,
        compute=_write_store_compute(cfg),
        resumable=False,
    )
    ref = run_stage(
        stage,
        section(extract.ExtractStageConfig, "extract"),
        {"track": run.refs["track"], "detect": run.refs["detect"]},
        work,
    )
    return {
        "scale": cfg.scale,
        "dataset": counts,
        "store": ref.summary,
        "config": str(config_path),
        "work_root": str(work),
        "extract_uri": ref.uri,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
