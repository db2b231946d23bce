"""Worker process of the 2-rank gloo equivalence test (spawned, so module level)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from courier.model import CourierModel, LossConfig, ModelConfig

# name -> (loss config kwargs, DDP kwargs, rows of rank 0, rows of rank 1)
# Rows refer to make_batch's layout: 2 = empty history, 3 = one click,
# 4 = no positive PV item (so rank 1 of "skewed" has no PV column at all).
CASES: dict[str, tuple[dict, dict, list[int], list[int]]] = {
    "none": ({}, {}, [0, 1, 2, 3], [4, 5, 6]),
    "no_contrast": ({"ablation": "no_contrast"}, {}, [0, 1, 2, 3], [4, 5, 6]),
    "no_reconstruction": ({"ablation": "no_reconstruction"}, {}, [0, 1, 2, 3], [4, 5, 6]),
    "no_neg_pv": ({"ablation": "no_neg_pv"}, {}, [0, 1, 2, 3], [4, 5, 6]),
    "no_ucs": ({"ablation": "no_ucs"}, {}, [0, 1, 2, 3], [4, 5, 6]),
    "click_bce": ({"click_bce_weight": 0.5}, {}, [0, 1, 2, 3], [4, 5, 6]),
    "skewed_find_unused": ({}, {"find_unused_parameters": True}, [0, 1, 2, 3, 5, 6], [4]),
    # Backward of the gather through the all_reduce fallback (no reduce-scatter).
    "allreduce_fallback": ({}, {}, [0, 1, 2], [3, 4, 5, 6]),
}


def _no_reduce_scatter(*args: object, **kwargs: object) -> None:
    raise NotImplementedError("reduce_scatter_tensor disabled by the test")


def build_model(loss_kw: dict) -> CourierModel:
    """Same initial weights in every process (DDP would broadcast rank 0's anyway).

    float64 for tight comparisons; eval() because BatchNorm batch statistics
    are per rank by design (use SyncBatchNorm or a LayerNorm backbone such as
    swin_t when that matters); the loss's global batch is what is tested here.
    """
    torch.manual_seed(0)
    model = CourierModel(ModelConfig(backbone="small_cnn", embedding_dim=8), LossConfig(**loss_kw))
    return model.double().eval()


def run_case(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """Forward + backward; loss, logged metrics and parameter gradients."""
    out = model(batch)
    out.loss.backward()
    module = model.module if isinstance(model, DDP) else model
    return {
        "loss": out.loss.detach().clone(),
        "metrics": out.metrics(),
        "grads": {n: p.grad.detach().clone() for n, p in module.named_parameters()},
    }


def worker(rank: int, world: int, init_file: str, batch_path: str, out_dir: str) -> None:
    """One rank: every case through DDP on its share of the rows."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = torch.load(batch_path)
        results = {}
        for name, (loss_kw, ddp_kw, rows0, rows1) in CASES.items():
            rows = torch.tensor(rows0 if rank == 0 else rows1)
            local = {k: v[rows] for k, v in batch.items()}
            ddp = DDP(build_model(loss_kw), **ddp_kw)
            if name == "allreduce_fallback":
                saved, dist.reduce_scatter_tensor = dist.reduce_scatter_tensor, _no_reduce_scatter
                try:
                    results[name] = run_case(ddp, local)
                finally:
                    dist.reduce_scatter_tensor = saved
            else:
                results[name] = run_case(ddp, local)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
