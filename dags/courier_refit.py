"""courier, when the production model changes: embed -> cluster (warm start) -> assign.

Scheduled on the production-model asset (courier_retraining's promote task): every item
is embedded with the new model, the clusters are re-fitted from the previous centroids
(ids matched, so a Cluster-ID keeps its meaning) and every item is re-assigned.
"""

from __future__ import annotations

from airflow.sdk import DAG

from courier.schedule import PRODUCTION_MODEL, REFIT_STEPS, Deployment
from courier.schedule.operators import asset, chain_steps, dag_settings

deployment = Deployment.from_env()

with DAG(
    dag_id="courier_refit",
    description=(
        "new production model -> its embeddings -> a warm-started cluster version -> Cluster-IDs"
    ),
    schedule=[asset(PRODUCTION_MODEL)],
    tags=["courier", "ml-features"],
    **dag_settings(deployment),
) as dag:
    chain_steps(REFIT_STEPS, deployment)
