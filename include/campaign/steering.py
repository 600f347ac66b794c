"""Steering a campaign while it runs: pause, resume, cancel, and which run is sending it.

A campaign's batches wait (deferred) until shortly before their slot, so its state in
``email_campaigns`` is read again by every batch before its request: a pause or a cancel takes
effect for every batch not yet at the provider. A cancel also asks the provider to cancel the
batches it holds whose slot is far enough away (``provider.CANCEL_MIN_LEAD``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from include.campaign import ledger
from include.warehouse import CAMPAIGNS_TABLE, changed_rows, fetch_dicts, parse_utc, utc_now_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from include.campaign.settings import CampaignSettings

log = logging.getLogger(__name__)

PAUSED, CANCELLED = ledger.CAMPAIGN_PAUSED, ledger.CAMPAIGN_CANCELLED
# The status a resumed campaign goes back to; close_ledger's summary refines it.
RESUMED = "planned"
# A run in one of these states is still sending its campaign.
LIVE_RUN_STATES = ("queued", "running")


class CampaignCancelled(AirflowFailException):
    """A run for a campaign that was cancelled: nothing of it may be sent again."""


def stopped_message(campaign_id: str, recorded: dict[str, Any]) -> str:
    return (
        f"campaign {campaign_id!r} was cancelled ({recorded.get('status_reason') or 'no reason recorded'}); "
        "nothing more of it is sent. Give a new campaign a new campaign_id."
    )


def refuse_if_cancelled(campaign_id: str, recorded: dict[str, Any] | None) -> None:
    if recorded is not None and recorded["status"] == CANCELLED:
        raise CampaignCancelled(stopped_message(campaign_id, recorded))


def live_sender(
    recorded: dict[str, Any] | None, run_id: str, run_state: Callable[[str, str], str | None] | None
) -> str | None:
    """The other run still sending the campaign (``dag_id/run_id``), or None.

    ``run_state`` asks Airflow for a run's state (``RuntimeTaskInstance.get_dagrun_state``);
    without it (a step called outside a task) no run counts as live.
    """
    if recorded is None or run_state is None:
        return None
    dag_id, other = recorded.get("sending_dag_id"), recorded.get("sending_run_id")
    if not dag_id or not other or other == run_id:
        return None
    try:
        state = run_state(dag_id, other)
    except Exception:  # the run was deleted: it sends nothing
        log.info("Run %s/%s that last sent campaign %s is gone", dag_id, other, recorded["campaign_id"])
        return None
    # The Task SDK answers with its own DagRunState, a str Enum whose str() is "DagRunState.RUNNING".
    return f"{dag_id}/{other}" if getattr(state, "value", state) in LIVE_RUN_STATES else None


def record_sender(hook: DbApiHook, settings: CampaignSettings, dag_id: str, run_id: str) -> None:
    """This run sends the campaign now: its run, its submit lead and its bad-start thresholds."""
    p = hook.placeholder
    hook.run(
        f"UPDATE {CAMPAIGNS_TABLE} SET sending_dag_id = {p}, sending_run_id = {p}, "
        f"submit_ahead_minutes = {p}, max_complaint_rate = {p}, max_hard_bounce_rate = {p}, "
        f"min_results_for_rates = {p}, updated_at = {p} WHERE campaign_id = {p}",
        parameters=(
            dag_id,
            run_id,
            settings.submit_ahead_minutes,
            settings.max_complaint_rate,
            settings.max_hard_bounce_rate,
            settings.min_results_for_rates,
            utc_now_text(),
            settings.campaign_id,
        ),
    )


def record_thresholds(hook: DbApiHook, settings: CampaignSettings) -> None:
    """A resume's bad-start thresholds, for the reconcile to judge the campaign by from now on."""
    p = hook.placeholder
    hook.run(
        f"UPDATE {CAMPAIGNS_TABLE} SET max_complaint_rate = {p}, max_hard_bounce_rate = {p}, "
        f"min_results_for_rates = {p}, updated_at = {p} WHERE campaign_id = {p}",
        parameters=(
            settings.max_complaint_rate,
            settings.max_hard_bounce_rate,
            settings.min_results_for_rates,
            utc_now_text(),
            settings.campaign_id,
        ),
    )


def status(hook: DbApiHook, campaign_id: str) -> str | None:
    """The campaign's status, or None if it was never planned (one indexed look-up)."""
    found = fetch_dicts(
        hook, f"SELECT status FROM {CAMPAIGNS_TABLE} WHERE campaign_id = {hook.placeholder}", (campaign_id,)
    )
    return found[0]["status"] if found else None


def _set_status(hook: DbApiHook, campaign_id: str, new: str, reason: str, only_from: tuple[str, ...]) -> bool:
    """Move the campaign to ``new`` if its status is one of ``only_from``; True if it moved."""
    p = hook.placeholder
    allowed = ", ".join([p] * len(only_from))
    return (
        changed_rows(
            hook,
            f"UPDATE {CAMPAIGNS_TABLE} SET status = {p}, status_reason = {p}, updated_at = {p} "
            f"WHERE campaign_id = {p} AND status IN ({allowed})",
            (new, reason[:2000], utc_now_text(), campaign_id, *only_from),
        )
        == 1
    )


# Statuses a campaign can be paused or cancelled from: any plan that is whole and not dry.
_STEERABLE = ("planned", "incomplete", "scheduled", "delivered")


def pause(hook: DbApiHook, campaign_id: str, reason: str) -> bool:
    """Pause the campaign: no batch of it is submitted until it is resumed. True if it was running."""
    return _set_status(hook, campaign_id, PAUSED, reason, _STEERABLE)


def resume(hook: DbApiHook, campaign_id: str, reason: str) -> bool:
    """Let a paused campaign go on. True if it was paused."""
    return _set_status(hook, campaign_id, RESUMED, reason, (PAUSED,))


def cancel(hook: DbApiHook, campaign_id: str, reason: str, gateway: Any, now: datetime | None = None) -> dict:
    """Cancel the campaign: nothing more of it is submitted, the batches the provider never got are
    ``cancelled``, and those it holds whose slot is more than ``CANCEL_MIN_LEAD`` away are cancelled
    there. Returns what changed, by kind."""
    now = now or datetime.now(UTC)
    moved = _set_status(hook, campaign_id, CANCELLED, reason, (*_STEERABLE, PAUSED))
    never_sent = ledger.record_cancelled(hook, campaign_id, reason)
    at_provider, too_late = 0, 0
    for entry in ledger.rows(hook, campaign_id):
        if entry["status"] not in ledger.SETTLED_STATUSES and entry["attempts"]:
            # Attempted, outcome unknown (failed, halted, or in flight now): the provider says.
            found = gateway.find_submitted(entry["idempotency_key"])
            if found is None:
                ledger.record_cancelled_at_provider(hook, campaign_id, entry["batch_number"], reason)
                never_sent += 1
                continue
            ledger.record_scheduled(hook, campaign_id, entry["batch_number"], found)
            entry = {**entry, "status": ledger.SCHEDULED, "batch_id": found}
        if entry["status"] != ledger.SCHEDULED or not entry["batch_id"]:
            continue
        if cancel_sent_batch(hook, campaign_id, entry, entry["batch_id"], gateway, reason, now):
            at_provider += 1
        else:
            too_late += 1
    return {"moved": moved, "never_sent": never_sent, "at_provider": at_provider, "too_late": too_late}


def cancel_sent_batch(
    hook: DbApiHook,
    campaign_id: str,
    entry: dict[str, Any],
    batch_id: str,
    gateway: Any,
    reason: str = "campaign cancelled",
    now: datetime | None = None,
) -> bool:
    """Cancel a batch the provider holds, if its slot is more than ``CANCEL_MIN_LEAD`` away and the
    provider agrees; True if it is now ``cancelled``. Used by a cancel, and by a batch that reached
    the provider while its campaign was being cancelled."""
    from include.campaign.provider import CANCEL_MIN_LEAD

    lead = parse_utc(entry["send_at"]) - (now or datetime.now(UTC))
    if lead <= CANCEL_MIN_LEAD or not gateway.cancel(batch_id):
        return False
    ledger.record_cancelled_at_provider(hook, campaign_id, entry["batch_number"], reason)
    return True
