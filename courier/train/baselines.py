"""The image-only baselines of the CTR comparison, as objectives of ``courier train``.

    random_init    the network at its seeded initial weights: no step at all
    label_aligned  backbone + a linear head trained to predict the item's category
                   (cross-entropy): the paper's "supervised" pre-training
    simclr         two augmented views of each item image, NT-Xent over the batch,
                   through a projection head; no behaviour at all

They read ``item_images`` (one image per item, not the behaviour rows), train in
this process for ``train.max_steps`` (or ``train.epochs`` passes over the items)
with ``train.batch_size`` images a step, and are logged and registered exactly like
COURIER (an EmbeddingModel of the same backbone, the same preprocessing), so the
feature stages run on them unchanged. The heads are dropped at export: the
embedding is the backbone's output.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from courier import tracking
from courier.config import CourierConfig, Objective
from courier.train.errors import TrainingDataError
from courier.train.outputs import TrainResult, embedding_model, register_encoder

log = logging.getLogger(__name__)
IMAGE_OBJECTIVES = tuple(o for o in Objective if o != Objective.COURIER)


def _item_images(spark: Any, cfg: CourierConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 3, S, S], category index [N]) of item_images, ordered by item_id."""
    from courier.data.decode import decode_jpegs

    table = cfg.tables.qualified("item_images")
    if spark is None or not spark.catalog.tableExists(table):
        raise TrainingDataError(
            f"train.objective={cfg.train.objective} reads {table}: it does not exist "
            "(or no Spark session was given); run `courier build-samples` first"
        )
    arrow = spark.table(table).select("item_id", "category", "jpeg").orderBy("item_id").toArrow()
    if arrow.num_rows == 0:
        raise TrainingDataError(
            f"{table} holds no images: nothing to train train.objective={cfg.train.objective} on"
        )
    images = decode_jpegs(
        [bytes(b) for b in arrow.column("jpeg").to_pylist()], cfg.samples.image_size
    )
    _, categories = np.unique(
        np.asarray(arrow.column("category").to_pylist(), dtype=str), return_inverse=True
    )
    return images, categories.astype(np.int64)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> ImageNet-normalised float [N, 3, S, S], as the training loader does."""
    from courier.data.decode import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SimCLR's views of uint8 [N, 3, S, S]:
    random resized crop (scale 0.4-1), flip, colour jitter."""
    from torchvision.transforms.v2 import ColorJitter, functional as TF

    n, _, size, _ = images.shape
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.1)
    out = torch.empty_like(images)
    u = torch.rand(n, 5, generator=generator)  # scale, ratio, x, y, flip
    for i in range(n):
        area = (0.4 + 0.6 * u[i, 0]) * size * size
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(u[i, 1]))
        h = int(min(size, round(math.sqrt(area / ratio))))
        w = int(min(size, round(math.sqrt(area * ratio))))
        top, left = int(u[i, 3] * (size - h)), int(u[i, 2] * (size - w))
        view = TF.resized_crop(images[i], top, left, h, w, [size, size], antialias=True)
        if u[i, 4] < 0.5:
            view = TF.horizontal_flip(view)
        out[i] = jitter(view)  # ColorJitter draws from torch's global RNG, seeded by train.seed
    return out


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's loss of two views' projections [N, p]: each view must find its pair among 2N - 1."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # [2N, p]
    logits = z @ z.t() / tau  # [2N, 2N]
    logits.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, target)


class _Objective(nn.Module):
    """The encoder and the objective's head; ``loss(batch images, batch labels)``."""

    def __init__(
        self, encoder: nn.Module, objective: str, dim: int, n_categories: int, tau: float
    ) -> None:
        super().__init__()
        self.encoder, self.objective, self.tau = encoder, objective, tau
        self.head: nn.Module
        if objective == Objective.LABEL_ALIGNED:
            self.head = nn.Linear(dim, n_categories)
        else:  # simclr's projection head
            self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 128))

    def loss(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        if self.objective == Objective.LABEL_ALIGNED:
            return F.cross_entropy(self.head(self.encoder(_normalise(images))), labels)
        views = torch.cat([augment(images, generator), augment(images, generator)])
        z = self.head(self.encoder(_normalise(views)))  # [2N, 128]
        first, second = z.chunk(2)
        return nt_xent(first, second, tau=self.tau)


def _fit(
    cfg: CourierConfig,
    model: _Objective,
    images: np.ndarray,
    labels: np.ndarray,
    run_id: str,
    tracking_uri: str,
) -> list[dict[str, float]]:
    """The baseline's training loop: seeded batches of item images, AdamW, loss logged to MLflow."""
    from courier.progress import Progress

    tc = cfg.train
    n = len(images)
    steps = tc.max_steps or tc.epochs * math.ceil(n / tc.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    generator = torch.Generator().manual_seed(tc.seed)
    logger = tracking.MetricLogger(tracking_uri, run_id)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    history, window = [], []
    progress = Progress(f"train {tc.objective}", total=steps, unit="steps")
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (min(tc.batch_size, n),), generator=generator)
        loss = model.loss(x[idx], y[idx], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if step % tc.log_every_steps == 0 or step == steps:
            history.append({"step": float(step), "loss": float(np.mean(window))})
            logger.log({"loss": history[-1]["loss"]}, step)
            window = []
        progress.update(1, extra=f"loss {loss.item():.3f}")
    progress.close()
    return history


def train_image_baseline(
    cfg: CourierConfig, spark: Any = None, run_name: str | None = None
) -> TrainResult:
    """Run ``courier train`` with an image-only objective (``IMAGE_OBJECTIVES``); a TrainResult."""
    from courier.train.loop import build_model
    from courier.train.rundir import new_run_name

    objective = cfg.train.objective
    tracking_uri = tracking.resolve_tracking_uri(cfg.mlflow.tracking_uri)
    run_name = run_name or new_run_name()
    images, labels = (None, None) if objective == "random_init" else _item_images(spark, cfg)
    experiment_id = tracking.ensure_experiment(
        tracking_uri, cfg.mlflow.experiment, cfg.mlflow.artifact_location
    )
    run_id = tracking.create_run(
        tracking_uri,
        experiment_id,
        run_name,
        tracking.flatten(cfg.to_log_dict()),
        {"courier.objective": objective, tracking.TAG_GIT: tracking.git_revision()},
    )
    mlc = tracking.client(tracking_uri)
    try:
        model_cfg = dataclasses.replace(cfg.model, compile=False, gradient_checkpointing=False)
        model = build_model(
            dataclasses.replace(cfg, model=model_cfg), torch.device("cpu"), cfg.train.seed
        )
        history: list[dict[str, float]] = []
        if objective != "random_init":
            assert images is not None and labels is not None
            wrapped = _Objective(
                model.encoder,
                objective,
                cfg.model.embedding_dim,
                int(labels.max()) + 1,
                cfg.train.simclr_tau,
            )
            history = _fit(cfg, wrapped, images, labels, run_id, tracking_uri)
        exported = embedding_model(model.encoder, cfg.samples.image_size)
        version = register_encoder(cfg, tracking_uri, run_id, exported)
        mlc.set_terminated(run_id, "FINISHED")
    except BaseException:
        mlc.set_terminated(run_id, "FAILED")
        raise
    result = {
        "objective": objective,
        "global_step": int(history[-1]["step"]) if history else 0,
        "steps_per_epoch": 0,
        "images_per_s": 0.0,
        "history": history,
        "eval": {},
        "final_checkpoint": "",
    }
    return TrainResult(run_name, Path(), run_id, {}, None, result, version)
