"""Advance the campaign ledgers from MigoSMTP delivery events (stored by the webhook receiver plugin).

Every 15 minutes, and on demand, each campaign with batches still out for
delivery gets its per-batch counts recomputed from ``email_events``; batches
whose recipients are all final become ``delivered``. A campaign whose complaint
or hard-bounce rate is past the thresholds its run recorded is paused, with one
alert (``include.campaign.deliveries.pause_on_bad_start``). The ledger is an
Asset, so reporting DAGs can run when it changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param, get_current_context, task

from include.campaign.ledger import LEDGER_ASSET

with DAG(
    dag_id="migosmtp_delivery_reconcile",
    description="Recompute delivery counts and delivered batches from webhook events",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "source": Param(
            "webhooks",
            enum=["webhooks", "polling"],
            description="webhooks: from stored events; polling: ask the API for each open batch "
            "(when the provider cannot reach the API server).",
        )
    },
    tags=["email", "migosmtp"],
):

    @task(outlets=[LEDGER_ASSET])
    def reconcile_deliveries() -> dict:
        from include.campaign.deliveries import reconcile_open_campaigns

        return reconcile_open_campaigns(get_current_context()["params"]["source"])

    reconcile_deliveries()
