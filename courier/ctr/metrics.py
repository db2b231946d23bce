"""CTR metrics: AUC, GAUC per page view, AUC per category, and the paired bootstrap of a lift.

AUC is the Mann-Whitney statistic with average ranks for ties, so a constant
score is exactly 0.5 (``sklearn.metrics.roc_auc_score`` agrees; a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when ``labels`` hold one class only."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # ties share their average rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class Gauc:
    """AUC averaged over page views that hold both a click and a non-click."""

    weighted: float  # weighted by each page view's impressions (the paper's GAUC)
    unweighted: float  # plain mean over the same page views
    groups_used: int
    groups_total: int


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> Gauc:
    """GAUC of ``scores`` grouped by ``groups`` (the request_id of each impression)."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    # by group, then score: ranks within a group in one pass
    order = np.lexsort((scores, group_index))
    g, s, y = group_index[order], scores[order], labels[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    aucs, sizes = [], []
    for a, b in zip(starts, ends, strict=True):
        n_pos = int(y[a:b].sum())
        if 0 < n_pos < b - a:
            ranks = rankdata(s[a:b])
            aucs.append(
                (ranks[y[a:b] == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (b - a - n_pos))
            )
            sizes.append(b - a)
    if not aucs:
        return Gauc(float("nan"), float("nan"), 0, len(starts))
    aucs_arr, sizes_arr = np.asarray(aucs), np.asarray(sizes, dtype=np.float64)
    return Gauc(
        float((aucs_arr * sizes_arr).sum() / sizes_arr.sum()),
        float(aucs_arr.mean()),
        len(aucs),
        len(starts),
    )


def auc_by_category(
    labels: np.ndarray, scores: np.ndarray, categories: np.ndarray
) -> dict[str, float]:
    """``{category: AUC}`` over each category's impressions (paper fig. 4)."""
    categories = np.asarray(categories)
    return {
        str(c): auc(labels[categories == c], scores[categories == c]) for c in np.unique(categories)
    }


@dataclass(frozen=True)
class Lift:
    """AUC(variant) - AUC(baseline) on the same impressions, with a paired bootstrap interval."""

    delta: float  # AUC points x 100 (0.46 = the paper's "+0.46%")
    low: float  # bootstrap percentile interval, same unit
    high: float
    resamples: int


def paired_bootstrap_lift(
    labels: np.ndarray,
    variant: np.ndarray,
    baseline: np.ndarray,
    resamples: int,
    *,
    seed: int,
    confidence: float = 0.95,
) -> Lift:
    """Lift of ``variant`` over ``baseline`` scores,
    both rescored on the same resampled impressions (``seed``: the resampling's, ctr.seed).

    Scores are [N], or [S, N] for S seeds (seed s of the variant paired with seed s of the
    baseline): the lift is then the mean over seeds, in every resample as in the estimate.
    """
    labels = np.asarray(labels)
    variant, baseline = np.atleast_2d(variant), np.atleast_2d(baseline)
    if variant.shape != baseline.shape or variant.shape[1] != len(labels):
        raise ValueError(
            f"scores {variant.shape} / {baseline.shape} do not pair with {len(labels)} labels"
        )

    def lift(idx: np.ndarray | slice) -> float:
        y = labels[idx]
        return float(
            np.mean(
                [auc(y, v[idx]) - auc(y, b[idx]) for v, b in zip(variant, baseline, strict=True)]
            )
        )

    rng = np.random.default_rng(seed)
    n = len(labels)
    deltas = np.array([lift(rng.integers(0, n, n)) for _ in range(resamples)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(deltas, [tail, 100 - tail])
    return Lift(100 * lift(slice(None)), 100 * float(low), 100 * float(high), resamples)
