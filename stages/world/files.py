"""Text formats the world writes: AVA CSVs, excluded timestamps, dataset.yaml, world.json.

All numbers are formatted explicitly (3 decimals) so that one seed gives byte-identical
files on every machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import yaml

from stages.world.classes import CLASSES, POSE_IDS, action_list_pbtxt

GtRow = tuple[str, int, tuple[float, float, float, float], int, int]  # vid, ts, box, action, pid
ProposalRow = tuple[str, int, tuple[float, float, float, float], float]  # vid, ts, box, score


def _box(b: tuple[float, float, float, float]) -> str:
    return ",".join(f"{v:.3f}" for v in b)


def write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(path)


def gt_csv(rows: Iterable[GtRow]) -> str:
    """AVA GT: ``video_id,timestamp(%04d),x1,y1,x2,y2,action_id,person_id``, no header."""
    return "".join(f"{v},{t:04d},{_box(b)},{a},{p}\n" for v, t, b, a, p in rows)


def proposals_csv(rows: Iterable[ProposalRow]) -> str:
    """Proposals: the same 8 columns, action column empty, score in column 8."""
    return "".join(f"{v},{t:04d},{_box(b)},,{s:.3f}\n" for v, t, b, s in rows)


def excluded_csv(rows: Iterable[tuple[str, int]]) -> str:
    return "".join(f"{v},{t:04d}\n" for v, t in rows)


def label_map_text() -> str:
    return action_list_pbtxt()


def dataset_yaml(timestamp_offset: int, splits: Iterable[str]) -> str:
    """``dataset.yaml`` with ``stages.data.DatasetConfig`` fields only (that model is
    strict); everything else about the world (fps, size, video lists) is in world.json.
    Paths are relative: to the world root for directories, to ``annotations`` for files."""
    doc = {
        "timestamp_offset": timestamp_offset,
        "videos_dir": "videos",
        "annotations_dir": "annotations",
        "labelmap": "action_list.pbtxt",
        "exclusive_classes": list(POSE_IDS),
        "splits": {
            split: {
                "gt": f"{split}.csv",
                "proposals": f"person_boxes_{split}.csv",
                "excluded": f"excluded_timestamps_{split}.csv",
            }
            for split in splits
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def class_rows(counts: dict[str, dict[int, int]]) -> list[dict[str, object]]:
    """The class table with per-split GT row counts."""
    return [
        {
            "id": c.id,
            "name": c.name,
            "label_type": c.label_type,
            "evidence": c.evidence,
            **{f"{split}_count": int(counts[split].get(c.id, 0)) for split in counts},
            "decided_by": c.decided_by,
        }
        for c in CLASSES
    ]


def world_json(doc: dict[str, object]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def class_table_text(classes: list[dict[str, object]]) -> str:
    """A fixed-width table: id, name, type, evidence, train count, val count."""
    head = f"{'id':>3}  {'name':<32} {'label_type':<20} {'evidence':<20} {'train':>6} {'val':>6}"
    lines = [head, "-" * len(head)]
    for c in classes:
        lines.append(
            f"{c['id']:>3}  {c['name']!s:<32} {c['label_type']!s:<20} "
            f"{c['evidence']!s:<20} {c.get('train_count', 0):>6} {c.get('val_count', 0):>6}"
        )
    return "\n".join(lines)
