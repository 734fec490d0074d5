"""Label map reader/writer: both syntaxes, comments, quotes, every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.data import DataError, LabelMap, read_labelmap, write_labelmap
from tests.data.conftest import LABELMAP_TEXT

AVA_60_IDS = [
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 20, 22, 24, 26, 27, 28, 29, 30, 34,
    36, 37, 38, 41, 43, 45, 46, 47, 48, 49, 51, 52, 54, 56, 57, 58, 59, 60, 61, 62, 63, 64,
    65, 66, 67, 68, 69, 70, 72, 73, 74, 76, 77, 78, 79, 80,
]  # fmt: skip


def _pbtxt(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.pbtxt"
    path.write_text(text)
    return path


def test_activitynet_60_class_list(peer_ava: Path) -> None:
    path = peer_ava / "activitynet_labelmap" / "ava_action_list_v2.1_for_activitynet_2018.pbtxt.txt"
    labelmap = read_labelmap(path)
    assert labelmap.ids.tolist() == AVA_60_IDS
    assert labelmap.names[0] == "bend/bow (at the waist)"
    assert labelmap.name(80) == "watch (a person)"
    assert set(labelmap.label_types) == {None}
    assert labelmap.source == str(path)


@pytest.mark.parametrize(
    "relative",
    [
        "mmaction2_eval_detection/action_list.txt",
        "mmeval_ava_map/ava_action_list.txt",
        "mmeval_ava_map/action_list_custom_1_3.pbtxt",
    ],
)
def test_small_peer_label_maps(peer_ava: Path, relative: str) -> None:
    labelmap = read_labelmap(peer_ava / relative)
    expected = [1, 3] if "custom" in relative else [1, 2, 3]
    assert labelmap.ids.tolist() == expected
    assert list(labelmap.names) == [f"action{i}" for i in expected]


def test_label_syntax_with_types_comments_and_quotes(tmp_path: Path) -> None:
    labelmap = read_labelmap(_pbtxt(tmp_path, LABELMAP_TEXT))
    assert labelmap.ids.tolist() == [12, 11, 17, 80]
    assert labelmap.names == ("stand", "sit", "carry/hold (an object)", "watch (a person)")
    assert labelmap.label_types == (
        "PERSON_MOVEMENT",
        "PERSON_MOVEMENT",
        "OBJECT_MANIPULATION",
        "PERSON_INTERACTION",
    )


def test_escaped_quotes_and_hash_inside_names(tmp_path: Path) -> None:
    text = 'item { name: "say \\"hi\\" # not a comment" id: 2 }  # a comment\nitem{name:\'x\' id:5}'
    labelmap = read_labelmap(_pbtxt(tmp_path, text))
    assert labelmap.names == ('say "hi" # not a comment', "x")
    assert labelmap.ids.tolist() == [2, 5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'item { name: "a" id: 1 }\nitem { name: "b" id: 1 }\n',
            r":2: duplicate id 1 \(first given on line 1\)",
        ),
        ('item {\n name: "a"\n}\n', r":1: item block has no id"),
        ("label {\n label_id: 4\n}\n", r":1: label block has no name"),
        ('item { name: "a" id: one }\n', r":1: id 'one' is not an integer"),
        ('item { name: "a" id: 1.5 }\n', r":1: id '1.5' is not an integer"),
        ("# nothing\n\n", r"labels.pbtxt: empty label map"),
        ('class { name: "a" id: 1 }\n', r":1: unknown block 'class' \(expected item or label\)"),
        (
            'item { name: "a" label_type: X id: 1 }\n',
            r":1: unknown field 'label_type' in item block",
        ),
        ('item { name: "a"\n id: 1\n', r":1: item block is not closed"),
        ('item { name "a" id: 1 }\n', r":1: expected 'field: value', got 'name'"),
        ('item { name: "a" id: 1 }\n}\n', r":2: expected 'item \{' or 'label \{', got '\}'"),
        ('item { name: "a" name: "b" id: 1 }\n', r":1: field 'name' given twice"),
        ('item { name: "a" id: 1 } ;', r":1: unexpected character ';'"),
    ],
)
def test_label_map_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _pbtxt(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        read_labelmap(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("typed", [True, False])
def test_write_read_round_trip(tmp_path: Path, typed: bool) -> None:
    types = ("PERSON_MOVEMENT", "OBJECT_MANIPULATION") if typed else (None, None)
    original = LabelMap(
        ids=np.array([3, 17]), names=('say "hi"', "carry/hold (an object)"), label_types=types
    )
    path = tmp_path / "out.pbtxt"
    write_labelmap(path, original)
    text = path.read_text()
    assert ("label_id: 17" in text) is typed and ("  id: 17" in text) is not typed
    back = read_labelmap(path)
    assert back.ids.tolist() == [3, 17]
    assert back.names == original.names
    assert back.label_types == types
    assert [p.name for p in tmp_path.iterdir()] == ["out.pbtxt"]  # no temp file left
