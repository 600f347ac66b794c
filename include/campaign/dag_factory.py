"""``campaign_dag``: one call builds a campaign DAG (plan -> send_batch x N -> close_ledger).

A DAG file is then a few lines: a manual campaign (``schedule=None``, campaign_id
given at each trigger) or a recurring one (a schedule, each run naming its
campaign after its logical date). Building the DAG does no I/O, so DAG files
that call this stay cheap to parse.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, TriggerRule, get_current_context, task

from include.campaign.alerts import CampaignHaltNotifier
from include.campaign.ledger import LEDGER_ASSET
from include.campaign.operators import SendBatchOperator
from include.campaign.settings import campaign_params
from include.migosmtp.retry_policy import (
    MAX_RATE_WINDOW_SECONDS,
    MAX_REQUEST_TIMEOUT_SECONDS,
    MigoSmtpRetryPolicy,
)

API_POOL = "migosmtp_api"
# One slot: plans run one at a time across every campaign DAG and worker. Each plan reads what
# the account's slots already hold and books into them; two plans side by side could both book
# the same room. An Airflow pool rather than a warehouse lock: it works on any warehouse,
# shows waiting plans in the UI, and is freed by Airflow when a worker dies mid-plan.
PLANNING_POOL = "campaign_planning"
DEFAULT_START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
# A try's worst case: 3 requests (look-up before a resend, send, look-up after a 2xx without batch_id),
# each at the deadline's ceiling, the rate-window hold, and a minute for the warehouse: 9 minutes.
SEND_BATCH_TIMEOUT = timedelta(seconds=3 * MAX_REQUEST_TIMEOUT_SECONDS + MAX_RATE_WINDOW_SECONDS + 60)


def batch_label(batch: dict[str, Any]) -> str:
    """What the UI shows for a mapped batch, e.g. ``batch 7/34 · 2026-11-28T14:00Z · 150``."""
    send_at = batch["send_at"][:16] + "Z"
    return f"batch {batch['batch_number']}/{batch['batch_count']} · {send_at} · {batch['recipient_count']}"


def _run(context: dict[str, Any]) -> dict[str, Any]:
    """What names a run's campaign: its DAG, its run id, its logical date (None for some manual runs)."""
    dag_run = context["dag_run"]
    return {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "logical_date": dag_run.logical_date}


def campaign_dag(
    dag_id: str,
    *,
    schedule: Any = None,
    start_date: datetime = DEFAULT_START_DATE,
    catchup: bool = False,
    tags: list[str] | None = None,
    description: str | None = None,
    **param_defaults: Any,
) -> DAG:
    """A campaign DAG. ``param_defaults`` set the Params' defaults (recipients_table, from_email,
    subject, html_body, text_body, hourly_cap, daily_cap, max_batch_size, ...).

    With ``schedule=None`` the DAG is manual and campaign_id is required at each trigger;
    with a schedule it may be left empty, and the run's campaign is
    ``<dag_id>-<logical date>``, the same for the run, its retries, clears and backfills.
    """
    with DAG(
        dag_id=dag_id,
        description=description or "Plan, send and record a MigoSMTP bulk campaign in rate-limited batches",
        schedule=schedule,
        start_date=start_date,
        catchup=catchup,
        # Runs last as long as their plans (days), so several campaigns run at once; two runs of one
        # campaign do not: plan refuses a run while another live run sends its campaign.
        params=campaign_params(campaign_id_required=schedule is None, **param_defaults),
        default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
        tags=tags or ["email", "migosmtp"],
        user_defined_filters={"batch_label": batch_label},
    ) as dag:

        @task(pool=PLANNING_POOL)
        def plan() -> list[dict]:
            from include.campaign.plan import plan_campaign

            context = get_current_context()
            # The state of another run of the campaign: is it still sending? (only plan asks)
            return plan_campaign(context["params"], run_state=context["ti"].get_dagrun_state, **_run(context))

        # Retries follow the provider's error table (see MigoSmtpRetryPolicy); the
        # retry count only bounds how many 429 waits one batch may sit through.
        # The API pool caps concurrent API calls across all runs and workers; a batch waiting for
        # its submit time is deferred and holds none. The label is rendered from the batch itself,
        # so Airflow shows it before the task body runs (while the batch waits, or if it fails first).
        send_batch = SendBatchOperator.partial(
            task_id="send_batch",
            pool=API_POOL,
            retries=12,
            execution_timeout=SEND_BATCH_TIMEOUT,
            retry_policy=MigoSmtpRetryPolicy(),
            on_failure_callback=CampaignHaltNotifier(),
            map_index_template="{{ task.batch | batch_label }}",
        )

        @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[LEDGER_ASSET])
        def close_ledger(planned: list[dict] | None) -> dict:
            from include.campaign.close import close_ledger

            context = get_current_context()
            return close_ledger(context["params"], planned, **_run(context))

        planned = plan()
        send_batch.expand(batch=planned) >> close_ledger(planned)
    return dag
