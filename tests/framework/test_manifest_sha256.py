"""The publication manifest records a sha256 per file; readers of small outputs check it.

A same-size replacement of a published file passes the (path, size) check of
``read_output`` but not :func:`read_published_bytes`; an output published before
checksums existed is refused with a line saying how to republish it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from stages.framework import (
    COMPLETE_MARKER,
    StageError,
    read_output,
    read_published_bytes,
    read_published_json,
)
from tests.framework.toy_stages import AConfig, BConfig, run_chain


def test_manifest_records_sha256_of_every_file(tmp_path: Path) -> None:
    ref_a, _ = run_chain(tmp_path, AConfig(value=7), BConfig())
    manifest = json.loads((ref_a.path / COMPLETE_MARKER).read_text())["manifest"]
    names = [e[0] for e in manifest]
    assert names == sorted(["part1.txt", "value.txt", "provenance.json"])
    for rel, size, sha in manifest:
        data = (ref_a.path / rel).read_bytes()
        assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_published_bytes(ref_a.path, "value.txt") == b"7"
    assert read_published_json(ref_a.path, "provenance.json")["stage"] == "a"


def test_same_size_replacement_is_refused_naming_the_file(tmp_path: Path) -> None:
    ref_a, _ = run_chain(tmp_path, AConfig(value=7), BConfig())
    (ref_a.path / "value.txt").write_text("9")  # same size: (path, size) still match
    assert read_output(tmp_path, "a", ref_a.key) is not None
    with pytest.raises(StageError, match=r"value\.txt: sha256 .* differs .* changed afterwards"):
        read_published_bytes(ref_a.path, "value.txt")


def test_output_without_checksums_is_refused_with_a_clear_line(tmp_path: Path) -> None:
    ref_a, _ = run_chain(tmp_path, AConfig(value=7), BConfig())
    marker = ref_a.path / COMPLETE_MARKER
    record = json.loads(marker.read_text())
    record["manifest"] = [e[:2] for e in record["manifest"]]  # as published before sha256
    marker.write_text(json.dumps(record))
    assert read_output(tmp_path, "a", ref_a.key) is not None  # still found, still cached
    with pytest.raises(StageError, match=r"value\.txt: .*without checksums.*--force"):
        read_published_bytes(ref_a.path, "value.txt")


def test_file_outside_the_manifest_or_output_is_refused(tmp_path: Path) -> None:
    ref_a, _ = run_chain(tmp_path, AConfig(value=7), BConfig())
    (ref_a.path / "planted.pt").write_bytes(b"x")
    with pytest.raises(StageError, match=r"planted\.pt: not in the manifest"):
        read_published_bytes(ref_a.path, "planted.pt")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "head.pt").write_bytes(b"x")
    with pytest.raises(StageError, match=r"head\.pt: .* is not a published stage output"):
        read_published_bytes(tmp_path / "loose", "head.pt")
