"""Collectives across data-parallel ranks,
and the all-gather with gradients behind global-batch negatives.

Two implementations of one small interface, ``Collectives``: ``TorchCollectives``
(``torch.distributed``: gloo on CPU, NCCL on GPU, under TorchDistributor/torchrun) and
``HorovodCollectives`` (``horovod.torch``: Gloo or NCCL, under ``horovod.spark.run``). The
loss and the training loop see only the interface.

Each rank contributes a different number of rows, so rows are padded to the
largest rank's count, gathered as one dense tensor, and the padding is cut out
again (no ragged Python lists on the wire).

Backward of the gather: every rank's loss may depend on every rank's rows, so
the gradient of rank r's rows is the SUM over ranks of the gradients that each
rank's loss sends to that slice: a reduce-scatter (or an all-reduce and one's own
slice). Taking only the local gradient (no reduction) would silently drop the other
ranks' contributions. Horovod's own ``hvd.allgather`` backward AVERAGES instead of
summing, which would scale the negatives' gradient by 1/world for our loss
(``losses.py``), so both backends go through ``_AllGatherWithGrad`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

ReduceOp = Literal["sum", "min", "max"]


class Collectives(Protocol):
    """What a data-parallel backend offers the loss and the training loop.

    Every method is a collective: all ranks call it, in the same order, with tensors of
    the same shape and dtype (``all_gather``: the same shape on every rank).
    """

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, ...] -> [world * n, ...] in rank order (no autograd)."""
        ...

    def all_reduce(self, x: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """A new tensor: ``op`` of ``x`` over ranks (no autograd; ``x`` is not modified)."""
        ...

    def reduce_scatter_sum(self, x: torch.Tensor) -> torch.Tensor:
        """x [world * n, ...] -> this rank's slice [n, ...] of the sum over ranks."""
        ...

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order."""
        ...

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """``root``'s ``obj`` on every rank."""
        ...

    def barrier(self) -> None: ...


class TorchCollectives:
    """``Collectives`` over a ``torch.distributed`` process group (default: WORLD)."""

    _OPS: ClassVar[dict[str, dist.ReduceOp.RedOpType]] = {
        "sum": dist.ReduceOp.SUM,
        "min": dist.ReduceOp.MIN,
        "max": dist.ReduceOp.MAX,
    }

    def __init__(self, group: ProcessGroup | None = None) -> None:
        self.group = group if group is not None else dist.group.WORLD

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=0)

    def all_reduce(self, x: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        x = x.detach().clone()
        dist.all_reduce(x, op=self._OPS[op], group=self.group)
        return x

    def reduce_scatter_sum(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n = x.shape[0] // self.world_size
        out = torch.empty_like(x[:n])
        try:
            # nccl; gloo too in the torch we test with (2.8).
            dist.reduce_scatter_tensor(out, x, op=dist.ReduceOp.SUM, group=self.group)
            return out
        except (RuntimeError, NotImplementedError):
            # Unsupported on this backend: raised before any communication, on
            # every rank alike. Reduce everything, keep our slice.
            pass
        total = self.all_reduce(x, "sum")
        return total[self.rank * n : (self.rank + 1) * n].contiguous()

    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=root, group=self.group)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self.group)


class HorovodCollectives:
    """``Collectives`` over Horovod's global process set (``hvd.init()`` must have run)."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        self._hvd = hvd
        self._ops = {"sum": hvd.Sum, "min": hvd.Min, "max": hvd.Max}
        self._calls = 0

    def _name(self, kind: str) -> str:
        # Horovod matches tensors across ranks by name; every rank makes the same calls in the
        # same order, so a counter gives the same name on every rank.
        self._calls += 1
        return f"courier.{kind}.{self._calls}"

    @property
    def rank(self) -> int:
        return self._hvd.rank()

    @property
    def world_size(self) -> int:
        return self._hvd.size()

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        # The op itself, not hvd.allgather's autograd Function (whose backward averages).
        handle = self._hvd.allgather_async(x.detach().contiguous(), name=self._name("allgather"))
        return self._hvd.synchronize(handle)

    def all_reduce(self, x: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        handle = self._hvd.allreduce_async(
            x.detach().contiguous(), name=self._name("allreduce"), op=self._ops[op]
        )
        return self._hvd.synchronize(handle)

    def reduce_scatter_sum(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // self.world_size
        total = self.all_reduce(x, "sum")
        return total[self.rank * n : (self.rank + 1) * n].contiguous()

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self._hvd.allgather_object(obj, name=self._name("allgather_object"))

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name=self._name("broadcast_object"))

    def barrier(self) -> None:
        self._hvd.barrier()


def active_collectives(explicit: Collectives | None = None) -> Collectives | None:
    """The collectives to gather over, or ``None`` when running as one process.

    ``explicit`` wins (the Horovod trainer sets its own); otherwise ``torch.distributed``'s
    WORLD group when it is initialised with more than one rank (DDP, TorchDistributor).
    """
    if explicit is not None:
        return explicit if explicit.world_size > 1 else None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    return TorchCollectives()


def world_size(comm: Collectives | None) -> int:
    """1 when ``comm`` is ``None`` (single process)."""
    return 1 if comm is None else comm.world_size


class _AllGatherWithGrad(torch.autograd.Function):
    """x [n, ...] (same n on every rank) -> [world * n, ...] in rank order; backward sums."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, comm: Collectives) -> torch.Tensor:
        ctx.comm = comm
        return comm.all_gather(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.comm.reduce_scatter_sum(grad.contiguous()), None


@dataclass
class GatheredRows:
    """Rows of all ranks, concatenated in rank order without padding.

    Attributes:
        rows: [sum_r n_r, ...]; differentiable w.r.t. this rank's input.
        offset: index of this rank's first row in ``rows``.
        world_size: number of ranks (1 without distribution).
    """

    rows: torch.Tensor
    offset: int
    world_size: int


def gather_rows(x: torch.Tensor, comm: Collectives | None) -> GatheredRows:
    """All-gather ``x`` [n_r, ...] (n_r may differ per rank) keeping gradients.

    Every rank must call this the same number of times in the same order
    (it is a collective, in forward and again in backward). With ``comm=None``
    it returns ``x`` itself.
    """
    if comm is None:
        return GatheredRows(rows=x, offset=0, world_size=1)
    world, rank = comm.world_size, comm.rank
    # Row counts first (tiny), so each rank knows where the padding is.
    # [world]
    counts = comm.all_gather(torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    sizes = [int(c) for c in counts.tolist()]
    n_max = max(sizes)
    if x.shape[0] < n_max:
        pad = x.new_zeros((n_max - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)  # [n_max, ...]
    # [world * n_max, ...]
    gathered = _AllGatherWithGrad.apply(x, comm)  # type: ignore[no-untyped-call]  # untyped in torch
    if all(s == n_max for s in sizes):
        rows = gathered
    else:
        keep = torch.cat(
            [torch.arange(r * n_max, r * n_max + s, device=x.device) for r, s in enumerate(sizes)]
        )
        rows = gathered.index_select(0, keep)  # [sum_r n_r, ...]
    return GatheredRows(rows=rows, offset=sum(sizes[:rank]), world_size=world)


def all_reduce_sum(x: torch.Tensor, comm: Collectives | None) -> torch.Tensor:
    """Sum of a (detached) tensor over ranks; identity without distribution."""
    if comm is None:
        return x
    return comm.all_reduce(x, "sum")
