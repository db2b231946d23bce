"""``courier evaluate`` / ``courier promote`` against a real MLflow registry.

The versions are copies of the features' 30-step encoder under their own registered
model, so moving their aliases never touches what the other feature tests embed with.
"""

from __future__ import annotations

import pytest

from courier import tracking
from courier.train.errors import PromotionError
from courier.train.promotion import (
    TAG_EVAL_PRODUCTION,
    decide,
    evaluate_candidate,
    promote_candidate,
)
from jobs.cli import main

MODEL = "courier-promotion-test"


@pytest.fixture(scope="module")
def registry(encoder_config, registered_encoder):
    """(config, client, [version 1, version 2]): two versions of the same weights."""
    uri = tracking.resolve_tracking_uri(encoder_config.mlflow.tracking_uri)
    client = tracking.client(uri)
    source = client.get_model_version(encoder_config.mlflow.registered_model, registered_encoder)
    client.create_registered_model(MODEL)
    versions = [
        str(client.create_model_version(MODEL, source.source, run_id=source.run_id).version)
        for _ in range(2)
    ]
    cfg = encoder_config.replace([f"mlflow.registered_model={MODEL}", "promote.max_rows=256"])
    return cfg, client, versions


def _alias(client, alias):
    try:
        return str(client.get_model_version_by_alias(MODEL, alias).version)
    except Exception:  # noqa: BLE001 - MlflowException of several kinds: all mean "no such alias"
        return None


def test_promotion_follows_the_evaluation(registry, capsys):
    cfg, client, (v1, v2) = registry
    client.set_registered_model_alias(MODEL, "candidate", v1)
    with pytest.raises(PromotionError, match="run `courier evaluate` first"):
        promote_candidate(cfg)  # no evaluation, no promotion

    first = evaluate_candidate(cfg)
    assert first.production is None and first.holdout_rows > 0
    assert 0.0 <= first.candidate["row_auc"] <= 1.0
    decision = promote_candidate(cfg)
    assert decision.promoted and "no production model yet" in decision.reason
    assert _alias(client, "production") == v1
    assert not promote_candidate(cfg).promoted  # again: already production, a no-op

    # Version 2 holds the same weights:
    # scored on the same rows it ties, so it cannot win by a margin.
    client.set_registered_model_alias(MODEL, "candidate", v2)
    second = evaluate_candidate(cfg)
    assert second.production_version == v1
    assert second.candidate["row_auc"] == pytest.approx(second.production["row_auc"], abs=1e-6)
    assert (
        main(
            [
                "promote",
                "--set",
                f"mlflow.registered_model={MODEL}",
                "--set",
                f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
                "--skip-exit-code",
                "99",
            ]
        )
        == 99
    )
    assert "kept production" in capsys.readouterr().out
    assert _alias(client, "production") == v1

    # With no margin a tie is enough; but production moved since the evaluation: refused.
    client.set_registered_model_alias(MODEL, "production", v2)
    client.set_registered_model_alias(MODEL, "candidate", v1)
    client.set_model_version_tag(MODEL, v1, TAG_EVAL_PRODUCTION, v1)
    with pytest.raises(PromotionError, match="evaluate` again"):
        promote_candidate(cfg.replace(["promote.margin=0"]))


@pytest.mark.parametrize(
    ("ours", "theirs", "margin", "promoted"),
    [
        (0.70, 0.69, 0.002, True),
        (0.70, 0.6995, 0.002, False),
        (0.70, 0.70, 0.0, True),
        (0.60, 0.70, 0.0, False),
    ],
)
def test_the_margin_decides(encoder_config, ours, theirs, margin, promoted):
    cfg = encoder_config.replace([f"promote.margin={margin}"])
    tags = {
        "courier.eval.row_auc": str(ours),
        "courier.eval.production.row_auc": str(theirs),
        TAG_EVAL_PRODUCTION: "3",
    }
    verdict, reason = decide(cfg, tags, candidate="4", production="3", name="m")
    assert verdict is promoted and f"margin {margin}" in reason
