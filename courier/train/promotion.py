"""``courier evaluate`` and ``courier promote``:
the candidate replaces production only if it is better.

    evaluate   candidate (``mlflow.alias``) and production (``promote.to_alias``), both loaded
               from the registry, scored on the SAME rows: the candidate's held-out files
               (its training run's snapshot.json, split as it was split for training)
               -> the scores as tags on the candidate's model version
    promote    reads those tags; moves ``promote.to_alias`` to the candidate if its
               ``promote.metric`` beats production's by ``promote.margin`` (or if there is
               no production model yet) and production has not moved since the evaluation

Both read and write only the MLflow registry, so re-running either is safe: evaluate
overwrites its tags, promote of an already-promoted candidate is a no-op.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from courier import tracking
from courier.config import CourierConfig
from courier.config.model import LossConfig
from courier.data.snapshot import TrainingSnapshot
from courier.model.courier import encode_valid_images
from courier.tracking.models import PreprocessingSpec
from courier.train.errors import PromotionError

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

TAG_EVAL_PREFIX = "courier.eval."
TAG_EVAL_AT = "courier.eval.at"
TAG_EVAL_HOLDOUT_ROWS = "courier.eval.holdout_rows"
TAG_EVAL_PRODUCTION = "courier.eval.production_version"  # "" when there was none
TAG_PROMOTED_AT = "courier.promoted_at"


@dataclass(frozen=True)
class Evaluation:
    """Candidate vs production on the candidate's held-out rows."""

    model: str
    candidate_version: str
    production_version: str | None
    metric: str
    candidate: dict[str, float]
    production: dict[str, float] | None
    holdout_rows: int

    def summary(self) -> str:
        m = self.metric
        lines = [
            f"evaluate {self.model}: {self.holdout_rows} held-out rows of candidate version "
            f"{self.candidate_version}'s training run"
        ]
        for label, version, metrics in (
            ("candidate", self.candidate_version, self.candidate),
            ("production", self.production_version, self.production),
        ):
            if metrics is None:
                lines.append(f"  {label:<10} (none)")
            else:
                lines.append(
                    f"  {label:<10} version {version:<4} {m} {metrics[m]:.4f}  "
                    f"hit1 {metrics['hit1']:.4f} (chance {metrics['hit1_chance']:.4f})"
                )
        return "\n".join(lines)


@dataclass(frozen=True)
class PromotionDecision:
    model: str
    alias: str
    candidate_version: str
    production_version: str | None
    promoted: bool
    reason: str

    def summary(self) -> str:
        verdict = "promoted" if self.promoted else "kept production"
        return f"promote {self.model}@{self.alias}: {verdict}: {self.reason}"


class _RegisteredEncoder(nn.Module):
    """A registered model (uint8 images [N,3,S,S] -> unit
    embeddings [N,d]) fed the loader's normalised images.

    The loader yields (x / 255 - mean) / std; undoing that and rounding recovers the exact
    uint8 pixels, which the model normalises again itself: it is scored on what it serves.
    """

    std: torch.Tensor  # buffers, registered in __init__
    mean: torch.Tensor

    def __init__(self, module: nn.Module, spec: PreprocessingSpec, loss_cfg: LossConfig) -> None:
        super().__init__()
        self.module = module
        self.loss_cfg = loss_cfg
        self.click_head = None
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> _RegisteredEncoder:
        # The exported (pt2) program is in eval mode for good and refuses .train()/.eval().
        self.training = mode
        return self

    def _encode(self, normalised: torch.Tensor) -> torch.Tensor:
        pixels = (
            ((normalised * self.std + self.mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
        )  # [N,3,S,S]
        return self.module(pixels)  # [N, d]

    def encode_batch(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_valid_images(self._encode, batch)


def _client(cfg: CourierConfig) -> tuple[MlflowClient, str]:
    tracking_uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    return tracking.client(tracking_uri), tracking_uri


def _version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - MlflowException of several kinds: all mean "no such alias"
        return None


def candidate_holdout(client: MlflowClient, version: ModelVersion) -> TrainingSnapshot:
    """The held-out part of the snapshot the model ``version``
    was trained on, split as training split it."""
    from courier.train.holdout import split_holdout

    if version.run_id is None:
        raise PromotionError(
            f"model version {version.version} was registered without a training run: it has no "
            "held-out rows to be scored on"
        )
    run = client.get_run(version.run_id)
    fraction = float(run.data.params.get("train.holdout_fraction", 0.0))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(version.run_id, "snapshot.json", tmp)
        except Exception as exc:
            raise PromotionError(
                f"model version {version.version}: its training run {version.run_id} has no "
                f"snapshot.json artifact ({str(exc).splitlines()[0]})"
            ) from exc
        pinned = TrainingSnapshot.from_dict(json.loads(Path(path).read_text()))
    _, holdout = split_holdout(pinned, fraction)
    if holdout is None:
        raise PromotionError(
            f"model version {version.version}: its training run {version.run_id} held nothing "
            f"out (train.holdout_fraction={fraction}); train with a hold-out to evaluate it"
        )
    return holdout


def _score(
    cfg: CourierConfig, tracking_uri: str, name: str, version: str, holdout: TrainingSnapshot
) -> dict[str, float]:
    import mlflow

    from courier.data.source import make_batch_source
    from courier.tracking.models import resolve_model
    from courier.train.evaluate import EVAL_SHUFFLE_WINDOW, evaluate_reconstruction

    resolved = resolve_model(tracking_uri, f"models:/{name}/{version}")
    module = mlflow.pytorch.load_model(resolved.uri, map_location="cpu")
    model = _RegisteredEncoder(module, resolved.spec, cfg.loss)
    pc = cfg.promote
    source = make_batch_source(
        holdout,
        rank=0,
        world_size=1,
        batch_size=pc.batch_size,
        seed=cfg.train.seed,
        workers=cfg.train.loader_workers,
        kind=cfg.train.loader_kind,
        shuffle_window=EVAL_SHUFFLE_WINDOW,
        group_by_query=False,
    )
    with torch.inference_mode():
        return evaluate_reconstruction(model, source, torch.device("cpu"), pc.max_rows)


def evaluate_candidate(cfg: CourierConfig) -> Evaluation:
    """Score the candidate and the production model on
    the candidate's held-out rows; tag the candidate.

    Raises:
        PromotionError: no model behind ``mlflow.alias``, or its run has no hold-out to score on.
    """
    client, tracking_uri = _client(cfg)
    name, pc = cfg.mlflow.registered_model, cfg.promote
    candidate = _version_by_alias(client, name, cfg.mlflow.alias)
    if candidate is None:
        raise PromotionError(
            f"registered model {name!r} has no alias {cfg.mlflow.alias!r} in the registry at "
            f"{tracking_uri}: train one first (`courier train`)"
        )
    production = _version_by_alias(client, name, pc.to_alias)
    holdout = candidate_holdout(client, candidate)
    scores = _score(cfg, tracking_uri, name, candidate.version, holdout)
    prod_scores = None
    if production is not None:
        prod_scores = (
            scores
            if production.version == candidate.version
            else _score(cfg, tracking_uri, name, production.version, holdout)
        )
    tags = {f"{TAG_EVAL_PREFIX}{k}": f"{v:.6f}" for k, v in scores.items()}
    tags.update(
        {f"{TAG_EVAL_PREFIX}production.{k}": f"{v:.6f}" for k, v in (prod_scores or {}).items()}
    )
    tags.update(
        {
            TAG_EVAL_AT: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            TAG_EVAL_HOLDOUT_ROWS: str(holdout.total_rows),
            TAG_EVAL_PRODUCTION: str(production.version) if production is not None else "",
        }
    )
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    return Evaluation(
        model=name,
        candidate_version=str(candidate.version),
        production_version=str(production.version) if production is not None else None,
        metric=pc.metric,
        candidate=scores,
        production=prod_scores,
        holdout_rows=holdout.total_rows,
    )


def _metric(tags: Mapping[str, str], key: str, where: str) -> float:
    if key not in tags:
        raise PromotionError(f"{where} has no tag {key!r}: run `courier evaluate` first")
    return float(tags[key])


def decide(
    cfg: CourierConfig, tags: Mapping[str, str], candidate: str, production: str | None, name: str
) -> tuple[bool, str]:
    """(promote?, why) from the candidate's evaluation tags and the production version now."""
    pc = cfg.promote
    where = f"model {name} version {candidate}"
    if production == candidate:
        return False, f"version {candidate} is already {pc.to_alias}"
    evaluated_against = tags.get(TAG_EVAL_PRODUCTION)
    if evaluated_against is None:
        raise PromotionError(
            f"{where} has no tag {TAG_EVAL_PRODUCTION!r}: run `courier evaluate` first"
        )
    if (evaluated_against or None) != production:
        raise PromotionError(
            f"{where} was evaluated against {pc.to_alias} version {evaluated_against or '(none)'}, "
            f"but {pc.to_alias} is now version {production or '(none)'}: run `courier evaluate` "
            "again"
        )
    ours = _metric(tags, f"{TAG_EVAL_PREFIX}{pc.metric}", where)
    if production is None:
        return True, f"no {pc.to_alias} model yet; candidate {pc.metric} {ours:.4f}"
    theirs = _metric(tags, f"{TAG_EVAL_PREFIX}production.{pc.metric}", where)
    verdict = ours - theirs >= pc.margin
    compare = ">=" if verdict else "<"
    return verdict, (
        f"candidate {pc.metric} {ours:.4f} - {pc.to_alias} {theirs:.4f} = {ours - theirs:+.4f} "
        f"{compare} margin {pc.margin}"
    )


def promote_candidate(cfg: CourierConfig) -> PromotionDecision:
    """Move ``promote.to_alias`` to the ``mlflow.alias`` version if its evaluation says so.

    Raises:
        PromotionError: no candidate, no evaluation, or production moved since the evaluation.
    """
    client, tracking_uri = _client(cfg)
    name, alias = cfg.mlflow.registered_model, cfg.promote.to_alias
    candidate = _version_by_alias(client, name, cfg.mlflow.alias)
    if candidate is None:
        raise PromotionError(
            f"registered model {name!r} has no alias {cfg.mlflow.alias!r} in the registry at "
            f"{tracking_uri}: nothing to promote"
        )
    production = _version_by_alias(client, name, alias)
    prod_version = str(production.version) if production is not None else None
    promoted, reason = decide(cfg, candidate.tags or {}, str(candidate.version), prod_version, name)
    if promoted:
        client.set_registered_model_alias(name, alias, candidate.version)
        client.set_model_version_tag(
            name,
            candidate.version,
            TAG_PROMOTED_AT,
            dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        log.info("%s@%s -> version %s (was %s)", name, alias, candidate.version, prod_version)
    return PromotionDecision(
        model=name,
        alias=alias,
        candidate_version=str(candidate.version),
        production_version=prod_version,
        promoted=promoted,
        reason=reason,
    )
