"""Paper recipes scaled to a run, and the zero-initialised relation branches."""

from __future__ import annotations

import pytest
import torch

from models.heads import HEADS
from stages.train.recipes import (
    PAPER_RECIPES,
    PROBE_WIDTHS,
    build_recipe_head,
    probe_recipe,
    scaled_recipe,
    zero_init_residual,
)
from tests.models.heads_testing import random_actor_batch, select_actors


def test_every_stage1_head_has_a_paper_recipe_and_probe_widths():
    stage1 = {"linear", "acrn", "acar", "amcr", "amcr_slim", "pcca", "sonly", "tonly", "igmn_dam"}
    assert stage1 <= set(HEADS)
    assert set(PAPER_RECIPES) == stage1 == set(PROBE_WIDTHS)


def test_scaled_recipe_keeps_the_papers_fractions_and_scales_lr_with_the_batch():
    recipe = scaled_recipe("acar", batch_keyframes=16, epochs=35)
    optim = recipe.optim
    assert optim.optimizer == "sgd" and optim.schedule == "step"
    assert optim.lr == pytest.approx(0.064 * 16 / 32)
    assert optim.weight_decay == pytest.approx(1e-7)
    assert optim.momentum == pytest.approx(0.9)
    assert optim.warmup_epochs == pytest.approx(6.0)  # 6k of 35k iterations
    assert optim.step_epochs == [33, 34]
    pcca = scaled_recipe("pcca", batch_keyframes=32, epochs=12).optim
    assert pcca.step_epochs == [5, 8, 10] and pcca.lr == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no paper recipe for head 'lfb'"):
        scaled_recipe("lfb", batch_keyframes=8, epochs=1)


@pytest.mark.parametrize("head", ["acar", "amcr_slim", "sonly"])
def test_zero_initialised_relation_head_starts_as_a_per_actor_head(head):
    """With the residual relation branches at zero, an actor's logits do not depend on the
    other actors of its keyframe (eval mode, no dropout): alone in the keyframe, the first
    actor scores as it does beside two others."""
    torch.manual_seed(0)
    recipe = probe_recipe(head)
    model = build_recipe_head(head, recipe, in_channels=16, num_classes=3).eval()
    batch = random_actor_batch([3, 2], channels=16, height=8, width=12, roi_steps=2)
    first = torch.tensor([0])
    solo = select_actors(batch, first, torch.zeros(1, dtype=torch.long), batch.context[:1])
    together = model(batch).logits
    torch.testing.assert_close(model(solo).logits, together[:1], rtol=1e-4, atol=1e-5)
    # the same head without the zero init does depend on the other actors
    torch.manual_seed(0)
    plain = build_recipe_head(
        head, recipe.model_copy(update={"zero_init_residual": False}), in_channels=16,
        num_classes=3,
    ).eval()  # fmt: skip
    assert not torch.allclose(plain(solo).logits, plain(batch).logits[:1], atol=1e-5)


def test_zero_init_counts_the_branches_it_zeroes():
    acar = build_recipe_head("acar", probe_recipe("acar"), in_channels=16, num_classes=2)
    assert zero_init_residual(acar) == 2  # HR2O's two blocks
    linear = build_recipe_head("linear", probe_recipe("linear"), in_channels=16, num_classes=2)
    assert zero_init_residual(linear) == 0


def test_a_run_names_a_recipe_and_gets_it_scaled_to_its_batch_and_length():
    from stages.train.stage import HeadRunConfig

    run = HeadRunConfig.model_validate(
        {"head": "acar", "recipe": "paper", "optim": {"epochs": 35, "batch_keyframes": 16}}
    )
    assert run.optim == scaled_recipe("acar", batch_keyframes=16, epochs=35).optim
    assert run.zero_init
    # a field the run sets itself wins; another head's recipe by name
    own = HeadRunConfig.model_validate(
        {"head": "acrn", "recipe": "pcca", "optim": {"epochs": 12, "lr": 0.5}}
    )
    assert own.optim.lr == 0.5 and own.optim.step_epochs == [5, 8, 10]
    assert own.optim.weight_decay == pytest.approx(1e-4)
    # resolved at load: the dumped config (provenance) validates to the same run
    assert HeadRunConfig.model_validate(run.model_dump()) == run
    plain = HeadRunConfig(head="acar")
    assert plain.optim.optimizer == "adamw" and not plain.zero_init
    assert not HeadRunConfig.model_validate({"head": "acar", "recipe": "paper",
                                             "zero_init_residual": False}).zero_init  # fmt: skip


def test_a_recipe_enters_the_train_key():
    from stages.framework.keys import key_payload
    from stages.train.stage import HeadRunConfig

    plain = key_payload(HeadRunConfig(head="acar", optim={"epochs": 6}))
    paper = key_payload(HeadRunConfig(head="acar", recipe="paper", optim={"epochs": 6}))
    assert paper["recipe"] == "paper" and paper["optim"]["optimizer"] == "sgd"
    assert plain != paper


def test_unknown_recipe_is_refused_at_config_load(tmp_path):
    from stages.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("train: {runs: {acar: {head: acar, recipe: acarnet}}}\n")
    with pytest.raises(ConfigError, match=r"train.runs.acar: unknown recipe 'acarnet'; "
                                          r"expected one of paper, acar"):  # fmt: skip
        load_config(path)
    path.write_text("train: {runs: {lfb: {head: lfb, recipe: paper}}}\n")
    with pytest.raises(ConfigError, match="head 'lfb' has no paper recipe"):
        load_config(path)
