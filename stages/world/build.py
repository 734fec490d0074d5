"""Build a synthetic AVA-format dataset: videos, GT, proposals, label map, configs.

Layout written under ``out_dir``::

    videos/<video_id>.mp4
    annotations/{train,val}.csv                       GT (AVA 8 columns)
    annotations/action_list.pbtxt
    annotations/excluded_timestamps_{train,val}.csv
    annotations/person_boxes_{train,val}.csv          noisy proposals with scores
    dataset.yaml
    world.json                                        written last: marks completion
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.world import files
from stages.world.config import WorldConfig
from stages.world.labels import Annotated, annotate_keyframe
from stages.world.proposals import noisy_proposals
from stages.world.stories import SCENARIOS, compose_scene
from stages.world.video import scene_frames, write_mp4

SPLITS = ("train", "val")


@dataclass(frozen=True)
class SplitSummary:
    """Counts for one split (GT counts leave out excluded keyframes)."""

    n_videos: int
    n_keyframes: int
    n_gt_boxes: int  # annotated (keyframe, person) pairs
    n_gt_rows: int  # (keyframe, person, action) rows
    n_proposals: int
    n_excluded: int
    class_counts: dict[int, int]


@dataclass(frozen=True)
class WorldSummary:
    """Where the world's files are and what they hold."""

    root: Path
    videos_dir: Path
    label_map: Path
    dataset_yaml: Path
    world_json: Path
    gt: dict[str, Path]
    proposals: dict[str, Path]
    excluded: dict[str, Path]
    video_ids: dict[str, list[str]]
    splits: dict[str, SplitSummary] = field(default_factory=dict)

    @property
    def n_videos(self) -> dict[str, int]:
        return {s: v.n_videos for s, v in self.splits.items()}

    @property
    def n_keyframes(self) -> dict[str, int]:
        return {s: v.n_keyframes for s, v in self.splits.items()}

    @property
    def n_gt_boxes(self) -> dict[str, int]:
        return {s: v.n_gt_boxes for s, v in self.splits.items()}

    @property
    def class_counts(self) -> dict[str, dict[int, int]]:
        return {s: v.class_counts for s, v in self.splits.items()}

    def class_table(self) -> str:
        """Fixed-width class table: id, name, label type, evidence, train and val counts."""
        return files.class_table_text(files.class_rows(self.class_counts))


@dataclass
class _VideoResult:
    video_id: str
    split: str
    scenario: str
    waiting: bool
    n_frames: int
    n_persons: int
    keyframes: list[tuple[int, list[Annotated]]]  # (timestamp, persons)


def _plan(cfg: WorldConfig, split_index: int, i: int) -> tuple[str, bool]:
    """What happens in video ``i`` of a split: the first two videos of every split get the
    rare long-term stories so that both splits contain them."""
    if i == 0:
        return "return", True
    if i == 1:
        return "bring", True
    rng = np.random.default_rng([cfg.seed, split_index, i, 7])
    r, b = cfg.return_story_prob, cfg.bring_story_prob
    p = [r, b, max(0.0, 1.0 - r - b)]
    scenario = str(rng.choice(SCENARIOS, p=np.asarray(p) / sum(p)))
    return scenario, bool(rng.random() < cfg.wait_story_prob)


def _make_video(cfg: WorldConfig, split_index: int, i: int, videos_dir: Path) -> _VideoResult:
    split = SPLITS[split_index]
    video_id = f"w{cfg.seed}_{split}_{i:02d}"
    scenario, waiting = _plan(cfg, split_index, i)
    scene = compose_scene(cfg, np.random.default_rng([cfg.seed, split_index, i]), scenario, waiting)
    n = write_mp4(videos_dir / f"{video_id}.mp4", scene_frames(scene, cfg.fps), cfg.fps, cfg.crf)
    keyframes = []
    for sec in cfg.keyframe_seconds:
        f = min(sec * cfg.fps, n - 1)
        people = annotate_keyframe(scene, f, cfg.fps, cfg.width, cfg.height)
        keyframes.append((cfg.timestamp_offset + sec, people))
    return _VideoResult(video_id, split, scenario, waiting, n, len(scene.tracks), keyframes)


def _norm(box: tuple[float, float, float, float], w: int, h: int) -> tuple[float, ...]:
    return (box[0] / w, box[1] / h, box[2] / w, box[3] / h)


def _make_videos(cfg: WorldConfig, videos_dir: Path, workers: int) -> list[list[_VideoResult]]:
    """Render, encode and annotate every video; results per split, in video order."""
    jobs = [(k, i) for k, split in enumerate(SPLITS) for i in range(_n_videos(cfg, split))]
    if workers <= 1:
        done = [_make_video(cfg, k, i, videos_dir) for k, i in jobs]
    else:
        # "spawn": the caller may hold threads (torch, decord) that fork would copy badly.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_make_video, cfg, k, i, videos_dir) for k, i in jobs]
            done = [f.result() for f in futures]
    return [[r for (k, _), r in zip(jobs, done, strict=True) if k == s] for s in range(2)]


def _n_videos(cfg: WorldConfig, split: str) -> int:
    return cfg.n_train_videos if split == "train" else cfg.n_val_videos


def _excluded(cfg: WorldConfig, k: int, keyframes: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """A few keyframes (``excluded_fraction``, at least one) to list as excluded."""
    if cfg.excluded_fraction <= 0 or not keyframes:
        return []
    rng = np.random.default_rng([cfg.seed, k, 1_000_003])
    n = max(round(cfg.excluded_fraction * len(keyframes)), 1)
    return sorted(keyframes[j] for j in rng.choice(len(keyframes), n, replace=False))


def _write_split(
    cfg: WorldConfig, k: int, results: list[_VideoResult], ann: Path, events: list[dict]
) -> SplitSummary:
    """Write one split's GT, proposals and excluded keyframes; append its long-term events."""
    split = SPLITS[k]
    all_kf = [(r.video_id, ts) for r in results for ts, _ in r.keyframes]
    excluded = _excluded(cfg, k, all_kf)
    ex_set = set(excluded)
    gt_rows: list[files.GtRow] = []
    prop_rows: list[files.ProposalRow] = []
    n_boxes = 0
    for i, r in enumerate(results):
        prop_rng = np.random.default_rng([cfg.seed, k, i, 11])
        for ts, people in r.keyframes:
            boxes = np.array([_norm(p.box, cfg.width, cfg.height) for p in people]).reshape(-1, 4)
            pb, ps = noisy_proposals(
                prop_rng,
                boxes,
                jitter=cfg.proposal_jitter,
                miss_rate=cfg.proposal_miss_rate,
                false_positive_rate=cfg.proposal_false_positives_per_keyframe,
            )
            # Detector files list the best box first.
            order = np.argsort(-ps, kind="stable")
            prop_rows += [(r.video_id, ts, tuple(pb[j]), float(ps[j])) for j in order]
            if (r.video_id, ts) in ex_set:
                continue  # as in AVA, excluded keyframes have no GT
            for p, box in zip(people, boxes, strict=True):
                n_boxes += 1
                gt_rows += [(r.video_id, ts, tuple(box), a, p.person_id) for a in p.actions]
                events += [
                    {
                        "video_id": r.video_id,
                        "timestamp": ts,
                        "person_id": p.person_id,
                        "action_id": action,
                        "event": what,
                        "event_time": round(cfg.timestamp_offset + frame / cfg.fps, 3),
                    }
                    for action, frame, what in p.events
                ]
    files.write_text(ann / f"{split}.csv", files.gt_csv(gt_rows))
    files.write_text(ann / f"person_boxes_{split}.csv", files.proposals_csv(prop_rows))
    files.write_text(ann / f"excluded_timestamps_{split}.csv", files.excluded_csv(excluded))
    return SplitSummary(
        n_videos=len(results),
        n_keyframes=len(all_kf),
        n_gt_boxes=n_boxes,
        n_gt_rows=len(gt_rows),
        n_proposals=len(prop_rows),
        n_excluded=len(excluded),
        class_counts=dict(sorted(Counter(int(row[3]) for row in gt_rows).items())),
    )


def _summary(
    root: Path, video_ids: dict[str, list[str]], splits: dict[str, SplitSummary]
) -> WorldSummary:
    ann = root / "annotations"
    return WorldSummary(
        root=root,
        videos_dir=root / "videos",
        label_map=ann / "action_list.pbtxt",
        dataset_yaml=root / "dataset.yaml",
        world_json=root / "world.json",
        gt={s: ann / f"{s}.csv" for s in SPLITS},
        proposals={s: ann / f"person_boxes_{s}.csv" for s in SPLITS},
        excluded={s: ann / f"excluded_timestamps_{s}.csv" for s in SPLITS},
        video_ids=video_ids,
        splits=splits,
    )


def load_world_summary(root: str | Path) -> WorldSummary:
    """The summary of a finished world, read back from its world.json.

    Raises:
        FileNotFoundError: ``root`` holds no world.json (no world, or an unfinished build).
    """
    root = Path(root)
    path = root / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no world.json, so {root} is not a finished demo world")
    doc = json.loads(path.read_text())
    video_ids = {s: [v["video_id"] for v in doc["videos"] if v["split"] == s] for s in SPLITS}
    splits = {
        s: SplitSummary(
            **doc["splits"][s],
            class_counts={c["id"]: c[f"{s}_count"] for c in doc["classes"] if c[f"{s}_count"]},
        )
        for s in SPLITS
    }
    return _summary(root, video_ids, splits)


def build_world(
    out_dir: str | Path, config: WorldConfig | None = None, *, workers: int = 1
) -> WorldSummary:
    """Write a demo world for ``config`` (default: ``WorldConfig.default()``) to ``out_dir``.

    Deterministic: the same config gives byte-identical annotation files and world.json
    and identical decoded frames, whatever ``workers`` (processes rendering videos in
    parallel). Idempotent: if ``out_dir`` already holds a finished world (world.json,
    written last) built from the same config with all its files, it is returned as is;
    otherwise its files are overwritten.
    """
    cfg = config or WorldConfig.default()
    root = Path(out_dir)
    existing = root / "world.json"
    if existing.is_file() and json.loads(existing.read_text()).get("config") == cfg.model_dump():
        summary = load_world_summary(root)
        wanted = [
            summary.label_map,
            summary.dataset_yaml,
            *summary.gt.values(),
            *summary.proposals.values(),
            *summary.excluded.values(),
        ]
        wanted += [
            summary.videos_dir / f"{v}.mp4" for ids in summary.video_ids.values() for v in ids
        ]
        if all(p.is_file() for p in wanted):
            return summary
    ann = root / "annotations"
    (root / "videos").mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    existing.unlink(missing_ok=True)  # the completion marker goes last
    per_split = _make_videos(cfg, root / "videos", workers)
    events: list[dict] = []
    splits = {s: _write_split(cfg, k, per_split[k], ann, events) for k, s in enumerate(SPLITS)}
    video_ids = {s: [r.video_id for r in per_split[k]] for k, s in enumerate(SPLITS)}
    files.write_text(ann / "action_list.pbtxt", files.label_map_text())
    files.write_text(root / "dataset.yaml", files.dataset_yaml(cfg.timestamp_offset, SPLITS))
    doc = {
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "classes": files.class_rows({s: x.class_counts for s, x in splits.items()}),
        "splits": {
            s: {k: v for k, v in vars(x).items() if k != "class_counts"} for s, x in splits.items()
        },
        "videos": [
            {
                "video_id": r.video_id,
                "split": r.split,
                "scenario": r.scenario,
                "waiting_story": r.waiting,
                "n_frames": r.n_frames,
                "n_persons": r.n_persons,
            }
            for results in per_split
            for r in results
        ],
        "long_term_events": events,
    }
    files.write_text(existing, files.world_json(doc))
    return _summary(root, video_ids, splits)
