"""All-gather with gradients, for global-batch negatives across data-parallel ranks.

Each rank contributes a different number of rows, so rows are padded to the
largest rank's count, gathered as one dense tensor, and the padding is cut out
again (no ragged Python lists on the wire).

Backward of the gather: every rank's loss may depend on every rank's rows, so
the gradient of rank r's rows is the SUM over ranks of the gradients that each
rank's loss sends to that slice: a reduce-scatter (``all_reduce`` + own slice on
backends without reduce-scatter). Taking only the local gradient
(no reduction) would silently drop the other ranks' contributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup


def active_group(group: ProcessGroup | None = None) -> ProcessGroup | None:
    """The group to gather over, or ``None`` when running as a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size(group) <= 1:
        return None
    return group if group is not None else dist.group.WORLD


def world_size(group: ProcessGroup | None) -> int:
    """1 when ``group`` is ``None`` (single process)."""
    return 1 if group is None else dist.get_world_size(group)


class _AllGatherWithGrad(torch.autograd.Function):
    """x [n, ...] (same n on every rank) -> [world * n, ...] in rank order."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        group = ctx.group
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        grad = grad.contiguous()
        n = grad.shape[0] // world
        out = torch.empty_like(grad[:n])
        try:
            # nccl; gloo too in the torch we test with (2.8).
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM, group=group)
            return out, None
        except (RuntimeError, NotImplementedError):
            # Unsupported on this backend: raised before any communication, on
            # every rank alike. Reduce everything, keep our slice.
            pass
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)
        return grad[rank * n : (rank + 1) * n].contiguous(), None


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


def gather_rows(x: torch.Tensor, group: ProcessGroup | None) -> GatheredRows:
    """All-gather ``x`` [n_r, ...] (n_r may differ per rank) keeping gradients.

    Every rank must call this the same number of times in the same order
    (it is a collective, in forward and again in backward). With ``group=None``
    it returns ``x`` itself.
    """
    if group is None:
        return GatheredRows(rows=x, offset=0, world_size=1)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    # Row counts first (tiny), so each rank knows where the padding is.
    n_local = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    counts = [torch.empty_like(n_local) for _ in range(world)]
    dist.all_gather(counts, n_local, group=group)
    sizes = [int(c.item()) for c in counts]
    n_max = max(sizes)
    if x.shape[0] < n_max:
        pad = x.new_zeros((n_max - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)  # [n_max, ...]
    gathered = _AllGatherWithGrad.apply(x, group)  # [world * n_max, ...]
    if all(s == n_max for s in sizes):
        rows = gathered
    else:
        keep = torch.cat(
            [torch.arange(r * n_max, r * n_max + s, device=x.device) for r, s in enumerate(sizes)]
        )
        rows = gathered.index_select(0, keep)  # [sum_r n_r, ...]
    return GatheredRows(rows=rows, offset=sum(sizes[:rank]), world_size=world)


def all_reduce_sum(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Sum of a (detached) tensor over ranks; identity without distribution."""
    if group is None:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x
