"""Worker of the 2-rank Horovod (Gloo) equivalence test:
run by ``horovod.runner.run`` in each process."""

from __future__ import annotations

import torch

from courier.model.distributed import HorovodCollectives
from model_dist_worker import CASES, build_model


class DropsOtherRanksGradient(HorovodCollectives):
    """Mutant: the gather's backward keeps only this rank's own gradient (no reduction)."""

    def reduce_scatter_sum(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // self.world_size
        return x[self.rank * n : (self.rank + 1) * n].contiguous()


class AveragesGatherGradient(HorovodCollectives):
    """Mutant: the gather's backward averages over ranks, as ``hvd.allgather``'s autograd does."""

    def reduce_scatter_sum(self, x: torch.Tensor) -> torch.Tensor:
        return super().reduce_scatter_sum(x) / self.world_size


MUTANTS = {
    "exact": None,
    "drops_other_ranks_gradient": DropsOtherRanksGradient,
    "averages_gather_gradient": AveragesGatherGradient,
}


def worker(batch_path: str) -> dict[str, dict]:
    """Every case on this rank's rows, through the Horovod backend (and its mutants)."""
    from courier.train.backends import HorovodBackend

    torch.set_num_threads(1)
    backend = HorovodBackend()
    env = backend.start(use_gpu=False)
    try:
        batch = torch.load(batch_path)
        results: dict[str, dict] = {}
        for name, (loss_kw, _, rows0, rows1) in CASES.items():
            local = {
                k: v[torch.tensor(rows0 if env.rank == 0 else rows1)] for k, v in batch.items()
            }
            for mutant, cls in MUTANTS.items():
                core = build_model(loss_kw)
                model, optimizer = backend.prepare(core, torch.optim.SGD(core.parameters(), lr=0.0))
                backend.sync_state(model, optimizer)
                if cls is not None:
                    model.collectives = cls()
                out = model(local)
                out.loss.backward()
                # hvd.DistributedOptimizer: the averaged gradients, in p.grad
                optimizer.synchronize()
                results[f"{name}/{mutant}"] = run_case_result(model, out)
        return {"rank": env.rank, "world": env.world_size, "results": results}
    finally:
        backend.stop()


def run_case_result(model: torch.nn.Module, out: object) -> dict:
    """The global loss, logged metrics and averaged gradients of one case on this rank."""
    return {
        "loss": out.loss.detach().clone(),
        "metrics": out.metrics(),
        "grads": {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
        },
    }
