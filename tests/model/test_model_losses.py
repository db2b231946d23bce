"""COURIER losses on embeddings vs. the plain-loop reference, plus invariances."""

from __future__ import annotations

import math

import pytest
import torch

from courier.model import (
    ABLATIONS,
    ClickHead,
    LossConfig,
    courier_loss,
    masked_softmax,
    reconstruct,
    reconstruct_without_query,
    split_click_sequence,
)
from model_reference import make_inputs, reference_loss, single_thread  # noqa: F401 (fixture)

TOL = {"rel": 1e-10, "abs": 1e-10}


def _run(inputs: dict[str, torch.Tensor], cfg: LossConfig, **kw):
    return courier_loss(
        inputs["e_pv"], inputs["pv_labels"], inputs["e_click"], inputs["click_mask"], cfg, **kw
    )


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(ablation: str, seed: int) -> None:
    inputs = make_inputs(seed)  # padded slots are NaN: must never be read
    cfg = LossConfig(ablation=ablation, w_pv=0.7, w_ucs=1.3)
    out = _run(inputs, cfg)
    ref = reference_loss(**inputs, tau=cfg.tau, w_pv=0.7, w_ucs=1.3, ablation=ablation)
    for key in ("loss", "loss_pv", "loss_ucs", "n_pos_pv", "n_ucs"):
        assert getattr(out, key).item() == pytest.approx(ref[key], **TOL), key
    # The edge rows are really there: the empty-history row's positive carries
    # no loss, the one-click row is out of UCS.
    assert ref["n_pos_pv"] == 7 and ref["n_ucs"] == 5  # 8 positives, 1 without history


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_tau_is_used(tau: float) -> None:
    inputs = make_inputs(3)
    out = _run(inputs, LossConfig(tau=tau))
    assert out.loss.item() == pytest.approx(reference_loss(**inputs, tau=tau)["loss"], **TOL)


def test_ablations_differ_from_default() -> None:
    inputs = make_inputs(0)
    values = {a: _run(inputs, LossConfig(ablation=a)).loss.item() for a in ABLATIONS}
    assert len({round(v, 9) for v in values.values()}) == len(ABLATIONS), values


def test_padding_is_masked_and_masking_matters() -> None:
    finite = make_inputs(0, garbage=3.0)
    other = make_inputs(0, garbage=-7.0)
    ours = _run(finite, LossConfig()).loss.item()
    # Different garbage in padded slots: identical loss.
    assert _run(other, LossConfig()).loss.item() == pytest.approx(ours, **TOL)
    # ... while a reference that lets padding in (as the research code does) differs.
    right = reference_loss(**finite)["loss"]
    wrong = reference_loss(**finite, ignore_masks=True)["loss"]
    assert ours == pytest.approx(right, **TOL)
    assert abs(wrong - right) > 1e-2


def test_permutation_invariance() -> None:
    inputs = make_inputs(1)
    base = _run(inputs, LossConfig())
    g = torch.Generator().manual_seed(5)
    b, l_pv = inputs["pv_labels"].shape
    row_perm = torch.randperm(b, generator=g)
    item_perm = torch.stack([torch.randperm(l_pv, generator=g) for _ in range(b)])  # per row
    permuted = {
        "e_pv": torch.stack([inputs["e_pv"][r][item_perm[i]] for i, r in enumerate(row_perm)]),
        "pv_labels": torch.stack(
            [inputs["pv_labels"][r][item_perm[i]] for i, r in enumerate(row_perm)]
        ),
        "e_click": inputs["e_click"][row_perm],
        "click_mask": inputs["click_mask"][row_perm],
    }
    out = _run(permuted, LossConfig())
    assert out.loss.item() == pytest.approx(base.loss.item(), **TOL)
    assert out.loss_ucs.item() == pytest.approx(base.loss_ucs.item(), **TOL)


def test_click_order_matters_for_ucs() -> None:
    # UCS reconstructs the MOST RECENT click: reversing the valid clicks changes it.
    inputs = make_inputs(2)
    base = _run(inputs, LossConfig())
    rev = dict(inputs)
    e_click = inputs["e_click"].clone()
    for i, mask in enumerate(inputs["click_mask"]):
        idx = mask.nonzero().squeeze(1)
        e_click[i, idx] = inputs["e_click"][i, idx.flip(0)]
    rev["e_click"] = e_click
    out = _run(rev, LossConfig())
    assert out.loss_ucs.item() == pytest.approx(reference_loss(**rev)["loss_ucs"], **TOL)
    assert abs(out.loss_ucs.item() - base.loss_ucs.item()) > 1e-6
    # The PV reconstruction is a set function of the clicks: unchanged.
    assert out.loss_pv.item() == pytest.approx(base.loss_pv.item(), **TOL)


@pytest.mark.parametrize("ablation", ["none", "no_reconstruction", "no_contrast", "no_neg_pv"])
def test_gradcheck(ablation: str) -> None:
    inputs = make_inputs(4, d=4, garbage=0.5)
    e_pv = inputs["e_pv"].clone().requires_grad_(True)
    e_click = inputs["e_click"].clone().requires_grad_(True)
    cfg = LossConfig(ablation=ablation, tau=0.5)  # gentler logits: better finite differences

    def f(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return courier_loss(a, inputs["pv_labels"], c, inputs["click_mask"], cfg).loss

    assert torch.autograd.gradcheck(f, (e_pv, e_click), eps=1e-6, atol=1e-6, fast_mode=True)
    f(e_pv, e_click).backward()
    # No gradient reaches padding.
    assert torch.all(e_pv.grad[inputs["pv_labels"] < 0] == 0)
    assert torch.all(e_click.grad[~inputs["click_mask"]] == 0)


def test_nan_padding_gives_finite_grads() -> None:
    inputs = make_inputs(0)  # NaN in padded slots
    e_pv = inputs["e_pv"].clone().requires_grad_(True)
    e_click = inputs["e_click"].clone().requires_grad_(True)
    out = courier_loss(e_pv, inputs["pv_labels"], e_click, inputs["click_mask"], LossConfig())
    out.loss.backward()
    assert torch.isfinite(e_pv.grad).all() and torch.isfinite(e_click.grad).all()
    for value in out.metrics().values():
        assert math.isfinite(value)


def test_no_ucs_logs_but_does_not_train_ucs() -> None:
    inputs = make_inputs(0, garbage=0.0)
    e_click = inputs["e_click"].clone().requires_grad_(True)
    e_pv = inputs["e_pv"].clone().requires_grad_(True)
    out = courier_loss(
        e_pv, inputs["pv_labels"], e_click, inputs["click_mask"], LossConfig(ablation="no_ucs")
    )
    assert out.loss_ucs.item() == pytest.approx(reference_loss(**inputs)["loss_ucs"], **TOL)
    assert out.loss.item() == pytest.approx(out.loss_pv.item(), **TOL)
    out.loss.backward()
    # Row 4 has no positive PV item: its clicks only feed UCS -> no gradient
    # under no_ucs, but some under the default.
    assert torch.all(e_click.grad[4] == 0)
    e_click.grad = None
    _run({**inputs, "e_click": e_click}, LossConfig()).loss.backward()
    assert e_click.grad[4].abs().sum() > 0


def test_batch_without_positives_or_history() -> None:
    inputs = make_inputs(0, garbage=0.0)
    labels = torch.where(
        inputs["pv_labels"] == 1, torch.zeros_like(inputs["pv_labels"]), inputs["pv_labels"]
    )
    mask = torch.zeros_like(inputs["click_mask"])
    e_pv = inputs["e_pv"].clone().requires_grad_(True)
    out = courier_loss(e_pv, labels, inputs["e_click"], mask, LossConfig())
    assert out.loss.item() == 0.0 and out.n_pos_pv.item() == 0 and out.n_ucs.item() == 0
    out.loss.backward()
    assert torch.all(e_pv.grad == 0)


def test_low_precision_inputs_are_upcast() -> None:
    inputs = make_inputs(0, garbage=0.0)
    out = courier_loss(
        inputs["e_pv"].bfloat16(),
        inputs["pv_labels"],
        inputs["e_click"].bfloat16(),
        inputs["click_mask"],
        LossConfig(),
    )
    assert out.loss.dtype == torch.float32
    rounded = {k: v.bfloat16().double() if v.is_floating_point() else v for k, v in inputs.items()}
    ref = reference_loss(**rounded)
    assert out.loss.item() == pytest.approx(ref["loss"], rel=1e-4)


def test_click_bce_head() -> None:
    inputs = make_inputs(0, garbage=0.0)
    torch.manual_seed(0)
    head = ClickHead(8).double()
    cfg = LossConfig(click_bce_weight=0.5)
    out = _run(inputs, cfg, click_head=head)
    # BCE over valid PV items of rows that have a reconstruction.
    rec = reconstruct(inputs["e_pv"], inputs["e_click"], inputs["click_mask"]).recon
    keep = (inputs["pv_labels"] >= 0) & inputs["click_mask"].any(1, keepdim=True)
    logits = head(rec[keep], inputs["e_pv"][keep])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, (inputs["pv_labels"][keep] == 1).double()
    )
    base = reference_loss(**inputs)["loss"]
    assert out.loss_click_bce.item() == pytest.approx(bce.item(), **TOL)
    assert out.loss.item() == pytest.approx(base + 0.5 * bce.item(), **TOL)
    with pytest.raises(ValueError, match="click_head"):
        _run(inputs, cfg)


def test_reconstruction_is_convex_and_masked() -> None:
    inputs = make_inputs(0)
    rec = reconstruct(inputs["e_pv"].nan_to_num(0.0), inputs["e_click"], inputs["click_mask"])
    mask = inputs["click_mask"]
    sums = rec.attn.sum(-1)  # [B, Lp]
    has = mask.any(1)
    assert torch.allclose(sums[has], torch.ones_like(sums[has]))
    assert torch.all(rec.attn[~has] == 0) and torch.all(rec.recon[~has] == 0)
    assert torch.all(rec.attn.masked_select(~mask.unsqueeze(1).expand_as(rec.attn)) == 0)
    assert torch.isfinite(rec.recon).all()
    assert rec.has_history.tolist() == has.tolist()
    pooled = reconstruct_without_query(3, inputs["e_click"], mask)
    assert pooled.recon.shape == (7, 3, 8)
    # Same vector for every query of a row: it does not see the query.
    assert torch.equal(pooled.recon[:, 0], pooled.recon[:, 2])
    assert torch.isfinite(pooled.recon).all()


def test_masked_softmax_all_masked_row() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_softmax(logits, mask)
    assert torch.allclose(out[0].sum(), torch.tensor(1.0)) and out[0, 1] == 0
    assert torch.all(out[1] == 0)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("left", [True, False])
def test_split_click_sequence(left: bool) -> None:
    valid = [5, 3, 0, 1, 2]
    mask = torch.tensor([[(k >= 5 - n) if left else (k < n) for k in range(5)] for n in valid])
    split = split_click_sequence(mask)
    assert split.has_target.tolist() == [True, True, False, False, True]
    last = [4, 4, 0, 4, 4] if left else [4, 2, 0, 0, 1]
    assert split.target_index.tolist() == last
    assert split.history_mask.sum(1).tolist() == [4, 2, 0, 0, 1]
    assert not (split.history_mask & ~mask).any()


def test_loss_config_validation() -> None:
    with pytest.raises(ValueError, match="ablation"):
        LossConfig(ablation="nope")
    with pytest.raises(ValueError, match="tau"):
        LossConfig(tau=0.0)
    with pytest.raises(ValueError, match="nothing to train"):
        LossConfig(w_pv=0.0, ablation="no_ucs")
    assert LossConfig(ablation="no_ucs").effective_w_ucs == 0.0
