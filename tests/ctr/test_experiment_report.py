"""The experiment report's lift-against-steps curve, from a summary built by hand (no Spark)."""

from __future__ import annotations

import datetime as dt

from courier.config import load_config
from courier.ctr.metrics import Lift
from courier.experiment.report import (
    ArmSummary,
    ExperimentSummary,
    _lift_by_steps,
    _markdown,
    steps_curve,
)


def _row(arm: str, lift: float, share: float | None) -> ArmSummary:
    return ArmSummary(
        arm,
        3,
        0.57 + lift / 100,
        0.001,
        0.55,
        lift,
        0.1,
        lift,
        None if arm == "none" else Lift(lift, lift - 0.3, lift + 0.3, 200),
        share,
    )


def _summary() -> ExperimentSummary:
    rows = [
        _row("none", 0.0, None),
        _row("oracle", 6.0, None),
        _row("random_init", 0.2, 0.03),
        _row("courier/cluster_id", 0.6, 0.1),
        _row("courier/vector", 0.9, 0.15),
        _row("courier_steps40", 0.4, 0.07),
        _row("courier_steps240", 0.7, 0.12),
        _row("simclr", 0.3, 0.05),
    ]
    window = {"train_window": ["2026-01-01", "2026-01-09"]}
    encoders = {
        "random_init": {"train_steps": 0},
        "simclr": {"train_steps": 120, **window},
        "courier": {"train_steps": 120, **window},
        "courier_steps40": {"train_steps": 40},
        "courier_steps240": {"train_steps": 240},
    }
    style = {
        v: {"style_knn10": 0.2 + s / 1000, "style_nmi": 0.3, "category_nmi": 0.5}
        for v, s in (
            ("random_init", 0),
            ("simclr", 120),
            ("courier", 120),
            ("courier_steps40", 40),
            ("courier_steps240", 240),
        )
    }
    return ExperimentSummary(
        rows,
        (dt.date(2026, 1, 12), dt.date(2026, 1, 14)),
        (dt.date(2026, 1, 10), dt.date(2026, 1, 11)),
        1000,
        encoders,
        style,
    )


def test_the_steps_curve_is_courier_by_budget_with_random_init_as_step_zero(tmp_path):
    summary = _summary()
    curve = steps_curve(summary)
    # simclr and the vector usage are not COURIER's Cluster-ID at a budget
    assert [(steps, variant, row.arm) for steps, variant, row in curve] == [
        (0, "random_init", "random_init"),
        (40, "courier_steps40", "courier_steps40"),
        (120, "courier", "courier/cluster_id"),
        (240, "courier_steps240", "courier_steps240"),
    ]
    picture = _lift_by_steps(summary, tmp_path / "lift_by_steps.png")
    assert picture is not None and picture.stat().st_size > 5000
    md = _markdown(load_config("local"), summary, tmp_path)
    assert "| 240 | courier_steps240 | +0.70 ± 0.10 | [+0.40, +1.00] | 12% |" in md
    # the report states which days the encoders learned from, against the scored days
    assert "CTR validation days 2026-01-10..2026-01-11, test days 2026-01-12..2026-01-14" in md
    assert "- 2026-01-01..2026-01-09: simclr, courier" in md


def test_one_budget_draws_no_curve(tmp_path):
    summary = _summary()
    summary.encoders = {"courier": {"train_steps": 120}}
    assert _lift_by_steps(summary, tmp_path / "lift_by_steps.png") is None
    assert "training steps (0 = the random-init network)" not in _markdown(
        load_config("local"), summary, tmp_path
    )
