"""The shop-signal measure: it sees the style effect exactly when the click model has one."""

from __future__ import annotations

import dataclasses

import pytest

from courier.config.train import TrainConfig
from courier.config.world import WorldConfig
from courier.experiment.shop_signal import behaviour_signal
from courier.world.styles import N_STYLES

SMALL = WorldConfig(n_items=600, n_users=300, n_page_views=4000, days=4)
TRAIN = TrainConfig(batch_size=64)  # 63 other page views in a click's batch


def test_without_a_style_effect_behaviour_carries_no_style_signal():
    flat = behaviour_signal(dataclasses.replace(SMALL, b_style=0.0), l_click=5, train=TRAIN)
    # Clicks fall on liked styles only as often as liked styles are shown.
    assert flat.liked_click_share == pytest.approx(SMALL.styles_per_user / N_STYLES, abs=0.04)
    assert flat.style_match_auc == pytest.approx(0.5, abs=0.02)


def test_the_style_signal_grows_with_the_style_effect_and_the_history():
    default = behaviour_signal(SMALL, l_click=5, train=TRAIN)
    strong = behaviour_signal(dataclasses.replace(SMALL, b_style=3.0), l_click=5, train=TRAIN)
    longer = behaviour_signal(SMALL, l_click=20, train=TRAIN)
    assert 0.54 < default.style_match_auc < strong.style_match_auc
    assert longer.history_has_style > default.history_has_style + 0.1
    # Users keep to their categories:
    # the history's categories tell a click from another page's items.
    assert default.other_page_category_auc > 0.6
    assert default.hard_negative_share == pytest.approx(
        (SMALL.items_per_page - 1 + 63 * SMALL.items_per_page * 0.17)
        / (SMALL.items_per_page - 1 + 630),
        abs=0.03,
    )
