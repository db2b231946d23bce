"""CTR metrics against sklearn and on the edge cases GAUC has to get right."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from courier.ctr.metrics import auc, auc_by_category, gauc, paired_bootstrap_lift


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels * 0.5
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    tied = np.round(scores)  # many ties: average ranks
    assert auc(labels, tied) == pytest.approx(roc_auc_score(labels, tied), abs=1e-12)


def test_auc_of_constant_score_is_one_half_and_of_one_class_nan():
    assert auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert np.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_gauc_skips_single_class_page_views_and_weights_by_impressions():
    # page a: 4 impressions, perfect (AUC 1); page b: 2 impressions, reversed (AUC 0);
    # page c: no click, page d: all clicks: both skipped.
    groups = np.array(["a"] * 4 + ["b"] * 2 + ["c"] * 3 + ["d"] * 2)
    labels = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.1, 0.5, 0.5, 0.5, 0.2, 0.3])
    g = gauc(labels, scores, groups)
    assert g.groups_used == 2 and g.groups_total == 4
    assert g.weighted == pytest.approx((4 * 1.0 + 2 * 0.0) / 6)
    assert g.unweighted == pytest.approx(0.5)


def test_gauc_ties_within_a_page_count_half():
    g = gauc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.1]), np.array(["p", "p", "p"]))
    assert g.weighted == pytest.approx(0.75)  # one pair tied (1/2), one won (1)


def test_gauc_matches_sklearn_per_page_view_on_random_pages():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, 600)
    labels = rng.integers(0, 2, 600)
    scores = rng.random(600).round(2)
    expected, weights = [], []
    for p in np.unique(groups):
        m = groups == p
        if 0 < labels[m].sum() < m.sum():
            expected.append(roc_auc_score(labels[m], scores[m]))
            weights.append(m.sum())
    g = gauc(labels, scores, groups)
    assert g.groups_used == len(expected)
    assert g.weighted == pytest.approx(np.average(expected, weights=weights), abs=1e-12)
    assert g.unweighted == pytest.approx(np.mean(expected), abs=1e-12)


def test_gauc_without_any_usable_page_view_is_nan():
    g = gauc(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]), np.array(["a", "a", "b"]))
    assert g.groups_used == 0 and np.isnan(g.weighted)


def test_auc_by_category():
    cats = np.array(["x", "x", "y", "y"])
    out = auc_by_category(np.array([1, 0, 0, 1]), np.array([0.9, 0.1, 0.9, 0.1]), cats)
    assert out == {"x": 1.0, "y": 0.0}


def test_paired_bootstrap_interval_covers_a_real_lift_and_centres_on_none():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    base = rng.normal(size=2000) + 0.5 * labels
    better = base + 0.5 * labels
    lift = paired_bootstrap_lift(labels, better, base, resamples=100, seed=0)
    assert lift.delta > 0 and 0 < lift.low < lift.delta < lift.high
    same = paired_bootstrap_lift(labels, base, base, resamples=20, seed=0)
    assert same.delta == 0 and same.low == 0 and same.high == 0
