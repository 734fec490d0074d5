"""rebalance: decoupled classifier re-training with class-balanced sampling (cRT).

Both challenge reports (AVA-Kinetics §2.4, PCCA §2.3) take their last long-tail points
from the decoupling recipe of Kang et al. (ICLR 2020): stage one trains the whole head
with instance-balanced (ordinary) sampling; stage two freezes everything but the final
classifier and re-trains it for a few epochs on class-balanced batches.

How it runs here:

1. The trained run (``head.pt`` of a ``train`` or ``train_bank`` output) is rebuilt and
   frozen. Its final classifier is found generically: every head keeps it as the
   ``classifier`` attribute, an ``nn.Linear`` (a head without one is refused).
2. One pass over the training actors, the head in eval mode (dropout off), records what
   goes *into* the classifier (a forward hook). The first batch checks that the head's
   logits are exactly ``classifier(input)``, so re-training on the recorded inputs is the
   same as re-training inside the frozen head. The recorded inputs are kept in the staging
   directory: a killed run does not redo this pass.
3. The classifier (a copy, fine-tuned from its trained weights unless ``reinit``) is
   trained on draws of :class:`ClassBalancedSampler` with the same loss as the head.
4. The head with its new classifier predicts the val split through the one prediction
   loop, and the outputs are written exactly as ``train`` writes them (``head.pt``,
   ``metrics.json``, ``predictions/<val>.{csv,parquet}``), so ``evaluate``, ``ensemble``
   and ``report`` take a rebalanced run like any other model.

The per-class AP before and after is written to ``crt.json``, with the mean change over
the ``k`` most and ``k`` least frequent training classes (by GT rows), as both reports'
tables list it: k = 20 for 60 or more classes, else a third of the classes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.heads import Head, head_reads
from models.losses import ava_loss, loss_normalizers
from stages.catalog import STAGES  # the catalog holds specs only: no cycle
from stages.data import Dataset
from stages.data.predictions import (
    stream_predictions_parquet,
    write_predictions_csv,
    write_predictions_parquet,
)
from stages.evaluate.ava import evaluate_ava
from stages.evaluate.breakdown import head_tail_change
from stages.evaluate.stage import PREDICTIONS_DIR
from stages.extract.stage import store_path
from stages.framework import (
    StageContext,
    StageError,
    verify_published_file,
)
from stages.framework.distributed import (
    all_reduce_gradients,
    all_reduce_sum,
    barrier,
    is_main,
    run_data_parallel,
    shard,
    world,
)
from stages.train import stage as train_stage
from stages.train.config import REBALANCE as STAGE  # noqa: F401 (the stage, for stages.catalog)
from stages.train.config import (  # noqa: F401 (re-exported)
    RebalanceSection,
    RebalanceSettings,
    RebalanceStageConfig,
    crt_name,
)
from stages.train.data import open_training_splits
from stages.train.loop import TrainData, epoch_batches, iter_batches, predict, read_batch
from stages.train.run import (
    HEAD_FILE,
    TrainedRun,
    read_provenance,
    save_head_file,
    upstream_dir,
)

CRT_FILE = "crt.json"
INPUTS_CACHE = "classifier_inputs.pt"  # staging only: the recorded classifier inputs
HEAD_TAIL_K = 20  # the reports' top-20 / bottom-20
BACKGROUND = -1  # the sampler's pool of actors without any label

log = logging.getLogger("bankflow.rebalance")


def head_tail_k(num_classes: int) -> int:
    """The reports' top/bottom-20; with fewer than 60 classes, a third of them (>= 1)."""
    return HEAD_TAIL_K if num_classes >= 3 * HEAD_TAIL_K else max(num_classes // 3, 1)


class ClassBalancedSampler:
    """Draws actors so that every class is equally likely (Kang et al.'s class-balanced
    sampling): first a class uniformly among the classes that have instances, then one
    of that class's instances uniformly.

    Multi-label: an actor carrying several classes sits in the pool of each of them, so it
    can be drawn through any of its classes (its chance is the sum over its classes of
    1 / (#pools × pool size)); whichever class drew it, it is trained with its full
    multi-hot target. The *drawn* class is therefore exactly uniform, while label
    frequencies in the batches are only approximately so (co-occurring labels ride along).
    With ``background_pool`` the actors without any label form one more pool.

    Args:
        labels: multi-hot float/bool [A, C].
    """

    def __init__(self, labels: np.ndarray, *, background_pool: bool = True) -> None:
        labels = np.asarray(labels) > 0.5
        if labels.ndim != 2:
            raise ValueError(f"labels must be multi-hot [A, C], got shape {labels.shape}")
        pools = [np.flatnonzero(labels[:, c]) for c in range(labels.shape[1])]
        names = list(range(labels.shape[1]))
        if background_pool:
            pools.append(np.flatnonzero(~labels.any(axis=1)))
            names.append(BACKGROUND)
        keep = [i for i, p in enumerate(pools) if len(p)]
        if not keep:
            raise ValueError("class-balanced sampling needs at least one labelled actor")
        self.pool_class = np.asarray([names[i] for i in keep], dtype=np.int64)
        self.pool_size = np.asarray([len(pools[i]) for i in keep], dtype=np.int64)
        self._members = np.concatenate([pools[i] for i in keep])
        self._start = np.concatenate([[0], np.cumsum(self.pool_size)[:-1]])

    @property
    def num_pools(self) -> int:
        return len(self.pool_class)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(drawn class [n] — a dense class index or ``BACKGROUND`` —, actor index [n])."""
        pool = rng.integers(self.num_pools, size=n)
        within = np.floor(rng.random(n) * self.pool_size[pool]).astype(np.int64)
        return self.pool_class[pool], self._members[self._start[pool] + within]


def classifier_of(model: nn.Module) -> nn.Linear:
    """The head's final classifier: its ``classifier`` attribute, an ``nn.Linear`` (the head
    contract, :mod:`models.heads.contract`; any module is checked)."""
    layer = getattr(model, "classifier", None)
    if not isinstance(layer, nn.Linear):
        raise StageError(
            f"rebalance: {type(model).__name__} has no final classifier to re-train "
            f"(expected an nn.Linear attribute 'classifier', found {type(layer).__name__})"
        )
    return layer


@torch.no_grad()
def classifier_inputs(
    model: nn.Module,
    batches: Callable[[], Any],
    *,
    check_atol: float = 1e-4,
    rows: int | None = None,
) -> torch.Tensor:
    """What enters ``model.classifier`` for every actor, float32 [A, D], in batch order.

    ``batches()`` yields the head's input batches. The head runs in eval mode (dropout is
    the identity). The first non-empty batch must satisfy ``logits == classifier(input)``
    (to ``check_atol``): a head that changes the logits after its classifier cannot be
    re-trained on the recorded inputs, and is refused. ``rows``: A when known; the inputs
    are then written into one [A, D] tensor as they come (the memory of one copy, not of
    the batches' list plus their concatenation). That tensor is float16 while every input
    is exactly a float16 value (a linear head on an fp16 store: the stored features
    themselves), else float32: half the RAM at AVA scale (issue 22), the same values.
    """
    classifier = classifier_of(model)
    model.eval()
    captured: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    out: list[torch.Tensor] = []
    filled: torch.Tensor | None = None
    at = 0
    checked = False
    try:
        for batch in batches():
            captured.clear()
            logits = model(batch).logits
            if len(captured) != 1:
                raise StageError(
                    f"rebalance: {type(model).__name__}.classifier ran {len(captured)} times "
                    "in one forward pass; expected exactly once"
                )
            x = captured[0].detach().float()
            if not checked and len(x):
                gap = float((classifier(x) - logits).abs().max())
                if gap > check_atol:
                    raise StageError(
                        f"rebalance: {type(model).__name__}'s logits differ from "
                        f"classifier(input) by {gap:.3g}; only heads whose logits are the "
                        "classifier's output can be rebalanced"
                    )
                checked = True
            if rows is None:
                out.append(x)
                continue
            exact = bool(torch.equal(x.half().float(), x))
            if filled is None:
                dtype = torch.float16 if exact else torch.float32
                filled = torch.empty((rows, classifier.in_features), dtype=dtype)
            elif filled.dtype == torch.float16 and not exact:
                filled = filled.float()  # an input fp16 cannot hold: float32 from here on
            if at + len(x) > len(filled):
                raise StageError(f"rebalance: more than the {rows} expected classifier inputs")
            filled[at : at + len(x)] = x
            at += len(x)
    finally:
        hook.remove()
    if rows is not None:
        if filled is None:  # no batch (no actors)
            filled = torch.empty((rows, classifier.in_features))
        if at != len(filled):
            raise StageError(f"rebalance: {at} classifier inputs, expected {rows}")
        return filled
    return torch.cat(out) if out else torch.zeros((0, classifier.in_features))


def _lr_factor(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


def retrain_classifier(
    classifier: nn.Linear,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    settings: RebalanceSettings,
    exclusive: list[int],
    *,
    loss_mode: Literal["ava", "bce"] = "ava",
) -> list[dict[str, Any]]:
    """Re-train ``classifier`` in place on class-balanced draws of (inputs [A, D],
    multi-hot labels [A, C]); cosine learning rate over all steps. Epoch ``e`` draws from
    ``default_rng([seed, e])``. Returns the per-epoch loss, draws and seconds."""
    if settings.reinit:
        torch.manual_seed(settings.seed)
        classifier.reset_parameters()
    sampler = ClassBalancedSampler(labels.numpy(), background_pool=settings.background_pool)
    labelled = int((labels.sum(dim=1) > 0).sum())
    n = settings.samples_per_epoch or max(labelled, settings.batch_actors)
    steps_per_epoch = math.ceil(n / settings.batch_actors)
    params = list(classifier.parameters())
    if settings.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    rank, size = world()
    classifier.train()
    history = []
    for epoch in range(settings.epochs):
        t0 = time.perf_counter()
        _drawn, actors = sampler.draw(n, np.random.default_rng([settings.seed, epoch]))
        losses = []
        for rows in epoch_batches(actors, settings.batch_actors):
            norms = None
            if size > 1:  # this rank's slice; its loss is its share of the batch's
                norms = loss_normalizers(labels[torch.from_numpy(rows)], exclusive, loss_mode)
                rows = shard(rows, rank, size)[0]
            idx = torch.from_numpy(rows)
            loss = ava_loss(
                classifier(inputs[idx].float()),  # float16 when exact (classifier_inputs)
                labels[idx],
                exclusive=exclusive,
                mode=loss_mode,
                normalizers=norms,
            )
            total = all_reduce_sum(loss.detach())
            if not torch.isfinite(total):
                raise StageError(f"rebalance: non-finite loss at epoch {epoch}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_gradients(classifier)
            optimizer.step()
            scheduler.step()
            losses.append(float(total))
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "samples": int(n),
                "pools": int(sampler.num_pools),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    classifier.eval()
    return history


def model_data(
    trained: TrainedRun,
    model_stage: str,
    features_uri: str,
    dataset: Dataset,
    labelmap: Any,
    reads: frozenset[str] | None = None,
) -> TrainData:
    """The train / val sources and batch reader the model was trained with.

    A stage-1 run reads the extract stage's feature stores. An offline ``train_bank`` run
    also gets its bank windows through :func:`stages.train.bank.bank_attach` (the bank
    found through the run's provenance: its ``dump`` input, whose key the run's key, and
    so this stage's key, already covers). Online-memory runs are refused: their memory is
    written by the forward pass and is not part of ``head.pt``.
    """
    run_dir, run = trained.path, trained.run_config
    splits = open_training_splits(
        partial(store_path, features_uri),
        dataset,
        labelmap,
        train_split=run.train_split,
        val_split=run.val_split,
        label_iou=run.label_iou,
        who="rebalance",
    )
    schema = splits.train_store.schema
    # ``reads``: the arrays the head looks at (``head_reads``); None: every stored one.
    arrays = train_stage.stored_arrays(schema)
    if reads is not None:
        arrays &= set(reads)
    # Read from the store, whatever the run's ``preload``: cRT reads each split once (one
    # pass records the training inputs, one predicts val), and a preloaded copy beside
    # the recorded inputs doubled its peak (issue 22).
    data = TrainData(
        *train_stage.feature_sources(
            splits, arrays, False, run.preload_max_gb, f"rebalance {run_dir.name}"
        ),
        exclusive=splits.exclusive,
        use_roi="roi" in arrays,
        use_roi_t="roi_t" in arrays,
    )
    if model_stage == "train_bank":
        data.attach = _bank_attach(trained, data)
    return data


def _bank_attach(trained: TrainedRun, data: TrainData) -> Any:
    """The offline bank-window hook of a train_bank run (its dump found by provenance)."""
    from featurestore.banks import BankStore
    from stages.train.bank import BankRunConfig, bank_attach
    from stages.train.dump import bank_path

    run_dir, run = trained.path, trained.run_config
    if isinstance(run, BankRunConfig) and run.bank_mode != "offline":
        raise StageError(
            f"rebalance: {run_dir} is an online-memory train_bank run; its memory is filled "
            "by the forward pass and not saved with head.pt, so its classifier cannot be "
            "re-trained here (rebalance an offline-bank run instead)"
        )
    dump_dir = upstream_dir(run_dir, read_provenance(run_dir), "dump")
    if not isinstance(run, BankRunConfig):
        raise StageError(f"rebalance: {run_dir} has a dump input but a stage-1 run config")
    assert data.val is not None  # model_data gives a val source
    banks = [
        (source, BankStore.open(bank_path(dump_dir, split)))
        for source, split in ((data.train, run.train_split), (data.val, run.val_split))
    ]
    return bank_attach(banks, run.window, preload=run.bank_preload)


def compute(ctx: StageContext[RebalanceStageConfig]) -> dict[str, Any]:
    """The stage on ``rebalance.devices`` data-parallel processes (stages.framework.distributed)."""
    devices = ctx.config.rebalance.devices
    return run_data_parallel(compute_rank, ctx, devices=devices)


def record_inputs(model: nn.Module, data: TrainData, cache: Path) -> torch.Tensor:
    """The classifier inputs of every training actor, recorded once into ``cache`` (each
    data-parallel rank records its slice of the keyframes; rank 0 joins them)."""
    rank, size = world()
    barrier()
    if not cache.is_file():
        source = data.train
        mine, _ = shard(np.arange(len(source.index)), rank, size)
        batches = epoch_batches(mine, 32)
        counts = np.diff(source.index.actor_offset)
        inputs = classifier_inputs(
            model,
            lambda: iter_batches(source, batches, lambda kf: read_batch(source, kf, data)),
            rows=int(counts[mine].sum()),
        )
        parts = [cache.with_name(f".{cache.name}.rank{r}") for r in range(size)]
        torch.save(inputs, parts[rank])
        del inputs  # one copy in RAM at a time: the one loaded below
        barrier()
        if rank == 0:
            tmp = cache.with_name(f".{cache.name}.tmp")
            if size == 1:
                parts[0].replace(tmp)
            else:
                joined = torch.cat([torch.load(p, weights_only=True) for p in parts])
                torch.save(joined, tmp)
                del joined
                for p in parts:
                    p.unlink()
            tmp.replace(cache)
        barrier()
    return torch.load(cache, weights_only=True)


def compute_rank(ctx: StageContext[RebalanceStageConfig]) -> dict[str, Any]:
    """One rank's part: every rank re-trains; rank 0 evaluates and writes the outputs."""
    cfg = ctx.config
    settings = cfg.rebalance
    model_ref = ctx.input("model")
    run_dir, features_uri = model_ref.path, ctx.input("extract").uri
    # A model with a trained head: an output of a stage whose trait says it is a trained run
    # (train, train_bank, rebalance).
    trained_runs = tuple(name for name, stage in STAGES.items() if stage.trained_run)
    if model_ref.stage not in trained_runs:
        raise StageError(
            f"rebalance: {run_dir} is a {model_ref.stage!r} output; expected a "
            f"{', '.join(trained_runs[:-1])} or {trained_runs[-1]} run"
        )
    trained = TrainedRun.open(run_dir, stages=trained_runs)
    run = trained.run_config
    train_split, val_split, loss_mode = run.train_split, run.val_split, run.optim.loss
    dataset = Dataset.open(cfg.dataset)
    labelmap = train_stage.evaluated_labelmap(dataset, cfg.dataset)
    model: Head = trained.build_head()
    saved = trained.saved
    if [int(c) for c in saved["classes"]] != [int(c) for c in labelmap.ids]:
        raise StageError(
            f"rebalance: {run_dir / HEAD_FILE} predicts classes "
            f"{saved['classes']}, the dataset evaluates {labelmap.ids.tolist()}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    classifier = classifier_of(model)
    data = model_data(
        trained, model_ref.stage, features_uri, dataset, labelmap, reads=head_reads(model)
    )
    exclusive = data.exclusive
    train_index = data.train.index
    assert data.val is not None

    t0 = time.perf_counter()
    cache = ctx.staging / INPUTS_CACHE
    inputs = record_inputs(model, data, cache)
    data.train.release()  # recorded: the training split's preloaded rows are not read again
    if len(inputs) != len(train_index.boxes):
        raise StageError(
            f"rebalance: recorded {len(inputs)} classifier inputs for "
            f"{len(train_index.boxes)} training actors ({cache}); remove it and rerun"
        )
    labels = torch.from_numpy(train_index.labels)
    new_classifier = copy.deepcopy(classifier)
    for p in new_classifier.parameters():
        p.requires_grad_(True)
    history = retrain_classifier(
        new_classifier, inputs, labels, settings, exclusive, loss_mode=loss_mode
    )
    # In place: a head may reach its classifier through a property of a sub-module
    # (IGMN's DAM, ACAR+ACFB's ACAR); assigning an attribute would leave that one in use.
    classifier.load_state_dict(new_classifier.state_dict())
    del inputs, labels  # before the val evaluation: its RAM, not theirs (issue 22)
    train_seconds = time.perf_counter() - t0
    if not is_main():
        return {}

    val_index = data.val.index
    scores = predict(model, data.val, data)
    table = train_stage.prediction_rows(val_index, scores, labelmap, run.top_k)  # made per block
    gt_val, excluded_val = dataset.gt(val_split), dataset.excluded(val_split)
    after = evaluate_ava(gt_val, table, labelmap, excluded_val)
    before_path = run_dir / PREDICTIONS_DIR / f"{val_split}.parquet"
    if not before_path.is_file():
        raise StageError(f"rebalance: {before_path} does not exist (no predictions before cRT)")
    verify_published_file(run_dir, f"{PREDICTIONS_DIR}/{before_path.name}")
    before = evaluate_ava(gt_val, stream_predictions_parquet(before_path), labelmap, excluded_val)
    train_counts = class_counts(dataset.gt(train_split).action, labelmap.ids)
    change = crt_change(before.per_class, after.per_class, train_counts)

    out = ctx.staging / PREDICTIONS_DIR
    out.mkdir(exist_ok=True)
    write_predictions_csv(out / f"{val_split}.csv", table)
    write_predictions_parquet(out / f"{val_split}.parquet", table)
    save_head_file(
        ctx.staging, **{**saved, "state": model.state_dict(), "rebalanced_from": str(run_dir)}
    )
    (ctx.staging / train_stage.HISTORY_FILE).write_text(json.dumps(history, indent=2))
    metrics = {**after.to_json(), "before": before.to_json()}
    (ctx.staging / train_stage.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    crt = {
        **change,
        "per_class": {
            str(c): {
                "name": labelmap.name(c),
                "train_count": train_counts.get(c, 0),
                "before": before.per_class[c],
                "after": after.per_class[c],
            }
            for c in sorted(set(before.per_class) & set(after.per_class))
        },
    }
    (ctx.staging / CRT_FILE).write_text(json.dumps(crt, indent=2))
    cache.unlink()  # the recorded inputs served their purpose; keep the output small
    log.info(
        "%s: val mAP %.4f -> %.4f (tail %+.4f, head %+.4f)",
        cfg.name,
        before.mAP,
        after.mAP,
        change["tail_change"],
        change["head_change"],
    )
    source_summary = _source_summary(run_dir)
    return {
        "name": cfg.name,
        "source": cfg.source,
        "head": saved["head"],
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "retrained_parameters": int(sum(p.numel() for p in classifier.parameters())),
        "train_seconds": round(train_seconds, 2),
        "val_map": after.mAP,
        "val_map_before": before.mAP,
        "group_map": after.groups,
        "prior_map": source_summary.get("prior_map"),
        "epochs": len(history),
        "history": history,
        "crt": {k: v for k, v in change.items() if k not in ("head_classes", "tail_classes")},
        "predictions_csv": ctx.relpath(PREDICTIONS_DIR, f"{val_split}.csv"),
    }


def _source_summary(run_dir: Path) -> dict[str, Any]:
    marker = run_dir / "COMPLETE.json"
    return json.loads(marker.read_text()).get("summary", {}) if marker.is_file() else {}


def class_counts(actions: np.ndarray, class_ids: np.ndarray) -> dict[int, int]:
    """GT rows per class id (the "number of labelled samples" the reports rank by)."""
    ids, counts = np.unique(np.asarray(actions, dtype=np.int64), return_counts=True)
    found = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    return {int(c): int(found.get(int(c), 0)) for c in class_ids}


def crt_change(
    before: Mapping[int, float], after: Mapping[int, float], train_counts: Mapping[int, int]
) -> dict[str, Any]:
    """Head/tail and all-class mean AP change (after − before) on the shared classes,
    plus the three most improved and the three most dropped classes (as the
    AVA-Kinetics report's Table 3 lists them)."""
    shared = sorted(set(before) & set(after))
    if len(shared) < 2:
        raise StageError(f"rebalance: head/tail needs 2 evaluated classes, got {len(shared)}")
    k = head_tail_k(len(shared))
    change = head_tail_change(dict(before), dict(after), dict(train_counts), k)
    delta = {c: after[c] - before[c] for c in shared}
    ranked = sorted(shared, key=lambda c: (-delta[c], c))
    return {
        **change,
        "all_before": float(np.mean([before[c] for c in shared])),
        "all_after": float(np.mean([after[c] for c in shared])),
        "all_change": float(np.mean(list(delta.values()))),
        "most_improved": [[c, delta[c]] for c in ranked[:3]],
        "most_dropped": [[c, delta[c]] for c in ranked[::-1][:3]],
    }
