"""2-process Horovod (Gloo) run == one process on the concatenated batch (loss and gradients).

The same cases as the DDP test (``model_dist_worker.CASES``), through the Horovod backend of
``courier.train.backends``: global negatives over ``HorovodCollectives``, gradients averaged by
``hvd.DistributedOptimizer``. Two mutants of the gather's backward run beside it, and the same
comparison must reject them: one drops the other ranks' gradient, one averages it (what
``hvd.allgather``'s own autograd does).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from horovod.runner import run as horovod_run

from model_dist_worker import CASES, build_model, run_case
from model_horovod_worker import MUTANTS, worker
from model_reference import make_batch, single_thread  # noqa: F401 (fixture)

WORLD = 2


@pytest.fixture(scope="module")
def rank_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tmp = tmp_path_factory.mktemp("horovod")
    batch = make_batch(3, size=16)
    torch.save(batch, tmp / "batch.pt")
    here = str(Path(__file__).parent)
    saved = os.environ.get("PYTHONPATH")
    # The Horovod processes unpickle the worker by reference: they must find this folder.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, saved) if p)
    try:
        results = horovod_run(
            worker,
            args=(str(tmp / "batch.pt"),),
            np=WORLD,
            use_gloo=True,
            hosts=f"localhost:{WORLD}",
        )
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    return batch, sorted(results, key=lambda r: r["rank"])


def _matches(got: dict, single: dict) -> bool:
    """The DDP test's assertion, as a predicate: same global loss, metrics and gradients."""
    if not torch.allclose(got["loss"], single["loss"], rtol=1e-10, atol=1e-12):
        return False
    if any(
        got["metrics"][k] != pytest.approx(v, rel=1e-10, abs=1e-12)
        for k, v in single["metrics"].items()
    ):
        return False
    if got["grads"].keys() != single["grads"].keys():
        return False
    return all(
        torch.allclose(got["grads"][n], g, rtol=1e-8, atol=1e-12)
        for n, g in single["grads"].items()
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_horovod_equals_single_process(case: str, rank_results: tuple[dict, list[dict]]) -> None:
    batch, ranks = rank_results
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == WORLD for r in ranks)
    loss_kw, _, rows0, rows1 = CASES[case]
    single = run_case(
        build_model(loss_kw), {k: v[torch.tensor(rows0 + rows1)] for k, v in batch.items()}
    )
    assert any(g.abs().sum() > 0 for g in single["grads"].values())

    for r, result in enumerate(ranks):
        got = result["results"][f"{case}/exact"]
        torch.testing.assert_close(
            got["loss"], single["loss"], rtol=1e-10, atol=1e-12, msg=f"rank {r}"
        )
        for key, value in single["metrics"].items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-10, abs=1e-12), (r, key)
        assert got["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            torch.testing.assert_close(
                got["grads"][name], grad, rtol=1e-8, atol=1e-12, msg=f"rank {r} {name}"
            )
        assert _matches(got, single)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mutant", [m for m in MUTANTS if m != "exact"])
def test_the_comparison_rejects_a_wrong_gather_gradient(
    mutant: str, rank_results: tuple[dict, list[dict]]
) -> None:
    # The contrastive cases, where other ranks' rows are negatives (no_contrast gathers nothing).
    batch, ranks = rank_results
    for case in ("none", "no_neg_pv", "skewed_find_unused"):
        loss_kw, _, rows0, rows1 = CASES[case]
        single = run_case(
            build_model(loss_kw), {k: v[torch.tensor(rows0 + rows1)] for k, v in batch.items()}
        )
        assert not any(_matches(r["results"][f"{case}/{mutant}"], single) for r in ranks), (
            case,
            mutant,
        )
