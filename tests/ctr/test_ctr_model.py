"""The DIN-style CTR model on the CTR test shop: a planted cause lifts AUC, noise does not.

The oracle is the shop's true style of each item (eval_item_styles) used as the
Cluster-ID: the feature the click model's liked styles are made of. The same ids
shuffled over the items have the same shape and no information.
Each model trains on 4 days, early-stops on the fifth and is scored on the sixth.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from courier.config.ctr import CtrConfig
from courier.ctr.data import (
    CtrDataError,
    DateSplit,
    ImageFeatureOverride,
    ImageVectors,
    Vocabularies,
    encode,
)
from courier.ctr.evaluate import CtrDataset, evaluate_variant, with_usage
from courier.ctr.metrics import paired_bootstrap_lift
from courier.ctr.model import DinCtrModel
from tests.ctr.conftest import END, START

CTR = CtrConfig(batch_size=512, lr=0.01, max_epochs=6, patience=2)


@pytest.fixture(scope="module")
def data(spark, ctr_cfg, ctr_built) -> CtrDataset:
    return CtrDataset.load(spark, ctr_cfg, START, END)


@pytest.fixture(scope="module")
def oracle(spark, ctr_cfg) -> ImageFeatureOverride:
    return ImageFeatureOverride.from_table(
        spark, ctr_cfg.tables.qualified("eval_item_styles"), "style_id", "oracle"
    )


@pytest.fixture(scope="module")
def none(data) -> object:
    return evaluate_variant(data, with_usage(CTR, "none"), "none")


def test_splits_are_by_date_and_hold_every_row(data, ctr_built):
    _, samples = ctr_built
    assert len(data.train) + len(data.validation) + len(data.test) == len(samples)
    assert (
        data.train.dt.max()
        < data.validation.dt.min()
        <= data.validation.dt.max()
        < data.test.dt.min()
    )
    assert data.split.test == (END, END)


@pytest.fixture(scope="module")
def oracle_lift(data, oracle, none):
    with_oracle = evaluate_variant(
        data.with_override(oracle), with_usage(CTR, "cluster_id"), "oracle"
    )
    return with_oracle, paired_bootstrap_lift(
        data.test.label, with_oracle.scores, none.scores, resamples=100, seed=0
    )


def test_the_oracle_style_lifts_auc_clearly(oracle_lift, none):
    with_oracle, lift = oracle_lift
    # Measured: +2.2 AUC points, interval [0.6, 3.5] (the demo shop's 85k test impressions: +6.9).
    assert lift.delta > 1.0 and lift.low > 0, lift
    assert with_oracle.gauc.weighted > none.gauc.weighted


def test_the_planted_feature_lifts_and_its_shuffled_copy_does_not(data, oracle, none, oracle_lift):
    # The same ids, shuffled over the items: same shape and frequencies, no information. Paired with
    # the planted feature in one test,
    # so a model that ignored Cluster-IDs (both lifts 0) fails here.
    shuffled = ImageFeatureOverride(
        "shuffled", oracle.item_ids, np.random.default_rng(0).permutation(oracle.cluster_ids)
    )
    with_shuffled = evaluate_variant(
        data.with_override(shuffled), with_usage(CTR, "cluster_id"), "shuffled"
    )
    lift = paired_bootstrap_lift(
        data.test.label, with_shuffled.scores, none.scores, resamples=100, seed=0
    )
    planted = oracle_lift[1]
    assert planted.delta > 1.0 and planted.low > 0, planted
    # Measured: planted +2.2 [0.6, 3.5]; shuffled below it,
    # its interval apart from the planted one's.
    assert lift.high < planted.low and lift.delta < planted.delta / 2, (lift, planted)


def test_training_is_deterministic_for_a_seed(data):
    short = dataclasses.replace(CTR, image_usage="none", max_epochs=1)
    first = evaluate_variant(data, short, "none")
    np.testing.assert_array_equal(evaluate_variant(data, short, "none").scores, first.scores)
    other = evaluate_variant(data, dataclasses.replace(short, seed=1), "none")
    assert not np.array_equal(other.scores, first.scores)


@pytest.mark.parametrize("usage", ["vector", "simscore", "cluster_id"])
def test_every_image_usage_trains_and_scores_the_test_days(data, usage):
    rng = np.random.default_rng(1)
    items = np.unique(
        np.concatenate([data.train.item_id, data.test.item_id, data.validation.item_id])
    )
    x = rng.normal(size=(len(items), 8)).astype(np.float32)
    images = ImageVectors.from_arrays(items, x / np.linalg.norm(x, axis=1, keepdims=True))
    cfg = dataclasses.replace(CTR, image_usage=usage, max_epochs=1)
    result = evaluate_variant(data, cfg, usage, images=images)
    assert result.scores.shape == (len(data.test),) and np.isfinite(result.scores).all()
    assert 0.0 <= result.test_auc <= 1.0 and result.gauc.groups_used > 0
    assert set(result.auc_by_category) == set(np.unique(data.test.category))


def test_a_user_without_history_gets_a_finite_score(data):
    vocab = Vocabularies.fit(data.train, 1, n_clusters=data.n_clusters())
    batch = encode(data.test.rows(np.arange(len(data.test)) < 64), vocab)
    batch.history_mask[:] = False  # nobody has clicked before
    batch.history_item[:] = 0
    logits = DinCtrModel(CTR, vocab)(batch)
    assert torch.isfinite(logits).all()


def test_vector_usage_without_embeddings_and_a_too_short_range_are_named_errors(data):
    with pytest.raises(CtrDataError, match="needs item embeddings"):
        evaluate_variant(data, with_usage(CTR, "vector"), "vector")
    with pytest.raises(CtrDataError, match="too short"):
        DateSplit.last_days(START, END, 3, 3)
