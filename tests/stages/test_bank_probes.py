"""The identity probe for the stage-2 heads (tests/stages/bank_probes.py): the bank dumped
from a probe store is the store's actors with their tracks, and IGMN's identity-guided
memory reads the first keyframe of the actor's own track (the stage-1 heads cannot: they
never see it).
Measured figures in docs/findings-probes.md; seeded, no timing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurestore.banks import BankStore
from stages.train.bank import check_alignment
from stages.train.optim import OptimConfig
from stages.train.recipes import build_recipe_head, probe_recipe
from tests.stages.bank_probes import (
    bank_window,
    dump_world_banks,
    first_keyframe_oracle_ap,
    run_bank_probe,
)
from tests.stages.relational_probes import CHANNELS, probe_world


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def igmn_dam():
    return build_recipe_head("igmn_dam", probe_recipe("igmn_dam"), in_channels=CHANNELS,
                             num_classes=1)  # fmt: skip


def test_identity_bank_is_the_store_actors_with_their_tracks(tmp_path):
    world = probe_world(tmp_path / "w", "identity", train_videos=2, val_videos=3, keyframes=3)
    probe = dump_world_banks(world, igmn_dam(), "identity", tmp_path / "bank")
    store, bank = world.val.store, probe.val_bank
    check_alignment(store, bank)
    assert isinstance(bank, BankStore) and bank.kind == "identity"
    for video_id in store.videos():
        _, _, track = bank.index(video_id)
        np.testing.assert_array_equal(track, np.asarray(store.array(video_id, "track")[:]))
    # the bank holds the cue: the own track's row at the first keyframe decides the label
    assert first_keyframe_oracle_ap(probe) == pytest.approx(1.0)


def test_igmn_reads_its_tracks_first_keyframe_from_the_bank(tmp_path):
    """Videos of 4 keyframes, every actor the same look (only the track ids tell who is
    who), window = the whole video: igmn far above chance (measured 0.87 here; 1.00 on the
    bench's larger world, where lfb, pooling the window without identity, gets 0.64 at
    chance 0.51)."""
    world = probe_world(tmp_path / "w", "identity", train_videos=24, val_videos=12,
                        keyframes=4, same_look=True)  # fmt: skip
    probe = dump_world_banks(world, igmn_dam(), "identity", tmp_path / "bank")
    result = run_bank_probe(
        "igmn", probe, tmp_path / "ckpt", optim=OptimConfig(epochs=10, batch_keyframes=4),
        window=bank_window(4),
    )  # fmt: skip
    assert result.ap > result.chance + 0.3, result
