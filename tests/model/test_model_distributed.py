"""2-process gloo DDP run == one process on the concatenated batch (loss and grads)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from model_dist_worker import CASES, build_model, run_case, worker
from model_reference import make_batch, single_thread  # noqa: F401 (fixture)

WORLD = 2


@pytest.fixture(scope="module")
def rank_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tmp = tmp_path_factory.mktemp("dist")
    batch = make_batch(3, size=16)
    torch.save(batch, tmp / "batch.pt")
    mp.spawn(
        worker,
        args=(WORLD, str(tmp / "init"), str(tmp / "batch.pt"), str(tmp)),
        nprocs=WORLD,
        join=True,
    )
    return batch, [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(CASES))
def test_ddp_equals_single_process(case: str, rank_results: tuple[dict, list[dict]]) -> None:
    batch, ranks = rank_results
    loss_kw, _, rows0, rows1 = CASES[case]
    rows = torch.tensor(rows0 + rows1)  # rank order = concatenation order
    single = run_case(build_model(loss_kw), {k: v[rows] for k, v in batch.items()})

    for r, result in enumerate(ranks):
        got = result[case]
        # Every rank reports the global loss and global metrics.
        assert torch.allclose(got["loss"], single["loss"], rtol=1e-10, atol=1e-12), (
            r,
            got["loss"],
            single["loss"],
        )
        for key, value in single["metrics"].items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-10, abs=1e-12), (r, key)
        # DDP-averaged gradients equal the single-process gradients.
        assert got["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            assert torch.allclose(got["grads"][name], grad, rtol=1e-8, atol=1e-12), (r, name)
    assert any(g.abs().sum() > 0 for g in single["grads"].values())
