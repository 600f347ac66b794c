"""Send a MigoSMTP bulk email campaign from a warehouse table, within the plan's caps.

plan -> send_batch (one mapped task per batch, each with its send_at) -> close_ledger.
The logic lives in ``include/``; see the README for Connections and Params.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, TriggerRule, get_current_context, task

from include.campaign.alerts import CampaignHaltNotifier
from include.campaign.ledger import LEDGER_ASSET
from include.campaign.settings import campaign_params
from include.migosmtp.retry_policy import MigoSmtpRetryPolicy

with DAG(
    dag_id="bulk_email_campaign",
    description="Plan, send and record a MigoSMTP bulk campaign in rate-limited batches",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    params=campaign_params(),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
    tags=["email", "migosmtp"],
):

    @task
    def plan() -> list[dict]:
        from include.campaign.tasks import plan_campaign

        return plan_campaign(get_current_context()["params"])

    # Retries follow the provider's error table (see MigoSmtpRetryPolicy); the
    # retry count only bounds how many 429 waits one batch may sit through.
    # The migosmtp_api pool caps concurrent API calls across all runs and workers.
    @task(
        pool="migosmtp_api",
        retries=12,
        retry_policy=MigoSmtpRetryPolicy(),
        on_failure_callback=CampaignHaltNotifier(),
        map_index_template="{{ batch_label }}",
    )
    def send_batch(batch: dict) -> dict:
        from include.campaign.tasks import batch_label, send_batch

        context = get_current_context()
        context["batch_label"] = batch_label(batch)
        return send_batch(batch, context["params"], context["run_id"])

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[LEDGER_ASSET])
    def close_ledger(planned: list[dict] | None) -> dict:
        from include.campaign.tasks import close_ledger

        context = get_current_context()
        return close_ledger(context["params"], planned, context["run_id"])

    planned = plan()
    send_batch.expand(batch=planned) >> close_ledger(planned)
