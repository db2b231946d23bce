"""The encoders' style scores: k-NN within category and NMI, on labelings with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from courier.experiment.style_metrics import knn_style_accuracy, normalized_mutual_information


def test_knn_finds_styles_that_the_embedding_separates_and_not_random_ones():
    rng = np.random.default_rng(0)
    styles = np.repeat(np.arange(4), 50)
    categories = np.tile(np.array(["a", "b"]), 100)
    centres = rng.normal(size=(4, 16))
    x = centres[styles] + 0.1 * rng.normal(size=(200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert knn_style_accuracy(x, styles, categories) == 1.0
    noise = rng.normal(size=(200, 16))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert knn_style_accuracy(noise, styles, categories) < 0.5  # chance is 0.25


@pytest.mark.parametrize("seed", range(3))
def test_nmi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 8, 300), rng.integers(0, 5, 300)
    assert normalized_mutual_information(a, b) == pytest.approx(
        normalized_mutual_info_score(a, b), abs=1e-9
    )
    assert normalized_mutual_information(a, a) == pytest.approx(1.0)
