"""The rebalance (cRT) stage: class-balanced draws, frozen head, classifier-only change.

The trained runs come from the train stage on the tiny world's features (the shared
``features`` fixture of ``test_train``: one extraction per module).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from models.heads.batch import HeadOutput
from stages.evaluate import stage as evaluate
from stages.framework import StageError, StageRef, run_stage
from stages.train import rebalance
from stages.train import stage as train_stage
from stages.train.rebalance import ClassBalancedSampler
from tests.stages import test_train
from tests.stages.test_train import HEAD_KWARGS, Features

# The tiny world's features and the one-thread setting, shared with the train tests.
features = test_train.features
one_thread = test_train.one_thread


def imbalanced_labels(seed: int = 0) -> np.ndarray:
    """Multi-hot [A, 5]: class sizes about 2000, 400, 60, 12, 3; class 1 often rides
    with class 0; 300 actors carry no label."""
    rng = np.random.default_rng(seed)
    sizes = [2000, 400, 60, 12, 3]
    rows = []
    for c, n in enumerate(sizes):
        block = np.zeros((n, len(sizes)), np.float32)
        block[:, c] = 1
        if c == 0:
            block[rng.random(n) < 0.3, 1] = 1  # co-occurring labels
        rows.append(block)
    rows.append(np.zeros((300, len(sizes)), np.float32))
    return np.concatenate(rows)


def test_drawn_classes_are_uniform_chi_square() -> None:
    labels = imbalanced_labels()
    sampler = ClassBalancedSampler(labels, background_pool=True)
    assert sampler.num_pools == 6
    drawn, actors = sampler.draw(60_000, np.random.default_rng(123))
    counts = np.array([(drawn == c).sum() for c in [0, 1, 2, 3, 4, rebalance.BACKGROUND]])
    # Uniform over the 6 pools: a chi-square test at the 1% level under a fixed seed.
    assert stats.chisquare(counts).pvalue > 0.01
    # The instance-frequency sampler it replaces is rejected by the same test.
    plain = np.random.default_rng(123).integers(len(labels), size=60_000)
    plain_counts = [(labels[plain, c] > 0).sum() for c in range(5)]
    assert stats.chisquare(plain_counts).pvalue < 1e-100
    # Each drawn actor carries its drawn class (background: no label at all).
    for c in range(5):
        assert (labels[actors[drawn == c], c] == 1).all()
    assert (labels[actors[drawn == rebalance.BACKGROUND]].sum(axis=1) == 0).all()


def test_instances_within_a_class_are_uniform_and_multi_label_counts() -> None:
    labels = imbalanced_labels()
    sampler = ClassBalancedSampler(labels, background_pool=False)
    assert sampler.num_pools == 5
    drawn, actors = sampler.draw(50_000, np.random.default_rng(7))
    rare = np.flatnonzero(labels[:, 3])  # 12 actors
    picked = actors[drawn == 3]
    per_actor = np.array([(picked == a).sum() for a in rare])
    assert per_actor.sum() == len(picked)
    assert stats.chisquare(per_actor).pvalue > 0.01
    # Multi-label: class 1 is drawn directly (1/5) and rides along with class 0 draws.
    frac = (labels[actors] > 0).mean(axis=0)
    assert frac[1] == pytest.approx(0.2 + 0.2 * 0.3, abs=0.02)
    assert frac[4] == pytest.approx(0.2, abs=0.01)  # 3 actors, 1/5 of the draws
    assert (labels[actors].sum(axis=1) > 0).all()  # no background pool: never unlabelled


def test_sampler_refuses_no_labels() -> None:
    with pytest.raises(ValueError, match="at least one labelled actor"):
        ClassBalancedSampler(np.zeros((4, 3)), background_pool=False)
    with pytest.raises(ValueError, match=r"multi-hot \[A, C\]"):
        ClassBalancedSampler(np.zeros(4))


def test_head_tail_k_follows_the_reports() -> None:
    assert rebalance.head_tail_k(60) == 20 and rebalance.head_tail_k(80) == 20
    assert rebalance.head_tail_k(13) == 4 and rebalance.head_tail_k(59) == 19
    assert rebalance.head_tail_k(2) == 1


def test_crt_change_ranks_by_train_frequency() -> None:
    before = {1: 0.9, 2: 0.8, 3: 0.5, 4: 0.2, 5: 0.1, 6: 0.0}
    after = {1: 0.85, 2: 0.8, 3: 0.5, 4: 0.3, 5: 0.3, 6: 0.05}
    counts = {1: 500, 2: 300, 3: 100, 4: 30, 5: 10, 6: 2}
    change = rebalance.crt_change(before, after, counts)
    assert change["k"] == 2
    assert change["head_classes"] == [1, 2] and change["tail_classes"] == [5, 6]
    assert change["head_change"] == pytest.approx(-0.025)
    assert change["tail_change"] == pytest.approx(0.125)
    assert change["all_change"] == pytest.approx(np.mean([-0.05, 0, 0, 0.1, 0.2, 0.05]))
    assert [c for c, _ in change["most_improved"]] == [5, 4, 6]
    assert change["most_dropped"][0] == [1, pytest.approx(-0.05)]


class NoClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        return HeadOutput(logits=self.fc(x))


class ScaledAfterClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        return HeadOutput(logits=2.0 * self.classifier(x))


def test_heads_without_a_plain_final_classifier_are_refused() -> None:
    with pytest.raises(StageError, match="no final classifier"):
        rebalance.classifier_of(NoClassifier())
    with pytest.raises(StageError, match=r"differ from classifier\(input\)"):
        rebalance.classifier_inputs(ScaledAfterClassifier(), lambda: [torch.ones(3, 4)])


class PlainLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        return HeadOutput(logits=self.classifier(x))


def test_recorded_inputs_are_float16_only_while_float16_holds_them_exactly() -> None:
    """Inputs that are fp16 values (a linear head on an fp16 store) are kept in half the
    RAM with the same values; one input fp16 cannot hold turns the whole tensor float32."""
    head = PlainLinear().eval()
    halves = [torch.randn(3, 4).half().float() for _ in range(2)]
    kept = rebalance.classifier_inputs(head, lambda: iter(halves), rows=6)
    assert kept.dtype == torch.float16
    assert torch.equal(kept.float(), torch.cat(halves))
    late = [*halves, torch.full((1, 4), 1.0 + 2**-20)]  # not a float16 value
    kept = rebalance.classifier_inputs(head, lambda: iter(late), rows=7)
    assert kept.dtype == torch.float32
    assert torch.equal(kept, torch.cat(late))


@pytest.mark.parametrize(
    "module", ["test_heads_bank_acar_acfb", "test_heads_bank_tonly_memory", "test_heads_bank_igmn"]
)
def test_stage2_heads_expose_the_classifier_that_makes_their_logits(module: str) -> None:
    """Stage-2 heads wrap a stage-1 head: cRT must find and re-train the classifier that
    the forward pass uses (re-trained in place, as the stage does), not a stray copy."""
    import importlib

    tests = importlib.import_module(f"tests.models.{module}")
    torch.manual_seed(0)
    head = tests.tiny_head().eval()
    batch = tests.banked([2, 3], [4, 2])
    classifier = rebalance.classifier_of(head)
    recorded = rebalance.classifier_inputs(head, lambda: [batch])  # checks logits == fc(x)
    assert recorded.shape == (5, classifier.in_features)
    before = head(batch).logits
    retrained = copy.deepcopy(classifier)
    with torch.no_grad():
        retrained.bias.add_(1.0)
    classifier.load_state_dict(retrained.state_dict())
    assert torch.allclose(head(batch).logits, before + 1.0, atol=1e-5)


def trained(features: Features, root: Path, head: str) -> StageRef:
    config = features.config(head, head=head, head_kwargs=HEAD_KWARGS[head],
                             optim={"epochs": 2, "batch_keyframes": 8})  # fmt: skip
    return run_stage(train_stage.STAGE, config, {"extract": features.extract}, root)


def crt_config(features: Features, source: str, **settings) -> rebalance.RebalanceStageConfig:
    return rebalance.RebalanceStageConfig(
        dataset=features.dataset, dataset_fingerprint=features.fingerprint,
        name=rebalance.crt_name(source), source=source,
        rebalance=rebalance.RebalanceSettings(**{"epochs": 2, **settings}),
    )  # fmt: skip


@pytest.mark.parametrize("head", ["linear", "acar"])
def test_crt_changes_only_the_classifier(features: Features, tmp_path: Path, head: str) -> None:
    model = trained(features, tmp_path, head)
    ref = run_stage(rebalance.STAGE, crt_config(features, head),
                    {"model": model, "extract": features.extract}, tmp_path)  # fmt: skip
    before = torch.load(model.path / train_stage.HEAD_FILE, weights_only=True)
    after = torch.load(ref.path / train_stage.HEAD_FILE, weights_only=True)
    assert before["state"].keys() == after["state"].keys()
    frozen = [k for k in before["state"] if not k.startswith("classifier.")]
    assert len(frozen) == 0 if head == "linear" else len(frozen) > 10
    for name in frozen:  # bitwise: the frozen part is exactly the trained one
        assert torch.equal(before["state"][name], after["state"][name]), name
    # The released ACAR head's classifier has no bias (ACAR-Net's fc2): every classifier
    # tensor the head has must change.
    retrained = [k for k in before["state"] if k.startswith("classifier.")]
    assert "classifier.weight" in retrained
    for name in retrained:
        assert not torch.equal(before["state"][name], after["state"][name]), name
    assert {k: after[k] for k in ("head", "kwargs", "in_channels", "classes")} == {
        k: before[k] for k in ("head", "kwargs", "in_channels", "classes")
    }
    # Outputs as train writes them: the evaluate stage takes the rebalanced run.
    assert (ref.path / "predictions" / "val.parquet").is_file()
    assert not (ref.path / rebalance.INPUTS_CACHE).exists()
    metrics = json.loads((ref.path / train_stage.METRICS_FILE).read_text())
    assert metrics["mAP"] == pytest.approx(ref.summary["val_map"])
    assert metrics["before"]["mAP"] == pytest.approx(model.summary["val_map"], abs=1e-9)
    eval_config = evaluate.EvaluateStageConfig(
        dataset=features.dataset, dataset_fingerprint=features.fingerprint,
        evaluate=evaluate.EvaluateConfig(),
    )  # fmt: skip
    ev = run_stage(evaluate.STAGE, eval_config, {"predictions": ref}, tmp_path)
    assert ev.summary["mAP"] == pytest.approx(ref.summary["val_map"], abs=1e-6)
    crt = json.loads((ref.path / rebalance.CRT_FILE).read_text())
    summary_crt = ref.summary["crt"]
    assert summary_crt["k"] == rebalance.head_tail_k(len(crt["per_class"]))
    per_class = crt["per_class"]
    tail = [per_class[str(c)]["after"] - per_class[str(c)]["before"] for c in crt["tail_classes"]]
    assert summary_crt["tail_change"] == pytest.approx(np.mean(tail))
    counts = [per_class[str(c)]["train_count"] for c in crt["head_classes"] + crt["tail_classes"]]
    assert counts == sorted(counts, reverse=True)
    assert ref.summary["val_map_before"] == pytest.approx(model.summary["val_map"], abs=1e-9)


def test_crt_is_deterministic_and_keyed_by_its_input(features: Features, tmp_path: Path) -> None:
    model = trained(features, tmp_path / "a", "linear")
    inputs = {"model": model, "extract": features.extract}
    one = run_stage(rebalance.STAGE, crt_config(features, "linear"), inputs, tmp_path / "a")
    two = run_stage(rebalance.STAGE, crt_config(features, "linear"), inputs, tmp_path / "b")
    assert one.key == two.key and one.summary["val_map"] == two.summary["val_map"]
    a = torch.load(one.path / train_stage.HEAD_FILE, weights_only=True)["state"]
    b = torch.load(two.path / train_stage.HEAD_FILE, weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = run_stage(rebalance.STAGE, crt_config(features, "linear", seed=1), inputs,
                      tmp_path / "a")  # fmt: skip
    assert other.key != one.key


def test_an_offline_bank_run_is_rebalanced_with_its_bank(
    tiny_world: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A stage-2 (lfb over a dumped bank) run: batches carry the run's bank windows."""
    from stages.train import bank as train_bank
    from stages.train import dump as dump_stage
    from tests.stages.test_dump import stage1_outputs

    stage1 = stage1_outputs(tiny_world, tmp_path_factory)
    bank = run_stage(dump_stage.STAGE, stage1.dump_config(), stage1.inputs(), tmp_path)
    config = train_bank.TrainBankStageConfig(
        dataset=stage1.dataset, dataset_fingerprint=stage1.fingerprint, name="lfb",
        run=train_bank.BankRunConfig(
            head="lfb", head_kwargs={"hidden_dim": 16, "num_layers": 1}, bank="lfb",
            window={"before": 4, "after": 2}, optim={"epochs": 2, "batch_keyframes": 8},
        ),
    )  # fmt: skip
    model = run_stage(train_bank.STAGE, config, {"extract": stage1.extract, "dump": bank},
                      tmp_path)  # fmt: skip
    crt = rebalance.RebalanceStageConfig(
        dataset=stage1.dataset, dataset_fingerprint=stage1.fingerprint, name="lfb_crt",
        source="lfb", rebalance=rebalance.RebalanceSettings(epochs=2),
    )  # fmt: skip
    ref = run_stage(rebalance.STAGE, crt, {"model": model, "extract": stage1.extract}, tmp_path)
    before = torch.load(model.path / train_stage.HEAD_FILE, weights_only=True)
    after = torch.load(ref.path / train_stage.HEAD_FILE, weights_only=True)
    frozen = [k for k in before["state"] if not k.startswith("classifier.")]
    assert len(frozen) > 4
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in frozen)
    assert not torch.equal(
        before["state"]["classifier.weight"], after["state"]["classifier.weight"]
    )
    assert after["bank_kind"] == "lfb" and ref.summary["val_map_before"] == pytest.approx(
        model.summary["val_map"], abs=1e-9)  # fmt: skip


def test_other_stage_outputs_are_refused(features: Features, tmp_path: Path) -> None:
    model = trained(features, tmp_path, "linear")
    fake = model.model_copy(update={"stage": "evaluate"})
    with pytest.raises(StageError, match=r"is a 'evaluate' output; expected a train"):
        run_stage(rebalance.STAGE, crt_config(features, "linear"),
                  {"model": fake, "extract": features.extract}, tmp_path)  # fmt: skip
    # A train_bank run must name its bank (its dump input) in its provenance.
    fake = model.model_copy(update={"stage": "train_bank"})
    with pytest.raises(StageError, match=r"had no 'dump' input"):
        run_stage(rebalance.STAGE, crt_config(features, "linear"),
                  {"model": fake, "extract": features.extract}, tmp_path)  # fmt: skip


@pytest.mark.slow  # two spawned processes import torch and open the stores
def test_two_processes_rebalance_like_one(features: Features, tmp_path: Path) -> None:
    """cRT on 2 gloo processes (inputs recorded in slices, draws split): the classifier
    within 1e-5 of one process's, the val mAP within 1e-4, the same key."""
    model = trained(features, tmp_path / "a", "acar")
    inputs = {"model": model, "extract": features.extract}
    one = run_stage(rebalance.STAGE, crt_config(features, "acar", batch_actors=16), inputs,
                    tmp_path / "a")  # fmt: skip
    config = crt_config(features, "acar", batch_actors=16, devices=2)
    two = run_stage(rebalance.STAGE, config, inputs, tmp_path / "b")
    assert two.key == one.key
    a = torch.load(one.path / train_stage.HEAD_FILE, weights_only=True)["state"]
    b = torch.load(two.path / train_stage.HEAD_FILE, weights_only=True)["state"]
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"cRT 2 processes vs 1: max |w diff| = {diff:.3g}, val mAP "
          f"{two.summary['val_map']:.6f} vs {one.summary['val_map']:.6f}")  # fmt: skip
    assert diff < 1e-5
    assert abs(two.summary["val_map"] - one.summary["val_map"]) < 1e-4
    assert not (two.path / rebalance.INPUTS_CACHE).exists()
