"""The window reader on a hand-made bank (edges, gaps, masks, options) and on a dumped one.

The hand-made bank's feature of actor row ``a`` of video ``i`` is ``[a, i, t]``, so every
gathered entry says where it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from featurestore.banks import BankStore
from stages.framework import run_stage
from stages.train import dump as dump_stage
from stages.train.window import BankWindowReader, WindowConfig
from tests.stages.test_dump import Stage1, stage1_outputs

# video -> (timestamps, actors per keyframe); gaps at 903-904 and 907-909 of "a".
VIDEOS = {
    "a": ([900, 901, 902, 905, 906, 910], [2, 1, 3, 2, 1, 2]),
    "b": ([0, 1, 2], [1, 1, 4]),
}


@pytest.fixture
def bank(tmp_path: Path) -> BankStore:
    store = BankStore.create(tmp_path / "bank.zarr", kind="lfb", arrays={"features": (3,)},
                             provenance={}, expected_videos=list(VIDEOS))  # fmt: skip
    for i, (video_id, (stamps, counts)) in enumerate(VIDEOS.items()):
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n = int(offsets[-1])
        rows = np.arange(n)
        t_of_row = np.repeat(stamps, counts)
        feats = np.stack([rows, np.full(n, i), t_of_row - stamps[0]], 1).astype(np.float32)
        store.write_video(video_id, timestamps=np.asarray(stamps), actor_offset=offsets,
                          track=rows % 3, arrays={"features": feats}, video_key=video_id)  # fmt: skip
    store.finalize()
    return BankStore.open(tmp_path / "bank.zarr")


def read(bank: BankStore, items, **window) -> dict[str, torch.Tensor]:
    return BankWindowReader(bank, WindowConfig(**window)).read(items)


def entries(out: dict[str, torch.Tensor], b: int) -> torch.Tensor:
    """Rows (feature[0]) of keyframe b's real entries."""
    return out["features"][b, out["mask"][b], 0].long()


def test_start_and_end_of_video(bank: BankStore) -> None:
    out = read(bank, [("a", 900), ("a", 910)], before=3, after=5)
    # 900: keyframes 900..905 (902 + 3 rows: rows 0..7); 910: 907..915 -> only 910 itself.
    assert entries(out, 0).tolist() == list(range(8))
    assert entries(out, 1).tolist() == [9, 10]
    assert out["dt"][0, :8].tolist() == [0, 0, 1, 2, 2, 2, 5, 5]
    assert out["mask"].shape == (2, 8) and out["mask"].sum(1).tolist() == [8, 2]


def test_missing_seconds_are_simply_absent(bank: BankStore) -> None:
    out = read(bank, [("a", 905)], before=2, after=4)  # 903..909: 905, 906 only
    assert entries(out, 0).tolist() == [6, 7, 8]
    assert out["dt"][0].tolist() == [0, 0, 1]
    assert out["current"][0].tolist() == [True, True, False]


def test_padding_and_masks(bank: BankStore) -> None:
    out = read(bank, [("b", 0), ("a", 906), ("b", 2)], before=0, after=0)
    assert out["mask"].tolist() == [
        [True, False, False, False],
        [True, False, False, False],
        [True] * 4,
    ]
    pad = ~out["mask"]
    assert torch.all(out["features"][pad] == 0) and torch.all(out["dt"][pad] == 0)
    assert torch.all(out["track"][pad] == -1) and not torch.any(out["current"][pad])
    assert out["features"][1, 0].tolist() == [8, 0, 6]  # video a row 8, t = 906
    assert out["features"][2, :, 1].tolist() == [1, 1, 1, 1]  # all from video b
    assert out["track"][2].tolist() == [2, 0, 1, 2]  # rows 2..5 % 3
    for name in ("features", "dt"):
        assert out[name].dtype == torch.float32
    assert out["track"].dtype == torch.int64 and out["mask"].dtype == torch.bool


def test_include_or_exclude_current(bank: BankStore) -> None:
    with_current = read(bank, [("a", 901)], before=1, after=1)
    without = read(bank, [("a", 901)], before=1, after=1, include_current=False)
    assert entries(with_current, 0).tolist() == [0, 1, 2, 3, 4, 5]
    assert with_current["current"][0].tolist() == [False, False, True, False, False, False]
    assert entries(without, 0).tolist() == [0, 1, 3, 4, 5]
    assert not torch.any(without["current"])
    # A window holding only the current keyframe, excluded: one all-False row.
    empty = read(bank, [("a", 910)], before=2, after=2, include_current=False)
    assert empty["mask"].shape == (1, 1) and not empty["mask"].any()
    assert torch.all(empty["features"] == 0)


def test_max_per_second(bank: BankStore) -> None:
    out = read(bank, [("a", 901)], before=1, after=1, max_per_second=2)
    # 900 keeps its 2, 901 (current) its 1, 902 keeps 2 of 3 (first and last).
    assert entries(out, 0).tolist() == [0, 1, 2, 3, 5]
    one = read(bank, [("a", 905)], before=5, after=1, max_per_second=1)
    assert one["mask"].sum().item() == 1 + 1 + 1 + 2 + 1  # 900, 901, 902, 905 (current), 906
    assert entries(one, 0).tolist()[3:5] == [6, 7]


def test_reads_only_the_window_rows(bank: BankStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    real = bank.read_rows
    monkeypatch.setattr(
        bank, "read_rows", lambda ranges, *a: calls.append(ranges) or real(ranges, *a)
    )
    monkeypatch.setattr(bank, "read_video", lambda *a: pytest.fail("read a whole video"))
    disk = read(bank, [("a", 905), ("a", 906), ("b", 1)], before=1, after=0)
    # 905 -> rows of 905 (6..8); 906 -> 905..906 (6..9): merged into one read; b: 0..2.
    assert calls == [[("a", 6, 9), ("b", 0, 2)]]
    preloaded = BankWindowReader(BankStore.open(bank.url), WindowConfig(before=1, after=0),
                                 preload=True).read([("a", 905), ("a", 906), ("b", 1)])  # fmt: skip
    for name in disk:
        assert torch.equal(disk[name], preloaded[name]), name


@pytest.fixture(scope="module")
def stage1(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Stage1:
    torch.set_num_threads(1)
    return stage1_outputs(tiny_world, tmp_path_factory)


def test_window_rows_are_the_store_actors(stage1: Stage1, tmp_path: Path) -> None:
    """LinearHead's bank feature is the pooled feature itself: a window gathered from the
    bank must equal the feature store's pooled rows of the same keyframes."""
    ref = run_stage(dump_stage.STAGE, stage1.dump_config(splits=["val"]), stage1.inputs(),
                    tmp_path)  # fmt: skip
    store = stage1.store("val")
    bank = BankStore.open(dump_stage.bank_path(ref.path, "val"))
    window = WindowConfig(before=3, after=2)
    items = [(v, int(store.index(v)[0][k])) for v in store.videos() for k in (0, 4, -1)]
    out = BankWindowReader(bank, window).read(items)
    for b, (video_id, t) in enumerate(items):
        ts, off = store.index(video_id)
        ks = [k for k, s in enumerate(ts) if t - 3 <= s <= t + 2]
        rows = np.concatenate([np.arange(off[k], off[k + 1]) for k in ks])
        expected = store.read_pooled(video_id, rows).astype(np.float32)
        got = out["features"][b, out["mask"][b]].numpy()
        np.testing.assert_array_equal(got, expected)
        track = np.asarray(store.array(video_id, "track")[:])[rows]
        assert out["track"][b, out["mask"][b]].tolist() == track.tolist()
        stamps = np.repeat(ts, np.diff(off))[rows]
        assert out["dt"][b, out["mask"][b]].tolist() == (stamps - t).tolist()
