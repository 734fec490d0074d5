"""Label map (``.pbtxt``) reader and writer.

Two syntaxes exist in the wild and both are read:

- ActivityNet / TF object detection: ``item { name: "bend/bow (at the waist)" id: 1 }``
- AVA v2.x: ``label { name: "bend/bow (at the waist)" label_id: 1 label_type: PERSON_MOVEMENT }``

Fields may come in any order, one per line or several on a line; ``#`` starts a comment;
names take single or double quotes. This is a small tokenizer for that subset of protobuf
text format, not a protobuf dependency.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import DataError
from .types import LabelMap

# Fields each block may hold, and which of them is the id.
_BLOCKS = {
    "item": {"id_field": "id", "fields": {"name", "id", "display_name"}},
    "label": {"id_field": "label_id", "fields": {"name", "label_id", "label_type"}},
}

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+) |
    (?P<newline>\n) |
    (?P<comment>\#[^\n]*) |
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*') |
    (?P<word>[A-Za-z_][A-Za-z0-9_]*) |
    (?P<number>[-+]?[0-9][0-9A-Za-z_.+-]*) |
    (?P<punct>[{}:])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "string" | "word" | "number" | "punct" | "end"
    text: str
    line: int


def _tokens(text: str, path: str) -> list[_Token]:
    tokens: list[_Token] = []
    line, pos = 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise DataError(path, line, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            tokens.append(_Token(kind, match.group(), line))
        pos = match.end()
    # Padding lets the parser look three tokens ahead without bounds checks.
    tokens.extend(_Token("end", "", line) for _ in range(3))
    return tokens


def _unquote(token: _Token) -> str:
    body = token.text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


@dataclass
class _Block:
    kind: str
    line: int
    fields: dict[str, tuple[str, _Token]]


def _parse_blocks(text: str, path: str) -> list[_Block]:
    """Split the file into blocks of ``field: value`` pairs; syntax errors raise."""
    tokens = _tokens(text, path)
    blocks: list[_Block] = []
    i = 0
    while tokens[i].kind != "end":
        head = tokens[i]
        if head.kind != "word" or tokens[i + 1].text != "{":
            raise DataError(path, head.line, f"expected 'item {{' or 'label {{', got {head.text!r}")
        if head.text not in _BLOCKS:
            raise DataError(
                path, head.line, f"unknown block {head.text!r} (expected item or label)"
            )
        block = _Block(head.text, head.line, {})
        i += 2
        while tokens[i].text != "}":
            key, colon, value = tokens[i], tokens[i + 1], tokens[i + 2]
            if key.kind == "end":
                raise DataError(path, head.line, f"{head.text} block is not closed with '}}'")
            if key.kind != "word" or colon.text != ":":
                raise DataError(path, key.line, f"expected 'field: value', got {key.text!r}")
            if value.kind not in ("string", "word", "number"):
                raise DataError(path, value.line, f"field {key.text!r} has no value")
            allowed = _BLOCKS[head.text]["fields"]
            if key.text not in allowed:
                raise DataError(
                    path,
                    key.line,
                    f"unknown field {key.text!r} in {head.text} block "
                    f"(expected {', '.join(sorted(allowed))})",
                )
            if key.text in block.fields:
                raise DataError(path, key.line, f"field {key.text!r} given twice in one block")
            text_value = _unquote(value) if value.kind == "string" else value.text
            block.fields[key.text] = (text_value, value)
            i += 3
        blocks.append(block)
        i += 1
    return blocks


class DuplicateIdError(DataError):
    """A block whose id an earlier block already has (``str()`` as :class:`DataError`).

    ``between``: the ids of the nearest blocks before and after it that have an id of their
    own (None at either end of the file). In an ascending label map (AVA's are) an id missing
    strictly between them is the one this block lost (a typo such as 4 -> 3).
    """

    def __init__(
        self,
        path: str | Path,
        line: int | None,
        message: str,
        between: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(path, line, message)
        self.between = between

    def __reduce__(self):  # keeps ``between`` across pickling
        return (type(self), (self.path, self.line, self.message, self.between))

    def lost_ids(self, present: Iterable[int]) -> list[int]:
        """Ids strictly between the neighbours' ids that no block has."""
        if self.between is None:
            return []
        low, high = self.between
        have = set(present)
        return [i for i in range(low + 1, high) if i not in have]


def labelmap_problems(path: str | Path) -> tuple[LabelMap | None, list[DataError]]:
    """Parse a label map and collect every problem (a syntax error stops the parse).

    Returns the label map (None when the file cannot be used) and the problems found:
    syntax errors, blocks without a name or id, non-integer ids, duplicate ids, an empty
    file.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, [DataError(path, None, f"cannot read label map: {err}")]
    try:
        blocks = _parse_blocks(text, source)
    except DataError as err:
        return None, [err]
    if not blocks:
        return None, [
            DataError(path, None, "empty label map (expected item { } or label { } blocks)")
        ]
    problems: list[DataError] = []
    ids: list[int] = []
    names: list[str] = []
    types: list[str | None] = []
    first_line: dict[int, int] = {}
    order: list[int | DuplicateIdError] = []  # file order: own ids and duplicates
    for block in blocks:
        id_field = str(_BLOCKS[block.kind]["id_field"])
        missing = [f for f in ("name", id_field) if f not in block.fields]
        if missing:
            problems.append(
                DataError(path, block.line, f"{block.kind} block has no {' and no '.join(missing)}")
            )
            continue
        raw_id, id_token = block.fields[id_field]
        if id_token.kind != "number" or not re.fullmatch(r"[-+]?[0-9]+", raw_id):
            problems.append(
                DataError(path, id_token.line, f"{id_field} {raw_id!r} is not an integer")
            )
            continue
        label_id = int(raw_id)
        if label_id in first_line:
            duplicate = DuplicateIdError(
                path,
                id_token.line,
                f"duplicate {id_field} {label_id} (first given on line {first_line[label_id]})",
            )
            problems.append(duplicate)
            order.append(duplicate)
            continue
        first_line[label_id] = id_token.line
        order.append(label_id)
        ids.append(label_id)
        names.append(block.fields["name"][0])
        label_type = block.fields.get("label_type")
        types.append(None if label_type is None else label_type[0])
    for i, item in enumerate(order):
        if isinstance(item, DuplicateIdError):
            before = [x for x in order[:i] if isinstance(x, int)]
            after = [x for x in order[i + 1 :] if isinstance(x, int)]
            if before and after:
                item.between = (before[-1], after[0])
    labelmap = LabelMap(
        ids=np.asarray(ids, dtype=np.int64),
        names=tuple(names),
        label_types=tuple(types),
        source=source,
    )
    return labelmap, problems


def read_labelmap(path: str | Path) -> LabelMap:
    """Read a label map in ``item {}`` or ``label {}`` syntax.

    Raises:
        DataError: the first problem (unknown block or field, missing name or id,
            non-integer or duplicate id, empty file), naming file and line.
    """
    labelmap, problems = labelmap_problems(path)
    if problems:
        raise problems[0]
    if labelmap is None:  # unreachable: no problems means the map parsed
        raise DataError(path, None, "cannot read label map")
    return labelmap


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_labelmap(labelmap: LabelMap) -> str:
    """The pbtxt text: ``label {}`` blocks when every label has a type, else ``item {}``."""
    typed = len(labelmap) > 0 and all(t is not None for t in labelmap.label_types)
    out = []
    for label_id, name, label_type in zip(
        labelmap.ids.tolist(), labelmap.names, labelmap.label_types, strict=True
    ):
        if typed:
            out.append(
                f"label {{\n  name: {_quote(name)}\n  label_id: {label_id}\n"
                f"  label_type: {label_type}\n}}\n"
            )
        else:
            out.append(f"item {{\n  name: {_quote(name)}\n  id: {label_id}\n}}\n")
    return "".join(out)


def write_labelmap(path: str | Path, labelmap: LabelMap) -> None:
    """Write ``labelmap`` atomically (see :func:`format_labelmap` for the syntax)."""
    for label_type in labelmap.label_types:
        if label_type is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label_type):
            raise ValueError(f"label type {label_type!r} is not an identifier like PERSON_MOVEMENT")
    atomic_write_bytes(path, format_labelmap(labelmap).encode("utf-8"))
