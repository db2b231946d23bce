"""How much a world's behaviour says about style: the signal COURIER's loss can learn from.

COURIER learns an item's image embedding by reconstructing a page view's clicked
items from the user's earlier clicks (method.md), against the page's unclicked
items and the other page views of the batch. Style can only be learned where
that contrast depends on style:

* the clicked item's style must be among the history's styles more often than an
  unclicked item's of the same page (``style_match_auc``: a perfect style-only
  reconstruction scored against the same page's negatives);
* the negatives must share the clicked item's category, or the category alone
  separates them: ``other_page_category_auc`` is how well the history's categories alone
  tell a click from another page view's item, ``hard_negative_share`` the share of a
  click's in-batch negatives in its category when page views are batched at random.

Computed from the world's own click model (``draw_page_views``), without
rendering a single image, so a sweep over world knobs takes seconds per shop:

    python -m courier.experiment.shop_signal     # the default shop and one knob at a time
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from courier.config.train import TrainConfig
from courier.config.world import WorldConfig
from courier.ctr.metrics import auc
from courier.world.behaviour import draw_page_views, draw_users, plan_batches
from courier.world.generate import draw_catalogue


@dataclass(frozen=True)
class BehaviourSignal:
    """The style signal of one world, for a click history of ``l_click`` items."""

    l_click: int
    clicks_per_page_view: float
    liked_click_share: float  # clicks on one of the user's liked styles
    history_has_style: float  # clicked items whose style is among the user's last l_click clicks
    style_match_auc: float  # clicked vs unclicked (same page): #history items of the item's style
    other_page_category_auc: (
        float  # clicked vs another page view's items: #history items of the item's category
    )
    hard_negative_share: (
        float  # in-batch negatives of a click that share its category (random batches)
    )

    def row(self) -> str:
        return (
            f"{self.l_click:>7} {self.clicks_per_page_view:>9.2f} {self.liked_click_share:>11.3f} "
            f"{self.history_has_style:>13.3f} {self.style_match_auc:>15.3f} "
            f"{self.other_page_category_auc:>18.3f} {self.hard_negative_share:>13.3f}"
        )

    @staticmethod
    def header() -> str:
        return (
            f"{'l_click':>7} {'clicks/pv':>9} {'liked share':>11} {'hist has style':>13} "
            f"{'style match AUC':>15} {'other-page cat. AUC':>18} {'hard negatives':>13}"
        )


def behaviour_signal(cfg: WorldConfig, l_click: int, train: TrainConfig) -> BehaviourSignal:
    """The signal of ``cfg``'s world for histories of
    ``l_click`` clicks and batches of ``train.batch_size`` page views."""
    catalogue, users = draw_catalogue(cfg), draw_users(cfg)
    # (ts, item row)
    history: dict[int, deque[tuple[int, int]]] = defaultdict(lambda: deque(maxlen=l_click))
    style_hits, labels = [], []
    # history items of the category of a click / another page's item
    category_clicked, category_other = [], []
    rng = np.random.default_rng(cfg.seed)
    clicks = page_views = liked_clicks = 0
    queries = []
    for spec in plan_batches(cfg):
        pv = draw_page_views(cfg, catalogue, users, spec)
        queries.append(pv.query)
        page_views += len(pv.user)
        clicks += int(pv.clicked.sum())
        liked_clicks += int(
            (pv.clicked & users.likes[pv.user[:, None], catalogue.style[pv.shown]]).sum()
        )
        for i in range(len(pv.user)):
            user, ts = int(pv.user[i]), int(pv.ts[i])
            # strictly before, as the sample build
            earlier = [item for t, item in history[user] if t < ts]
            if earlier:
                shown = pv.shown[i]  # (k,) item rows
                style_hits.append(
                    (catalogue.style[shown][:, None] == catalogue.style[earlier][None, :]).sum(1)
                )
                labels.append(pv.clicked[i])
                per_category = np.bincount(catalogue.category[earlier], minlength=cfg.n_categories)
                # an in-batch negative page (may be this one)
                other_page = pv.shown[rng.integers(len(pv.user))]
                category_clicked.append(per_category[catalogue.category[shown[pv.clicked[i]]]])
                category_other.append(per_category[catalogue.category[other_page]])
            for item in pv.shown[i][pv.clicked[i]].tolist():
                history[user].append((ts, item))
    style, label = np.concatenate(style_hits), np.concatenate(labels)
    positive, other = np.concatenate(category_clicked), np.concatenate(category_other)
    return BehaviourSignal(
        l_click=l_click,
        clicks_per_page_view=clicks / page_views,
        liked_click_share=liked_clicks / max(clicks, 1),
        history_has_style=float((style[label] > 0).mean()),
        style_match_auc=auc(label.astype(np.int64), style.astype(np.float64)),
        other_page_category_auc=auc(
            np.r_[np.ones(len(positive)), np.zeros(len(other))].astype(np.int64),
            np.r_[positive, other].astype(np.float64),
        ),
        hard_negative_share=_hard_negative_share(
            np.concatenate(queries), cfg.items_per_page, train.batch_size
        ),
    )


def _hard_negative_share(query: np.ndarray, k: int, batch_size: int) -> float:
    """Of a click's in-batch negatives (its page's k-1 others, k per other page view), the share
    in its category, for page views drawn at random into batches."""
    # two random page views, one query
    p_same = float(np.sum((np.bincount(query) / len(query)) ** 2))
    other = (batch_size - 1) * k
    return ((k - 1) + other * p_same) / ((k - 1) + other)


SWEEP: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("default shop", {}, 5),
    ("history of 20 clicks", {}, 20),
    ("1 liked style per user", {"styles_per_user": 1}, 5),
    ("2 liked styles per user", {"styles_per_user": 2}, 5),
    ("5 liked styles per user", {"styles_per_user": 5}, 5),
    ("5 items per page", {"items_per_page": 5}, 5),
    ("20 items per page", {"items_per_page": 20}, 5),
    ("1 category per user", {"categories_per_user": 1}, 5),
    ("b_style 1.0", {"b_style": 1.0}, 5),
    ("b_style 3.0", {"b_style": 3.0}, 5),
)


def main() -> None:
    """Print the signal of the default shop and of one knob changed at a time."""
    base, train = WorldConfig(), TrainConfig()
    print(f"{'world':<26} " + BehaviourSignal.header())
    for name, changes, l_click in SWEEP:
        signal = behaviour_signal(dataclasses.replace(base, **changes), l_click, train)
        print(f"{name:<26} " + signal.row(), flush=True)


if __name__ == "__main__":
    main()
