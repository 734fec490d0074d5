"""The train, dump, train_bank and rebalance stages as the catalog sees them: config
sections, code versions and traits, without their compute (torch), which is imported only
when a stage runs (docs/design.md §1). The bank window's :class:`WindowConfig` lives here
for the same reason, the training loop's :class:`OptimConfig` in :mod:`stages.train.optim`
(re-exported here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from stages.data.dataset import DatasetConfig
from stages.framework import Stage
from stages.framework.keys import InKey, NotInKey
from stages.train.optim import OptimConfig as OptimConfig  # re-exported: the loop's section

# Checks against the heads themselves (head_kwargs against a head's constructor, bank kinds
# against what the heads declare) import the head registry, i.e. torch. They run in a
# validation with ``context={HEADS_CHECK: True}``: stages.config.load_config validates a
# config without them first (every other mistake in about a second, no torch), then with
# them; ``bankflow status`` and ``config show`` leave them out. Defaults (a ``linear`` run)
# are built without them too, so importing this module imports no torch.
HEADS_CHECK = "check_heads"

# The optim fields a recipe sets (epochs and batch_keyframes stay the run's: the scale).
RECIPE_OPTIM_FIELDS = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "schedule",
    "step_epochs",
)


def heads_checked(info: ValidationInfo) -> bool:
    """Whether this validation checks configs against the heads."""
    return isinstance(info.context, dict) and info.context.get(HEADS_CHECK) is True


def check_head_kwargs(head: str, kwargs: dict[str, Any], info: ValidationInfo) -> None:
    """A typo in ``head_kwargs`` fails at config load (models.heads.contract)."""
    if heads_checked(info):
        from models.heads.contract import validate_head_kwargs  # torch

        validate_head_kwargs(head, kwargs)


class WindowConfig(BaseModel):
    """Which bank entries a keyframe sees (seconds relative to the keyframe)."""

    model_config = ConfigDict(extra="forbid")

    before: InKey[float] = Field(30.0, ge=0)  # LFB: 60 s window = 30 s each side
    after: InKey[float] = Field(30.0, ge=0)
    include_current: InKey[bool] = True  # keep the current keyframe's own actors
    max_per_second: InKey[int | None] = Field(None, ge=1)  # None: every actor of every second


class HeadRunConfig(BaseModel):
    """One head training run (``train.runs.<name>`` in the pipeline config)."""

    model_config = ConfigDict(extra="forbid")

    head: InKey[str] = "linear"
    head_kwargs: InKey[dict[str, Any]] = {}
    optim: InKey[OptimConfig] = OptimConfig()
    train_split: InKey[str] = "train"
    val_split: InKey[str] = "val"
    # IoU with a GT box that gives a detected box its labels
    label_iou: InKey[float] = Field(0.5, gt=0.0, le=1.0)
    # Hold the arrays the head reads in RAM: True, False (read each batch from the store,
    # prefetched in a thread), or "auto": in RAM when they take at most preload_max_gb.
    preload: NotInKey[bool | Literal["auto"]] = "auto"
    preload_max_gb: NotInKey[float] = Field(8.0, ge=0.0)
    # keep only the k best classes per box in the predictions (None: every class)
    top_k: InKey[int | None] = Field(None, ge=1)
    # A paper's training recipe scaled to this run (stages/train/recipes.py): "paper" (the head's
    # own) or a recipe's name ("acar", ...). It sets every optim field the run does not set
    # itself (optimizer, lr scaled to optim.batch_keyframes, momentum, weight decay, warm-up,
    # step schedule at the paper's fractions of optim.epochs) and zero-initialises the
    # residual relation branches. Resolved at load, so the resolved optim enters the key.
    recipe: InKey[str | None] = None
    # None: True with a recipe, else False (the heads' own initialisation)
    zero_init_residual: InKey[bool | None] = None

    @model_validator(mode="after")
    def _apply_recipe(self) -> HeadRunConfig:
        if self.recipe is None:
            return self
        # Imported here, as the head registry below: loading a config imports no torch.
        from stages.train.recipes import PAPER_RECIPES, scaled_recipe

        name = self.head if self.recipe == "paper" else self.recipe
        if name not in PAPER_RECIPES:
            known = ", ".join(["paper", *sorted(PAPER_RECIPES)])
            what = (
                f"head {self.head!r} has no paper recipe"
                if self.recipe == "paper"
                else (f"unknown recipe {self.recipe!r}")
            )
            raise ValueError(f"{what}; expected one of {known}")
        paper = scaled_recipe(
            name, batch_keyframes=self.optim.batch_keyframes, epochs=self.optim.epochs
        ).optim
        given = self.optim.model_fields_set
        update = {k: getattr(paper, k) for k in RECIPE_OPTIM_FIELDS if k not in given}
        self.optim = self.optim.model_copy(update=update)
        return self

    @property
    def zero_init(self) -> bool:
        """Whether training starts with the residual relation branches at zero."""
        if self.zero_init_residual is None:
            return self.recipe is not None
        return self.zero_init_residual

    @model_validator(mode="after")
    def _head_takes_kwargs(self, info: ValidationInfo) -> HeadRunConfig:
        check_head_kwargs(self.head, self.head_kwargs, info)
        return self


class TrainSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: dict[str, HeadRunConfig] = Field(default_factory=lambda: {"linear": HeadRunConfig()})


class TrainStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    name: InKey[str]
    run: InKey[HeadRunConfig]


# A bank kind is one the heads declare (models.heads.BANK_KINDS), checked with the heads:
# a new kind needs no change here.
BankKind = str


class BankDumpConfig(BaseModel):
    """One bank (``dump.banks.<name>`` in the pipeline config)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: InKey[str] = Field(alias="from")  # the stage-1 train run whose head fills the bank
    kind: InKey[BankKind] = "lfb"
    splits: InKey[list[str] | None] = None  # None: every split the feature store has
    batch_keyframes: NotInKey[int] = Field(32, ge=1)  # keyframes per head forward

    @model_validator(mode="after")
    def _kind_of_a_head(self, info: ValidationInfo) -> BankDumpConfig:
        if heads_checked(info):
            from models.heads import BANK_KINDS  # torch

            if self.kind not in BANK_KINDS:
                raise ValueError(
                    f"kind: {self.kind!r} is not a bank kind of the heads ({', '.join(BANK_KINDS)})"
                )
        return self


class DumpSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    banks: dict[str, BankDumpConfig] = {}


class DumpStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: InKey[str]
    bank: InKey[BankDumpConfig]


class BankRunConfig(BaseModel):
    """One stage-2 run (``train_bank.runs.<name>`` in the pipeline config)."""

    model_config = ConfigDict(extra="forbid")

    head: InKey[str] = "lfb"
    head_kwargs: InKey[dict[str, Any]] = {}
    bank: InKey[str | None] = None  # the dump (``dump.banks.<name>``) read in offline mode
    window: InKey[WindowConfig] = WindowConfig()
    init: InKey[Literal["scratch", "stage1"]] = "scratch"
    # The stage-1 run to fine-tune from (init: stage1); None: the bank's ``from`` run.
    stage1: InKey[str | None] = None
    bank_mode: InKey[Literal["offline", "online"]] = "offline"
    bank_preload: NotInKey[bool] = (
        False  # hold the bank in RAM instead of reading windows from disk
    )
    optim: InKey[OptimConfig] = OptimConfig()
    train_split: InKey[str] = "train"
    val_split: InKey[str] = "val"
    label_iou: InKey[float] = Field(0.5, gt=0.0, le=1.0)
    # The splits' features in RAM: True, False (read per batch), or "auto": in RAM when
    # they take at most preload_max_gb (as for stage-1 runs).
    preload: NotInKey[bool | Literal["auto"]] = "auto"
    preload_max_gb: NotInKey[float] = Field(8.0, ge=0.0)
    top_k: InKey[int | None] = Field(None, ge=1)

    @model_validator(mode="after")
    def _bank_for_offline(self, info: ValidationInfo) -> BankRunConfig:
        if self.bank_mode == "offline" and not self.bank:
            raise ValueError("bank_mode 'offline' needs `bank: <dump name>`")
        if self.bank_mode == "online" and self.init == "stage1" and not self.stage1:
            raise ValueError("init 'stage1' in online mode needs `stage1: <train run name>`")
        check_head_kwargs(self.head, self.head_kwargs, info)
        return self


class TrainBankSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: dict[str, BankRunConfig] = {}


class TrainBankStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    name: InKey[str]
    run: InKey[BankRunConfig]


class RebalanceSettings(BaseModel):
    """How the classifier is re-trained (shared by every rebalanced model)."""

    model_config = ConfigDict(extra="forbid")

    epochs: InKey[int] = Field(8, ge=1)  # "a small number of epochs" (Kang et al.)
    # draws per epoch; None: as many as the run has labelled training actors
    samples_per_epoch: InKey[int | None] = Field(None, ge=1)
    batch_actors: InKey[int] = Field(128, ge=1)
    # AdamW at 3e-3 improved the rare classes of all three demo heads tried (linear, acar,
    # pcca); SGD at 1e-2 for 4 epochs lowered the linear head's tail AP.
    optimizer: InKey[Literal["sgd", "adamw"]] = "adamw"
    lr: InKey[float] = Field(0.003, gt=0)
    momentum: InKey[float] = Field(0.9, ge=0)  # SGD
    weight_decay: InKey[float] = Field(1e-4, ge=0)
    # False: fine-tune the trained classifier (the reports' "class-balanced finetuning");
    # True: start from a fresh one, as Kang et al.'s cRT does.
    reinit: InKey[bool] = False
    # Actors that match no GT box (false-positive detections) form one more pool drawn
    # like a class; without them the classifier would never see a pure negative.
    background_pool: InKey[bool] = True
    seed: InKey[int] = 0
    # Data-parallel processes (stages.framework.distributed): the classifier inputs are recorded in
    # slices and every batch of draws is split between them; the result does not change.
    devices: NotInKey[int] = Field(1, ge=1)


class RebalanceSection(RebalanceSettings):
    """``rebalance`` in the pipeline config: which models, and the shared settings."""

    # names of train / train_bank runs to rebalance; each becomes the model ``<name>_crt``
    models: list[str] = []


class RebalanceStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: InKey[DatasetConfig]
    dataset_fingerprint: InKey[str]
    name: InKey[str]  # the rebalanced model's name (``<source>_crt`` in the pipeline)
    source: InKey[str]  # the name of the run it re-trains
    rebalance: InKey[RebalanceSettings]


def crt_name(model: str) -> str:
    return f"{model}_crt"


TRAIN = Stage(
    name="train",
    # 2: events.jsonl, prior in metrics.json; 4: tensorboard scalars; 5: acar and acrn are
    # the released heads, and the val mAP orders equal scores as the official evaluator;
    # 6: AMCR's PosNet as released (the earlier one collapsed to a constant)
    code_version="6",
    config_type=TrainStageConfig,
    compute="stages.train.stage:compute",
    resumable=True,
    gpu=True,
    produces_model=True,
    trained_run=True,
)
DUMP = Stage(
    name="dump",
    code_version="1",
    config_type=DumpStageConfig,
    compute="stages.train.dump:compute",
    resumable=True,
    gpu=True,
)
TRAIN_BANK = Stage(
    name="train_bank",
    # 2: acar_acfb wraps the released ACAR head; official tie order in the val mAP;
    # 3: amcr_hafb wraps AMCR with the released PosNet
    code_version="3",
    config_type=TrainBankStageConfig,
    compute="stages.train.bank:compute",
    resumable=True,
    gpu=True,
    produces_model=True,
    trained_run=True,
)
REBALANCE = Stage(
    name="rebalance",
    code_version="1",
    config_type=RebalanceStageConfig,
    compute="stages.train.rebalance:compute",
    resumable=True,
    gpu=True,
    produces_model=True,
    trained_run=True,  # its head.pt and the source's run config: stages.train.run.TrainedRun
)
