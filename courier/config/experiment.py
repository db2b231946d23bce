"""Typed, frozen configuration of ``courier experiment``
(section ``experiment``; courier/experiment/)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass
from typing import TypeVar

from courier.checks import require
from courier.config.ctr import IMAGE_USAGES
from courier.config.model import Ablation, Backbone, LossConfig, ModelConfig
from courier.config.train import BatchGrouping, Objective, TrainConfig


@dataclass(frozen=True)
class EncoderVariant:
    """What one encoder variant changes in the config it trains with; None keeps the config's value.

    Attributes:
        objective: train.objective (an image-only baseline instead of COURIER).
        ablation: loss.ablation (a part of the COURIER loss switched off).
        batch_grouping, shuffle_window: train.batch_grouping and train.shuffle_window.
        backbone, pretrained_weights_path: model.backbone and model.pretrained_weights_path.
        train_steps: train.max_steps and train.epochs both (the step budget governs, however long
            an epoch); beats experiment.train_steps.
    """

    objective: Objective | None = None
    ablation: Ablation | None = None
    batch_grouping: BatchGrouping | None = None
    shuffle_window: int | None = None
    backbone: Backbone | None = None
    pretrained_weights_path: str | None = None
    train_steps: int | None = None

    def on_train(self, train: TrainConfig, budget: int | None) -> TrainConfig:
        """``train`` with this variant's settings; ``budget``: experiment.train_steps."""
        steps = _given(self.train_steps, budget)
        return dataclasses.replace(
            train,
            objective=_given(self.objective, train.objective),
            batch_grouping=_given(self.batch_grouping, train.batch_grouping),
            shuffle_window=_given(self.shuffle_window, train.shuffle_window),
            max_steps=_given(steps, train.max_steps),
            epochs=_given(steps, train.epochs),
        )

    def on_model(self, model: ModelConfig) -> ModelConfig:
        """``model`` with this variant's backbone and initial weights."""
        return dataclasses.replace(
            model,
            backbone=_given(self.backbone, model.backbone),
            pretrained_weights_path=_given(
                self.pretrained_weights_path, model.pretrained_weights_path
            ),
        )

    def on_loss(self, loss: LossConfig) -> LossConfig:
        """``loss`` with this variant's ablation."""
        return dataclasses.replace(loss, ablation=_given(self.ablation, loss.ablation))


T = TypeVar("T")


def _given(value: T | None, otherwise: T) -> T:
    return otherwise if value is None else value


# Every arm of the comparison. "published" is whatever `courier assign` last published in
# the warehouse's own tables (the demo's COURIER model); the others train their own encoder.
ENCODER_VARIANTS: dict[str, EncoderVariant] = {
    "random_init": EncoderVariant(objective=Objective.RANDOM_INIT),
    "label_aligned": EncoderVariant(objective=Objective.LABEL_ALIGNED),
    "simclr": EncoderVariant(objective=Objective.SIMCLR),
    "courier": EncoderVariant(),
    "courier_no_ucs": EncoderVariant(ablation=Ablation.NO_UCS),
    "courier_no_contrast": EncoderVariant(ablation=Ablation.NO_CONTRAST),
    "courier_no_reconstruction": EncoderVariant(ablation=Ablation.NO_RECONSTRUCTION),
    "courier_no_neg_pv": EncoderVariant(ablation=Ablation.NO_NEG_PV),
    # A lead of the investigation: batches of one query, so in-batch negatives share the category.
    # 16 files per shuffle window hold ~300 page views of each category on the default shop.
    "courier_query_batches": EncoderVariant(batch_grouping=BatchGrouping.QUERY, shuffle_window=16),
    # The frozen ImageNet backbone (experiment.imagenet_weights), no behaviour.
    "imagenet_swin_t": EncoderVariant(objective=Objective.RANDOM_INIT, backbone=Backbone.SWIN_T),
}
STEPS_PREFIX = "courier_steps"  # courier_steps<N>: COURIER trained N steps (experiment.step_values)
FIXED_VARIANTS: tuple[str, ...] = ("none", "oracle", "published")
VARIANTS: tuple[str, ...] = FIXED_VARIANTS + tuple(ENCODER_VARIANTS)


@dataclass(frozen=True)
class ExperimentConfig:
    """The CTR comparison: which encoders, usages, k values and seeds; where the results go.

    Attributes:
        variants: arms of the table (``VARIANTS``); ``none`` (no image feature) is the baseline
            every lift is measured against and is always run.
        seeds: seeds per arm: each seed trains its own CTR model and, with ``encoder_seeds``, its
            own encoder (train.seed = the seed), so the spread over seeds covers both trainings.
        encoder_seeds: one encoder per variant and seed (True), or one per variant trained with
            train.seed and scored by every seed's CTR model (False: cheaper, but the CTR seeds alone
            hide how much one encoder training varies from the next).
        usages: image usages compared for ``courier`` besides ``cluster_id``.
        k_values: extra cluster counts compared for ``courier`` besides ``cluster.k``.
        train_steps: train.max_steps of every encoder trained here; None = the train section's.
        step_values: extra COURIER budgets (train steps), each an encoder variant
            ``courier_steps<N>``: the lift against training steps.
        imagenet_weights: local swin_t ImageNet state dict; required by ``imagenet_swin_t``
            (weights are never downloaded).
        start, end: the ctr_samples date range; None = the range of raw_impressions.
        out_dir: results, state for resuming, pictures and the HTML report.
        results_md: where the Markdown summary is written.
        bootstrap_resamples: paired bootstrap resamples of each lift.
        generate_world: generate the synthetic shop and build its samples first.
    """

    variants: tuple[str, ...] = (
        "none",
        "oracle",
        "random_init",
        "label_aligned",
        "simclr",
        "courier",
        "courier_no_ucs",
        "courier_no_contrast",
        "courier_no_reconstruction",
        "courier_no_neg_pv",
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    encoder_seeds: bool = True
    usages: tuple[str, ...] = ("vector", "simscore")
    k_values: tuple[int, ...] = ()
    train_steps: int | None = None
    step_values: tuple[int, ...] = ()
    imagenet_weights: str | None = None
    start: str | None = None
    end: str | None = None
    out_dir: str = "reports/experiment"
    results_md: str = "docs/RESULTS.md"
    bootstrap_resamples: int = 200
    generate_world: bool = False

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        require(not unknown, f"experiment.variants: unknown {unknown}; known: {list(VARIANTS)}")
        require(
            len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
            f"experiment.seeds must be distinct and at least one, got {self.seeds}",
        )
        bad_usages = [u for u in self.usages if u not in IMAGE_USAGES or u == "none"]
        require(
            not bad_usages,
            f"experiment.usages: {bad_usages} are not image usages of {IMAGE_USAGES[1:]}",
        )
        require(
            all(k >= 2 for k in self.k_values),
            f"experiment.k_values must be >= 2, got {self.k_values}",
        )
        require(
            all(n >= 1 for n in self.step_values)
            and len(set(self.step_values)) == len(self.step_values),
            f"experiment.step_values must be distinct and >= 1, got {self.step_values}",
        )
        require(
            "imagenet_swin_t" not in self.variants or bool(self.imagenet_weights),
            "experiment.variants has imagenet_swin_t: set experiment.imagenet_weights to a local "
            "swin_t ImageNet state dict (weights are never downloaded)",
        )
        require(
            self.train_steps is None or self.train_steps >= 1,
            f"experiment.train_steps must be >= 1 or null, got {self.train_steps}",
        )
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                try:
                    _dt.date.fromisoformat(value)
                except ValueError:
                    raise ValueError(
                        f"experiment.{name} must be an ISO date, got {value!r}"
                    ) from None
        require(
            self.bootstrap_resamples >= 10,
            f"experiment.bootstrap_resamples must be >= 10, got {self.bootstrap_resamples}",
        )


def encoder_seed(exp: ExperimentConfig, seed: int) -> int | None:
    """The seed of the encoder the CTR model of ``seed`` reads:
    ``seed``, or None (one shared encoder)."""
    return seed if exp.encoder_seeds else None


def encoder_key(variant: str, seed: int | None) -> str:
    """The name of one built encoder in state.json: ``variant`` or ``variant@seed<s>``."""
    return variant if seed is None else f"{variant}@seed{seed}"


def variant_of(key: str) -> str:
    """The variant of an ``encoder_key``."""
    return key.split("@", 1)[0]


def encoder_builds(exp: ExperimentConfig) -> list[tuple[str, int | None]]:
    """(variant, encoder seed) of every encoder this experiment trains, in build order."""
    seeds = exp.seeds if exp.encoder_seeds else (None,)
    return [(variant, seed) for variant in encoder_variants(exp) for seed in seeds]


def encoder_variants(exp: ExperimentConfig) -> dict[str, EncoderVariant]:
    """Every encoder variant this experiment builds, with its settings, in build order."""
    out = {v: ENCODER_VARIANTS[v] for v in exp.variants if v in ENCODER_VARIANTS}
    if "imagenet_swin_t" in out:
        out["imagenet_swin_t"] = dataclasses.replace(
            out["imagenet_swin_t"], pretrained_weights_path=exp.imagenet_weights
        )
    for steps in exp.step_values:
        out[f"{STEPS_PREFIX}{steps}"] = EncoderVariant(train_steps=steps)
    return out
