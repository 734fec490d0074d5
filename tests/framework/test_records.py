"""A cache record (stage, key, digest) is resolved against the work root of the run that
reads it: never a path of another root, never an output with another digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stages.framework import (
    COMPLETE_MARKER,
    PROVENANCE_FILE,
    output_relpath,
    resolve_record,
)
from tests.framework.toy_stages import AConfig, BConfig, run_chain


def test_record_resolves_in_a_copied_and_moved_root_only(tmp_path: Path) -> None:
    a, b = run_chain(tmp_path / "one", AConfig(value=3), BConfig())
    record = b.model_copy(update={"uri": output_relpath(b.stage, b.key)})
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    found = resolve_record(record, tmp_path / "two")
    assert found is not None and found.path == tmp_path / "two" / "b" / b.key
    assert found.digest == b.digest
    shutil.move(tmp_path / "two", tmp_path / "three")
    assert resolve_record(record, tmp_path / "two") is None  # nothing there any more
    moved = resolve_record(record, tmp_path / "three")
    assert moved is not None and moved.path == tmp_path / "three" / "b" / b.key
    assert resolve_record(record, tmp_path / "empty") is None  # another root: never handed
    # Provenance names inputs relative to the work root.
    provenance = json.loads((moved.path / PROVENANCE_FILE).read_text())
    assert provenance["inputs"]["a"] == {"key": a.key, "uri": f"a/{a.key}"}


def test_record_with_another_digest_or_a_broken_output_is_not_resolved(tmp_path: Path) -> None:
    _, b = run_chain(tmp_path, AConfig(value=5), BConfig())
    record = b.model_copy(update={"uri": output_relpath(b.stage, b.key)})
    other = record.model_copy(update={"digest": "0" * 64})
    assert resolve_record(other, tmp_path) is None
    (b.path / "value.txt").write_text("1000")  # grown after publication: manifest differs
    assert resolve_record(record, tmp_path) is None
    (b.path / COMPLETE_MARKER).unlink()
    assert resolve_record(record, tmp_path) is None
