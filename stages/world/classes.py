"""The demo world's action classes: ids, AVA label types and what decides each label."""

from __future__ import annotations

from dataclasses import dataclass

PERSON_MOVEMENT = "PERSON_MOVEMENT"
OBJECT_MANIPULATION = "OBJECT_MANIPULATION"
PERSON_INTERACTION = "PERSON_INTERACTION"


@dataclass(frozen=True)
class ActionClass:
    """One action class.

    Attributes:
        id: the label id written to the CSVs and the pbtxt.
        name: the label name.
        label_type: AVA label type; PERSON_MOVEMENT classes are mutually exclusive.
        evidence: which kind of evidence decides it: ``pose``, ``motion``,
            ``object-small``, ``object-large``, ``person-person``,
            ``actor-context-actor`` or ``long-term``.
        decided_by: the rule the generator applies (h = the person's height).
    """

    id: int
    name: str
    label_type: str
    evidence: str
    decided_by: str


STAND, SIT, LIE, WALK, RUN = 1, 2, 3, 4, 5
CARRY, PHONE, TOUCH_TABLE, RETURN_OBJECT = 6, 7, 8, 12
TALK, LISTEN, WATCH, WAIT = 9, 10, 11, 13

CLASSES: tuple[ActionClass, ...] = (
    ActionClass(
        STAND, "stand", PERSON_MOVEMENT, "pose", "upright figure moving slower than 0.2 h/s"
    ),
    ActionClass(SIT, "sit", PERSON_MOVEMENT, "pose", "seated figure (bent legs, on a stool)"),
    ActionClass(LIE, "lie down", PERSON_MOVEMENT, "pose", "horizontal figure on the floor"),
    ActionClass(
        WALK,
        "walk",
        PERSON_MOVEMENT,
        "motion",
        "upright figure moving 0.2-1.0 h/s; each frame looks exactly like stand",
    ),
    ActionClass(
        RUN,
        "run",
        PERSON_MOVEMENT,
        "motion",
        "upright figure moving faster than 1.0 h/s; each frame looks like stand",
    ),
    ActionClass(
        CARRY,
        "carry/hold (an object)",
        OBJECT_MANIPULATION,
        "object-small",
        "holds a small (about 0.08 h) object in the hand, below the head",
    ),
    ActionClass(
        PHONE,
        "answer phone",
        OBJECT_MANIPULATION,
        "object-small",
        "holds a small dark phone at the head",
    ),
    ActionClass(
        TOUCH_TABLE,
        "touch (a table)",
        OBJECT_MANIPULATION,
        "object-large",
        "hand rests on the top of the table (about 1 h wide)",
    ),
    ActionClass(
        TALK,
        "talk to (e.g., self, a person)",
        PERSON_INTERACTION,
        "person-person",
        "shows the talk cue (mouth + raised forearm) and faces a near person "
        "(|dx| < 1.1 h) who faces back; the same cue with nobody facing back is "
        "not labelled",
    ),
    ActionClass(
        LISTEN,
        "listen to (a person)",
        PERSON_INTERACTION,
        "person-person",
        "shows no talk cue and faces a near person who shows it and faces back",
    ),
    ActionClass(
        WATCH,
        "watch (a person use the table)",
        PERSON_INTERACTION,
        "actor-context-actor",
        "faces another person within 3 h who touches the table, not touching it",
    ),
    ActionClass(
        RETURN_OBJECT,
        "put back (an object)",
        OBJECT_MANIPULATION,
        "long-term",
        "puts a small object onto the table that they picked up from it (usually "
        "7-17 s) earlier; putting down an object brought in from outside looks the same "
        "and is not labelled",
    ),
    ActionClass(
        WAIT,
        "wait for (a person)",
        PERSON_INTERACTION,
        "long-term",
        "has not moved since their conversation partner left the scene at least "
        "5 s ago, and the partner is not back yet",
    ),
)

POSE_IDS: tuple[int, ...] = tuple(c.id for c in CLASSES if c.label_type == PERSON_MOVEMENT)
LONG_TERM_IDS: tuple[int, ...] = tuple(c.id for c in CLASSES if c.evidence == "long-term")


def action_list_pbtxt() -> str:
    """The label map in AVA v2.x syntax (``label { name label_id label_type }``)."""
    blocks = [
        f'label {{\n  name: "{c.name}"\n  label_id: {c.id}\n  label_type: {c.label_type}\n}}\n'
        for c in CLASSES
    ]
    return "".join(blocks)
