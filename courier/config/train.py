"""Config sections of training and promotion (``train``, ``promote``; courier/train/)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from courier.checks import choices, coerce_choices, one_of, require


class TrainBackend(StrEnum):
    """``train.backend``: the data-parallel launcher and process group
    (courier/train/backends.py, BACKENDS)."""

    TORCH_DISTRIBUTOR = "torch_distributor"  # TorchDistributor + DDP
    HOROVOD = "horovod"  # horovod.spark.run (built by `make setup`)


class LoaderKind(StrEnum):
    """``train.loader_kind``: the reader behind courier.data.make_batch_source."""

    PETASTORM = "petastorm"
    PYARROW = "pyarrow"


class MixedPrecision(StrEnum):
    """``train.mixed_precision`` (courier.train.precision.resolve_precision)."""

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    OFF = "off"


class Objective(StrEnum):
    """``train.objective``: COURIER (method.md),
    or an image-only baseline (courier/train/baselines.py)."""

    COURIER = "courier"
    RANDOM_INIT = "random_init"  # no step
    LABEL_ALIGNED = "label_aligned"  # predict the item's category
    SIMCLR = "simclr"  # augmented views, NT-Xent at simclr_tau


class BatchGrouping(StrEnum):
    """``train.batch_grouping``: how the loader forms batches within a shuffle window."""

    NONE = "none"  # rows in random order
    QUERY = "query"  # one query after another: in-batch negatives share the category


class PromotionMetric(StrEnum):
    """``promote.metric``: held-out metrics where higher is better (courier.train.evaluate)."""

    ROW_AUC = "row_auc"
    HIT1 = "hit1"
    INBATCH_TOP1 = "inbatch_top1"


# Checked in TrainConfig.__post_init__: train.<name> must be > 0.
_POSITIVE = (
    "batch_size",
    "epochs",
    "num_processes",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_max_rows",
    "shuffle_window",
    "start_timeout_s",
)


@dataclass(frozen=True)
class TrainConfig:
    """The training run (courier train)."""

    batch_size: int = 64  # rows (page views) per process
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-6
    num_processes: int = 1
    use_gpu: bool = False
    mixed_precision: MixedPrecision = MixedPrecision.AUTO
    log_every_steps: int = 10
    checkpoint_every_steps: int = 100
    checkpoint_dir: str = "warehouse/checkpoints"
    loader_workers: int = 2
    seed: int = 0
    table_version: int | None = None  # pinned Delta version; None = latest at start
    # The data-parallel launcher and process group (courier/train/backends.py):
    # "torch_distributor" (TorchDistributor + DDP) or "horovod" (horovod.spark.run; Horovod is
    # built from source by `make setup`, build/horovod/install.sh).
    backend: TrainBackend = TrainBackend.TORCH_DISTRIBUTOR
    # horovod: seconds for the Spark tasks to start and register before the run fails.
    start_timeout_s: int = 600
    # TorchDistributor: True runs the processes on the driver node, False on the executors.
    local_mode: bool = True
    loader_kind: LoaderKind = LoaderKind.PETASTORM  # courier.data.make_batch_source(kind=...)
    # The latest files of the snapshot (by path, so the latest dt partitions) are held out
    # from training and used for the end-of-run evaluation; 0 = no evaluation.
    holdout_fraction: float = 0.1
    eval_max_rows: int = 2048
    eval_init_baseline: bool = True  # also evaluate the model at step 0 (same seed)
    keep_checkpoints: int = 2  # newest step checkpoints kept per run (the final one always)
    # torch.use_deterministic_algorithms; CPU runs are deterministic without it.
    deterministic: bool = False
    # What `courier train` optimises: "courier" (method.md), or an image-only baseline of the
    # CTR comparison (courier/train/baselines.py): "random_init" (no step), "label_aligned"
    # (predict the item's category), "simclr" (augmented views, NT-Xent at simclr_tau).
    objective: Objective = Objective.COURIER
    simclr_tau: float = 0.2
    # How the loader forms batches: "none" (rows of a shuffle window in random order) or
    # "query" (one query after another within each window, so the in-batch negatives share
    # the page views' category: harder than a random other category's items).
    batch_grouping: BatchGrouping = BatchGrouping.NONE
    # Files (row groups) whose rows are shuffled together: larger windows mix more (and give
    # purer query groups) at the cost of decoded memory (the loader logs its estimate).
    shuffle_window: int = 4
    # Train on the newest N clicks of each row's history (the rows hold samples.l_click); None = all
    # of them. Lets one sample build serve encoders with shorter histories (the experiment's arms).
    history_clicks: int | None = None

    def __post_init__(self) -> None:
        """Every check of the section's own values;
        all problems in one message, each naming its key.

        (``history_clicks`` against ``samples.l_click`` spans two sections:
        courier.train.launch checks it.)
        """
        problems = []
        for name, kind in (
            ("loader_kind", LoaderKind),
            ("mixed_precision", MixedPrecision),
            ("backend", TrainBackend),
            ("batch_grouping", BatchGrouping),
            ("objective", Objective),
        ):
            try:
                object.__setattr__(self, name, one_of(kind, getattr(self, name), f"train.{name}"))
            except ValueError as exc:
                problems.append(str(exc))
        problems += [
            f"train.{name} must be positive, got {getattr(self, name)}"
            for name in _POSITIVE
            if getattr(self, name) <= 0
        ]
        if self.simclr_tau <= 0:
            problems.append(f"train.simclr_tau must be positive, got {self.simclr_tau}")
        if self.max_steps is not None and self.max_steps <= 0:
            problems.append(f"train.max_steps must be positive or null, got {self.max_steps}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            problems.append(
                f"train.holdout_fraction must be in [0, 1), got {self.holdout_fraction}"
            )
        if "://" in self.checkpoint_dir:
            problems.append(
                f"train.checkpoint_dir must be a filesystem path every training node mounts, "
                f"got the URI {self.checkpoint_dir!r}"
            )
        require(not problems, "; ".join(problems))


# Held-out metrics where higher is better (courier.train.evaluate); promotion compares one of them.
PROMOTION_METRICS: tuple[str, ...] = choices(PromotionMetric)


@dataclass(frozen=True)
class PromoteConfig:
    """``courier evaluate`` / ``courier promote``:
    when the ``mlflow.alias`` model replaces production.

    ``courier evaluate`` scores the candidate and the current production model on the
    candidate's held-out rows (one snapshot for both); ``courier promote`` moves
    ``to_alias`` to the candidate if its ``metric`` beats production's by ``margin``.
    """

    to_alias: str = "production"
    metric: PromotionMetric = PromotionMetric.ROW_AUC
    margin: float = 0.002
    max_rows: int = 2048  # held-out rows scored per model
    batch_size: int = 64

    def __post_init__(self) -> None:
        coerce_choices(self, "promote", {"metric": PromotionMetric})
        require(self.margin >= 0.0, f"promote.margin must be >= 0, got {self.margin}")
        require(
            self.max_rows > 0 and self.batch_size > 0,
            "promote.max_rows and promote.batch_size must be > 0",
        )
        require(bool(self.to_alias), "promote.to_alias must name an alias")
