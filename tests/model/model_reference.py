"""Deliberately plain COURIER loss reference: Python lists, loops, float64 math.

Written straight from method.md, sharing no code with ``courier.model``, so
that a vectorisation or masking bug there cannot hide here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _cos(a: list[float], b: list[float]) -> float:
    na, nb = math.sqrt(_dot(a, a)), math.sqrt(_dot(b, b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return _dot(a, b) / (na * nb)


def _attend(query: list[float], keys: list[list[float]]) -> list[float]:
    """sum_k softmax_k(<q, c_k>/sqrt(d)) c_k over a non-empty key list."""
    d = len(query)
    scores = [_dot(query, k) / math.sqrt(d) for k in keys]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    z = sum(weights)
    return [sum(weights[i] / z * keys[i][t] for i in range(len(keys))) for t in range(d)]


def _pooled_self_attention(keys: list[list[float]]) -> list[float]:
    """no_reconstruction: every click attends over the clicks, outputs averaged."""
    outs = [_attend(k, keys) for k in keys]
    d = len(keys[0])
    return [sum(o[t] for o in outs) / len(outs) for t in range(d)]


def _contrast(
    items: list[tuple[list[float], list[float] | None, bool, bool]], tau: float, contrast: bool
) -> float:
    """items: (E, R or None, is_column, in_pool). Mean over columns."""
    columns = [i for i, it in enumerate(items) if it[2]]
    if not columns:
        return 0.0
    total = 0.0
    for b in columns:
        e_b, r_b = items[b][0], items[b][1]
        assert r_b is not None
        if not contrast:
            total += 1.0 - _cos(e_b, r_b)
            continue
        denom = sum(
            math.exp(_cos(items[a][0], r_b) / tau) for a in range(len(items)) if items[a][3]
        )
        total += -(_cos(e_b, r_b) / tau - math.log(denom))
    return total / len(columns)


def reference_loss(
    e_pv: torch.Tensor,
    pv_labels: torch.Tensor,
    e_click: torch.Tensor,
    click_mask: torch.Tensor,
    tau: float = 0.05,
    w_pv: float = 1.0,
    w_ucs: float = 1.0,
    ablation: str = "none",
    ignore_masks: bool = False,
) -> dict[str, float]:
    """COURIER loss of a batch, from embeddings.

    ``ignore_masks=True`` is the WRONG variant (padding treated as real, unclicked
    PV items and real clicks, as the paper's research code does); tests use it to
    show that masking changes the value.
    """
    rows_pv = e_pv.double().tolist()
    rows_click = e_click.double().tolist()
    labels = pv_labels.tolist()
    masks = click_mask.bool().tolist()
    no_rec = ablation == "no_reconstruction"
    contrast = ablation != "no_contrast"

    pv_items = []
    ucs_items = []
    n_pos = 0
    for i in range(len(rows_pv)):
        clicks = [rows_click[i][k] for k in range(len(masks[i])) if masks[i][k] or ignore_masks]
        for j, label in enumerate(labels[i]):
            if label == -1 and not ignore_masks:
                continue
            label = max(label, 0)
            e = rows_pv[i][j]
            r = None
            if clicks:
                r = _pooled_self_attention(clicks) if no_rec else _attend(e, clicks)
            is_col = label == 1 and r is not None
            n_pos += is_col
            in_pool = label == 1 if ablation == "no_neg_pv" else True
            pv_items.append((e, r, is_col, in_pool))
        if len(clicks) >= 2:
            target, history = clicks[-1], clicks[:-1]
            r = _pooled_self_attention(history) if no_rec else _attend(target, history)
            ucs_items.append((target, r, True, True))

    loss_pv = _contrast(pv_items, tau, contrast)
    loss_ucs = _contrast(ucs_items, tau, contrast)
    w_ucs_eff = 0.0 if ablation == "no_ucs" else w_ucs
    return {
        "loss_pv": loss_pv,
        "loss_ucs": loss_ucs,
        "loss": w_pv * loss_pv + w_ucs_eff * loss_ucs,
        "n_pos_pv": float(n_pos),
        "n_ucs": float(len(ucs_items)),
    }


def make_inputs(
    seed: int = 0, d: int = 8, garbage: float = float("nan")
) -> dict[str, torch.Tensor]:
    """A float64 batch covering the edge cases; padded slots hold ``garbage``.

    Rows: full history; 3 clicks; EMPTY history (with a positive); ONE click;
    no positive at all; 4 clicks; 2 clicks. PV padding at the ends, clicks
    left-padded (oldest -> newest).
    """
    g = torch.Generator().manual_seed(seed)
    pv_labels = torch.tensor(
        [
            [1, 0, 0, -1, -1],
            [0, 1, 1, 0, 0],
            [1, 0, -1, -1, -1],
            [1, 1, 0, 0, -1],
            [0, 0, 0, -1, -1],
            [1, 0, 0, 0, 0],
            [0, 0, 1, -1, -1],
        ]
    )
    n_clicks = [5, 3, 0, 1, 2, 4, 2]
    l_click = 5
    click_mask = torch.tensor([[k >= l_click - n for k in range(l_click)] for n in n_clicks])
    b, l_pv = pv_labels.shape
    # Scale 2: logits span a useful range, attention is neither uniform nor one-hot.
    e_pv = 2.0 * torch.randn(b, l_pv, d, generator=g, dtype=torch.float64)
    e_click = 2.0 * torch.randn(b, l_click, d, generator=g, dtype=torch.float64)
    # Make some reconstructions good so the loss is not only driven by noise.
    e_pv[0, 0] = e_click[0, 3] + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    e_pv[5, 0] = e_click[5, 4] + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    e_pv = e_pv.masked_fill((pv_labels < 0).unsqueeze(-1), garbage)
    e_click = e_click.masked_fill((~click_mask).unsqueeze(-1), garbage)
    return {"e_pv": e_pv, "pv_labels": pv_labels, "e_click": e_click, "click_mask": click_mask}


def make_batch(seed: int = 0, size: int = 32) -> dict[str, torch.Tensor]:
    """Image batch with the edge-case layout of ``make_inputs``; padded images are NaN."""
    layout = make_inputs(seed)
    g = torch.Generator().manual_seed(seed)
    labels, mask = layout["pv_labels"], layout["click_mask"]
    b, l_pv = labels.shape
    l_click = mask.shape[1]
    pv = torch.randn(b, l_pv, 3, size, size, generator=g, dtype=torch.float64)
    clicks = torch.randn(b, l_click, 3, size, size, generator=g, dtype=torch.float64)
    # NaN padding: if a padded image reached the backbone, BatchNorm (train) or
    # the loss would turn NaN.
    pv[labels < 0] = float("nan")
    clicks[~mask] = float("nan")
    return {"pv_images": pv, "pv_labels": labels, "click_images": clicks, "click_mask": mask}


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run torch single-threaded in these tests (import into a test module to use).

    On a small, shared CI box, 2 OpenMP threads competing with other processes
    spin-wait and run up to 10x slower than one thread; restored afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
