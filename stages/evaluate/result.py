"""The result of an AVA frame-mAP evaluation and its JSON / Markdown / table views."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stages.data.types import LabelMap

# label_type in the AVA v2.x label map -> the group name reported by the breakdowns.
GROUP_OF_LABEL_TYPE = {
    "PERSON_MOVEMENT": "pose",
    "OBJECT_MANIPULATION": "object_manipulation",
    "PERSON_INTERACTION": "person_interaction",
}


@dataclass(frozen=True)
class AvaResult:
    """Frame-mAP of one detection file against one GT file.

    Attributes:
        mAP: mean of ``per_class`` (NaN if no class has GT).
        per_class: AP in [0, 1] for every label-map class that has GT, by class id.
        num_gt: GT boxes per evaluated class (duplicates counted), by class id.
        num_detections: detections per class that entered the ranking (after the
            label map, exclusions, the per-keyframe cap and invalid-box filters).
        groups: mAP per label-type group (``pose``, ``object_manipulation``,
            ``person_interaction``) over the classes of that group that have GT.
        protocol: ``"2018"``, ``"2019"`` or ``"2020"``.
        iou_threshold: the IoU a match needs.
        max_per_keyframe: the detection cap applied (None = no cap).
        counts: bookkeeping (rows read, dropped, keyframes), for the report.
    """

    mAP: float
    per_class: dict[int, float]
    num_gt: dict[int, int]
    num_detections: dict[int, int]
    groups: dict[str, float]
    protocol: str
    iou_threshold: float
    max_per_keyframe: int | None
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; class ids become string keys as JSON requires."""
        return {
            "mAP": self.mAP,
            "per_class": {str(k): v for k, v in self.per_class.items()},
            "groups": dict(self.groups),
            "num_gt": {str(k): v for k, v in self.num_gt.items()},
            "num_detections": {str(k): v for k, v in self.num_detections.items()},
            "protocol": self.protocol,
            "iou_threshold": self.iou_threshold,
            "max_per_keyframe": self.max_per_keyframe,
            "counts": dict(self.counts),
        }

    def to_table(self, labelmap: LabelMap | None = None) -> list[dict[str, Any]]:
        """One row per evaluated class (id, name, group, AP, #GT, #detections), for a
        Prefect table artifact."""
        rows = []
        for cid, ap in self.per_class.items():
            name = labelmap.name(cid) if labelmap is not None and cid in labelmap else ""
            ltype = labelmap.label_type(cid) if labelmap is not None and cid in labelmap else None
            rows.append(
                {
                    "class_id": cid,
                    "name": name,
                    "group": GROUP_OF_LABEL_TYPE.get(ltype or "", ""),
                    "AP": round(ap, 6),
                    "num_gt": self.num_gt.get(cid, 0),
                    "num_detections": self.num_detections.get(cid, 0),
                }
            )
        return rows

    def to_markdown(self, labelmap: LabelMap | None = None) -> str:
        """A Markdown report: headline mAP, group mAPs, then the per-class table."""
        lines = [
            f"**mAP@{self.iou_threshold:g}** ({self.protocol} protocol): "
            f"{100 * self.mAP:.2f} over {len(self.per_class)} classes",
            "",
        ]
        if self.groups:
            lines += ["| group | mAP |", "|---|---:|"]
            lines += [f"| {g} | {100 * v:.2f} |" for g, v in self.groups.items()]
            lines.append("")
        lines += ["| id | class | AP | #GT | #det |", "|---:|---|---:|---:|---:|"]
        for row in self.to_table(labelmap):
            name = str(row["name"]).replace("|", "/")
            lines.append(
                f"| {row['class_id']} | {name} | {100 * row['AP']:.2f} | "
                f"{row['num_gt']} | {row['num_detections']} |"
            )
        return "\n".join(lines) + "\n"
