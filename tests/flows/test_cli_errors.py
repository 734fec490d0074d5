"""Bad locations give one line naming them and exit status 2 (no traceback, nothing made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main

TINY = Path(__file__).with_name("tiny.yaml")


@pytest.mark.parametrize("url", ["s3://team/wr", "gs://bucket/work", "file:///tmp/work"])
@pytest.mark.parametrize("command", ["status", "run"])
def test_work_root_url_is_refused_in_one_line(
    url: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command, "--config", str(TINY), "--work-root", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "not a URL" in err[0]
    assert list(tmp_path.iterdir()) == []  # no ./s3:/team/wr, no .prefect


def test_store_error_is_one_line(tmp_path: Path, capsys) -> None:
    target = tmp_path / "not-a-store"
    target.mkdir()
    assert main(["store", "info", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and "feature store" in err[0]
