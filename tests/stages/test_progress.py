"""The training progress bar: on stderr at a terminal or when BANKFLOW_PROGRESS=1 forces it,
never otherwise, and without any effect on what is trained."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore import KeyframeFeatures
from models.heads import build_head
from stages.framework import progress
from stages.train.data import KeyframeSource, SplitIndex
from stages.train.loop import OptimConfig, TrainData, predict, train

KEYFRAMES, ACTORS, CHANNELS, CLASSES = 10, 2, 8, 3


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setenv("COLUMNS", "120")  # one bar per line, whatever the runner's width


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class MemoryStore:
    """Just what :class:`KeyframeSource` reads: keyframes by (video, timestamp)."""

    def __init__(self, features: list[KeyframeFeatures]) -> None:
        self.features = {(f.video_id, f.timestamp): f for f in features}

    def read_keyframes(self, items, arrays=None) -> list[KeyframeFeatures]:
        return [self.features[item] for item in items]

    read_keyframes_by_video = read_keyframes  # what preloading calls


def tiny_data() -> TrainData:
    rng = np.random.default_rng(0)
    features = [
        KeyframeFeatures(
            video_id="v",
            timestamp=t,
            context=np.zeros((CHANNELS, 1, 1), np.float32),
            boxes=np.tile(np.array([0.1, 0.1, 0.5, 0.9], np.float32), (ACTORS, 1)),
            scores=np.ones(ACTORS, np.float32),
            track=np.full(ACTORS, -1, np.int32),
            pooled=rng.standard_normal((ACTORS, CHANNELS)).astype(np.float32),
        )
        for t in range(KEYFRAMES)
    ]
    index = SplitIndex(
        video=np.array(["v"] * KEYFRAMES, dtype=object),
        timestamp=np.arange(KEYFRAMES, dtype=np.int64),
        actor_offset=np.arange(0, (KEYFRAMES + 1) * ACTORS, ACTORS, dtype=np.int64),
        boxes=np.concatenate([f.boxes for f in features]),
        scores=np.concatenate([f.scores for f in features]),
        labels=(rng.random((KEYFRAMES * ACTORS, CLASSES)) < 0.3).astype(np.float32),
    )
    source = KeyframeSource(MemoryStore(features), index, preload=True)  # type: ignore[arg-type]
    return TrainData(train=source, val=None, exclusive=[], use_roi=False, use_roi_t=False)


def train_tiny(tmp_path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_head("linear", in_channels=CHANNELS, num_classes=CLASSES)  # dropout: RNG
    cfg = OptimConfig(epochs=2, batch_keyframes=4, loss="bce")  # 3 steps per epoch
    train(model, tiny_data(), cfg, tmp_path)
    return model.state_dict()


def test_forced_bar_shows_epoch_steps_and_loss(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(progress.ENV, "1")
    with progress.progress_bar(3, "epoch 1/2") as bar:
        assert isinstance(bar, progress.Bar)
        for _ in range(3):
            bar.advance(loss=0.6931)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "step 3/3" in err and "loss 0.6931" in err


def test_training_loop_shows_a_bar_per_epoch_and_trains_the_same(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(progress.ENV, "0")
    quiet = train_tiny(tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.ENV, "1")
    shown = train_tiny(tmp_path / "shown")
    lines = capsys.readouterr().err.splitlines()  # not a terminal: each bar once, at its end
    assert len(lines) == 2, lines
    for k, line in enumerate(lines, start=1):
        assert f"epoch {k}/2" in line and "step 3/3" in line and "loss " in line
    for name, value in quiet.items():  # the bar draws no random numbers, reorders nothing
        assert torch.equal(value, shown[name]), name


def test_predict_bar_is_transient(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(progress.ENV, "1")
    data = tiny_data()
    scores = predict(build_head("linear", in_channels=CHANNELS, num_classes=CLASSES),
                     data.train, data, batch_keyframes=4)  # fmt: skip
    assert scores.shape == (KEYFRAMES * ACTORS, CLASSES)
    assert capsys.readouterr().err == ""  # erased at the end: a file never holds it


def test_disabled_by_env_even_at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv(progress.ENV, "0")
    with progress.progress_bar(3, "epoch 1/1") as bar:
        assert isinstance(bar, progress.NoBar)
        bar.advance(loss=1.0)
    assert terminal.getvalue() == ""


def test_shown_at_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # capsys: stderr is not a terminal (as in CI, a Prefect worker or a log file).
    assert not sys.stderr.isatty() and not progress.enabled()
    with progress.progress_bar(3, "epoch 1/1") as bar:
        assert isinstance(bar, progress.NoBar)
        bar.advance(loss=1.0)
    assert capsys.readouterr().err == ""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.progress_bar(3, "epoch 1/1") as bar:
        assert isinstance(bar, progress.Bar)
        bar.advance(3, loss=1.0)
    assert "epoch 1/1" in terminal.getvalue() and "3/3" in terminal.getvalue()
