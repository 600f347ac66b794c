"""The close task: every batch of the run settled in the ledger, the campaign's status recorded,
and the run failed if any batch is unsent (so an operator sees it and resumes it).

It runs whatever happened upstream (``all_done``) and is the ledger Asset's outlet.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.campaign import definition, halts, ledger, staging
from include.campaign.settings import CANCEL, PAUSE, for_task
from include.warehouse import get_warehouse_hook

log = logging.getLogger(__name__)


def close_ledger(
    params: dict[str, Any],
    planned: list[dict[str, Any]] | None,
    run_id: str,
    *,
    dag_id: str | None = None,
    logical_date: datetime | None = None,
) -> dict[str, Any]:
    """Settle every batch's final status, log the summary, record the campaign's status, and fail
    the run if any batch is unsent."""
    settings = for_task(params, dag_id, logical_date)
    if planned is None:
        raise AirflowFailException("planning did not finish, so nothing was sent; see the plan task's log")
    campaign_id = settings.campaign_id
    hook = get_warehouse_hook()
    if not settings.dry_run:
        ledger.fail_unfinished(
            hook,
            campaign_id,
            [b["batch_number"] for b in planned],
            "the batch's task ended without recording an outcome; see its log",
        )
    entries = ledger.rows(hook, campaign_id)
    summary = ledger.summarize(entries)
    # Left planned by the quota pre-flight (send_what_fits); a dry run's plan is all planned.
    waiting = [] if settings.dry_run else [r for r in entries if r["status"] == ledger.PLANNED]
    campaign_status = definition.summarize(hook, campaign_id, summary, settings.dry_run)
    rejected = staging.rejected_count(hook, campaign_id)
    counts = {status: summary.by_status.get(status, 0) for status in ledger.STATUSES}
    log.info(
        "Campaign %s (%s): %d recipients read, %d rejected, %d batches (%d recipients): %s%s%s",
        campaign_id,
        campaign_status,
        summary.recipients + rejected,
        rejected,
        summary.batches,
        summary.recipients,
        ", ".join(f"{n} {status}" for status, n in counts.items()),
        " (dry run)" if settings.dry_run else "",
        "; this run sent nothing: every batch was already at the provider"
        if planned == [] and not waiting
        else "",
    )
    if waiting:
        log.warning(
            "%d batches (%d recipients) did not fit this month's quota and stay planned: after the reset, "
            "trigger mode=retry_failed for campaign %s (or clear this run) to send them",
            len(waiting),
            sum(r["recipient_count"] for r in waiting),
            campaign_id,
        )
    if summary.unsent and settings.mode not in (PAUSE, CANCEL):
        stop = halts.current(hook, campaign_id, run_id)
        cause = (
            f"the run was halted by batch {stop['batch_number']}: {stop['reason']}"
            if stop
            else "; ".join(f"batch {r['batch_number']}: {r['last_error']}" for r in summary.unsent[:5])
        )
        raise AirflowFailException(
            f"{len(summary.unsent)} of {summary.batches} batches were not sent ({cause}). Fix the cause, "
            "then clear this run (it finishes the campaign) or trigger mode=retry_failed for the campaign."
        )
    return {
        "campaign_id": campaign_id,
        "recipients_read": summary.recipients + rejected,
        "rejected": rejected,
        "batches": summary.batches,
        "recipients": summary.recipients,
        "scheduled": counts[ledger.SCHEDULED],
    }
