"""The process-group plumbing of one training process, behind one interface (``train.backend``).

The training loop (``loop.py``), the model, the losses, checkpoints and tracking are the
same for every backend; a backend only decides how a process learns its rank, joins its
group, wraps the model and optimiser for gradient averaging, and talks to the other ranks.

    torch_distributor   torchrun env (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) ->
                        torch.distributed (gloo on CPU, NCCL on GPU); DDP averages gradients
                        (its constructor broadcasts rank 0's parameters).
    horovod             hvd.init() (Gloo controller; Gloo or NCCL operations) ->
                        hvd.DistributedOptimizer averages gradients; rank 0's parameters and
                        optimiser state are broadcast explicitly, at the start and after a
                        resume.

Global-batch negatives go through ``courier.model.distributed.Collectives`` on both.

``BACKENDS`` is the one registry of ``train.backend`` (``courier.config.TrainBackend``): each entry
holds both halves, the driver's ``launch`` and the process's group plumbing, so adding a backend
adds a member to TrainBackend and one class here (tests/unit/test_registries.py checks they agree).
"""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from courier.checks import one_of
from courier.config import TrainBackend, TrainConfig
from courier.model.distributed import Collectives, HorovodCollectives, TorchCollectives
from courier.train.job import TrainJob

log = logging.getLogger("courier.train")


@dataclass(frozen=True)
class ProcessEnv:
    """Where this process sits in the data-parallel group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device(use_gpu: bool, local_rank: int) -> torch.device:
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "train.use_gpu=true but torch sees no CUDA device; set train.use_gpu=false"
        )
    # The launcher narrows CUDA_VISIBLE_DEVICES to this node's GPUs; the local rank indexes them.
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


class TrainingBackend(ABC):
    """One process's membership of the data-parallel group. ``start`` first, ``stop`` last."""

    name: str
    env: ProcessEnv
    comm: Collectives | None  # None when this process trains alone

    @staticmethod
    def launch(train: TrainConfig, job: TrainJob, fn: Callable[[TrainJob], Any]) -> None:
        """On the driver: run ``fn(job)`` in ``train.num_processes`` processes of this backend."""
        raise NotImplementedError("a single process runs train_process(job) itself")

    @abstractmethod
    def start(self, use_gpu: bool) -> ProcessEnv:
        """Learn the rank, pick the device, join the group; returns (and keeps) the ProcessEnv."""

    @abstractmethod
    def stop(self) -> None:
        """Leave the group (idempotent; safe after a failed start)."""

    @abstractmethod
    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model and optimiser to train with,
        wrapped so that gradients are averaged over ranks."""

    def sync_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:  # noqa: B027 - a no-op unless overridden (Horovod)
        """Make every rank hold rank 0's parameters and optimiser state (after build or resume)."""

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
    ) -> None:
        """Step on the (averaged) gradients, through the loss scaler."""
        scaler.step(optimizer)
        scaler.update()

    # Collectives of the loop itself (all ranks call them; identity for one process).
    def global_sum(self, value: float) -> float:
        if self.comm is None:
            return value
        return float(
            self.comm.all_reduce(
                torch.tensor([value], dtype=torch.float64, device=self.env.device), "sum"
            ).item()
        )

    def global_min_max(self, value: int) -> tuple[int, int]:
        if self.comm is None:
            return value, value
        t = torch.tensor([value], dtype=torch.long, device=self.env.device)
        return int(self.comm.all_reduce(t, "min").item()), int(
            self.comm.all_reduce(t, "max").item()
        )

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj] if self.comm is None else self.comm.all_gather_object(obj)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.barrier()


def _executor_python() -> str:
    """The interpreter of the executors' Python workers, which Horovod's tasks start the training
    processes with: ``spark.pyspark.python`` (``./environment/bin/python`` when the packed
    environment is shipped with --archives), else PYSPARK_PYTHON, else this driver's own.

    Not the driver's ``sys.executable`` on a cluster: that path exists on the driver's node only.
    """
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    conf = context.getConf().get("spark.pyspark.python") if context is not None else None
    return conf or os.environ.get("PYSPARK_PYTHON") or sys.executable


class SingleProcessBackend(TrainingBackend):
    """``--no-spark``: rank 0 of 1, whatever the environment says."""

    name = "single"

    def start(self, use_gpu: bool) -> ProcessEnv:
        self.comm = None
        self.env = ProcessEnv(0, 1, 0, _device(use_gpu, 0))
        return self.env

    def stop(self) -> None:
        pass

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, optimizer


class TorchDistributedBackend(TrainingBackend):
    """torchrun's environment (TorchDistributor) -> torch.distributed + DDP."""

    name = TrainBackend.TORCH_DISTRIBUTOR.value

    @staticmethod
    def launch(train: TrainConfig, job: TrainJob, fn: Callable[[TrainJob], Any]) -> None:
        """TorchDistributor: ``train.local_mode`` runs the
        processes on the driver node, else on executors."""
        from pyspark.ml.torch.distributor import TorchDistributor

        TorchDistributor(
            num_processes=train.num_processes, local_mode=train.local_mode, use_gpu=train.use_gpu
        ).run(fn, job)

    def start(self, use_gpu: bool) -> ProcessEnv:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.env = ProcessEnv(rank, world, local, _device(use_gpu, local))
        self.comm = None
        if self.env.distributed:
            if not dist.is_initialized():
                backend = "nccl" if self.env.device.type == "cuda" else "gloo"
                dist.init_process_group(
                    backend=backend, init_method="env://", rank=rank, world_size=world
                )
            self.comm = TorchCollectives()
        return self.env

    def stop(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        if not self.env.distributed:
            return model, optimizer
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids), optimizer


class HorovodBackend(TrainingBackend):
    """``horovod.spark.run`` (or horovodrun) -> hvd.init() + hvd.DistributedOptimizer."""

    name = TrainBackend.HOROVOD.value

    @staticmethod
    def launch(train: TrainConfig, job: TrainJob, fn: Callable[[TrainJob], Any]) -> None:
        """``horovod.spark.run``: one Spark task per process,
        Gloo rendezvous, the venv's interpreter.

        Needs an active SparkContext with ``train.num_processes`` free task slots at once.
        """
        try:
            import horovod.spark
        except ImportError as exc:
            raise RuntimeError(
                "train.backend=horovod needs Horovod built into this environment: run "
                "build/horovod/install.sh (part of `make setup`)"
            ) from exc
        horovod.spark.run(
            fn,
            args=(job,),
            num_proc=train.num_processes,
            use_gloo=True,
            env=dict(os.environ),
            executable=_executor_python(),
            verbose=0,
            start_timeout=train.start_timeout_s,
        )

    def start(self, use_gpu: bool) -> ProcessEnv:
        import horovod.torch as hvd

        hvd.init()
        self._hvd = hvd
        self.env = ProcessEnv(
            hvd.rank(), hvd.size(), hvd.local_rank(), _device(use_gpu, hvd.local_rank())
        )
        self.comm = HorovodCollectives() if self.env.distributed else None
        return self.env

    def stop(self) -> None:
        hvd = getattr(self, "_hvd", None)
        if hvd is not None and hvd.is_initialized():
            hvd.shutdown()

    def prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        if not self.env.distributed:
            return model, optimizer
        if any(not p.is_contiguous() for p in model.parameters()):
            # Horovod's collectives take contiguous tensors only, and a parameter's gradient has
            # its parameter's layout: channels_last weights go back to NCHW (the images may stay
            # NHWC, model.channels_last; this only costs speed on cuDNN).
            log.info("horovod: parameters converted from channels_last to contiguous memory format")
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # not in torch's stubs
        # The loss gathers negatives over Horovod,
        # not over torch.distributed (never initialised here).
        model.collectives = self.comm  # type: ignore[assignment]  # Module.__setattr__ types tensors only
        wrapped = self._hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), op=self._hvd.Average
        )
        return model, wrapped

    def sync_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not self.env.distributed:
            return
        self._hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # A fresh Adam has no state to broadcast, and hvd.broadcast_optimizer_state would take
        # a zero-gradient step to create one (moving weights under weight decay, counting a
        # step): only a resumed state is broadcast.
        if optimizer.state_dict()["state"]:
            self._hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
    ) -> None:
        if not (self.env.distributed and scaler.is_enabled()):
            super().optimizer_step(optimizer, scaler)
            return
        # The scaler reads the gradients for inf/nan: they must be averaged first, and the
        # optimiser must not reduce them a second time.
        optimizer.synchronize()  # type: ignore[attr-defined]  # hvd.DistributedOptimizer's own
        scaler.unscale_(optimizer)
        with optimizer.skip_synchronize():  # type: ignore[attr-defined]  # hvd.DistributedOptimizer's own
            scaler.step(optimizer)
        scaler.update()


# The one registry of train.backend: adding a backend
# adds its class here (and its TrainBackend member).
BACKENDS: dict[TrainBackend, type[TrainingBackend]] = {
    TrainBackend.TORCH_DISTRIBUTOR: TorchDistributedBackend,
    TrainBackend.HOROVOD: HorovodBackend,
}


def make_backend(name: str, single_process: bool = False) -> TrainingBackend:
    """The backend of ``train.backend`` (``single_process``: ``--no-spark``, one process)."""
    if single_process:
        return SingleProcessBackend()
    return BACKENDS[one_of(TrainBackend, name, "train.backend")]()
