"""A campaign's definition, recorded at its first plan in ``email_campaigns`` and compared on every later run.

The definition is what a batch's request is made of, or what decides which
recipients share a batch: the recipients table, from, subject, the two bodies
and max_batch_size. A resend under a batch's idempotency key must be
byte-identical (the provider answers 409 otherwise, and a batch that never
arrived would go out with other content under the same campaign), and the
frozen audience was cut into batches of max_batch_size. The sending window
(send_days, send_hours) and default_timezone are in it too: they decided which
recipients share a batch (one zone's, when there is a window) and at which
instants a batch may go, so a re-placed batch must keep them. The caps and
start_at are left out: they are the account's and the operator's, and may
rightly change between a failure and its resume (a plan upgrade, a later slot);
so is the warm-up ramp, an account-wide Variable read at every placement.
max_mails_per_recipient and frequency_days are left out as ignore_suppressions
is: like the suppression list, they screen who is admitted at the first plan,
against the account's state then; the frozen audience does not change with
them, and a resume re-screens no one. dry_run and mode say what a run does, not
what the campaign is.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from include.campaign import ledger
from include.campaign.windows import DEFAULT_TIMEZONE, WEEKDAYS, WHOLE_DAY, SendWindow
from include.warehouse import CAMPAIGNS_TABLE, fetch_dicts, utc_now_text

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from include.campaign.settings import CampaignSettings

FIELDS = (
    "recipients_table",
    "from_email",
    "subject",
    "html_body",
    "text_body",
    "max_batch_size",
    "send_days",
    "send_hours",
    "default_timezone",
)
# Fields added after campaigns were first recorded without them: such a record means the default.
_ADDED_DEFAULTS = {
    "send_days": list(WEEKDAYS),
    "send_hours": WHOLE_DAY,
    "default_timezone": DEFAULT_TIMEZONE,
}

# email_campaigns.status, a summary later work can read without the ledger. A new plan is
# recorded ``planning`` before its first row is written and becomes ``planned`` (or
# ``dry_run``) only once the whole plan and its quota pre-flight are done.
PLANNING, PLAN_FAILED = ledger.PLANNING, ledger.PLAN_FAILED
PLANNED, DRY_RUN, INCOMPLETE = "planned", "dry_run", "incomplete"
SCHEDULED, DELIVERED = "scheduled", "delivered"


class PlanCleared(RuntimeError):
    """The plan being finished is no longer ``planning``: it was cleared as abandoned meanwhile."""


def of(settings: CampaignSettings) -> dict[str, Any]:
    values = {f: getattr(settings, f) for f in FIELDS if f != "max_batch_size"}
    return {**values, "max_batch_size": settings.caps.max_batch_size}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The definition fields whose values differ, in FIELDS order."""
    return [f for f in FIELDS if recorded.get(f, _ADDED_DEFAULTS.get(f)) != current.get(f)]


def window(recorded: dict[str, Any]) -> tuple[SendWindow, str]:
    """The recorded definition's sending window and default zone (a re-placement keeps them)."""
    days = recorded.get("send_days", _ADDED_DEFAULTS["send_days"])
    hours = recorded.get("send_hours", _ADDED_DEFAULTS["send_hours"])
    return SendWindow.parse(days, hours), recorded.get("default_timezone", DEFAULT_TIMEZONE)


def record(
    hook: DbApiHook,
    campaign_id: str,
    definition: dict[str, Any],
    *,
    dag_id: str,
    run_id: str,
    dry_run: bool,
    status: str | None = None,
    transactional: bool = False,
) -> None:
    """Record (or replace, for a plan that sent nothing) the campaign's definition; its status
    is ``status``, or what a finished plan's is. A ``transactional`` campaign's mails are left out
    of other campaigns' frequency caps."""
    now = utc_now_text()
    hook.insert_rows(
        CAMPAIGNS_TABLE,
        [
            (
                campaign_id,
                dag_id,
                run_id,
                json.dumps(definition, sort_keys=True),
                int(dry_run),
                status or (DRY_RUN if dry_run else PLANNED),
                "{}",
                now,
                now,
                int(transactional),
            )
        ],
        target_fields=[
            "campaign_id",
            "dag_id",
            "planned_by_run",
            "definition",
            "dry_run",
            "status",
            "batches_by_status",
            "created_at",
            "updated_at",
            "transactional",
        ],
        replace=True,
        replace_index=["campaign_id"],
    )


def finish_plan(hook: DbApiHook, campaign_id: str, dry_run: bool) -> None:
    """Mark the campaign's new plan whole: from here on its batches hold room and quota.
    Raises ``PlanCleared`` if the plan stopped being ``planning`` meanwhile."""
    p = hook.placeholder
    status = DRY_RUN if dry_run else PLANNED
    hook.run(
        f"UPDATE {CAMPAIGNS_TABLE} SET status = {p}, updated_at = {p} "
        f"WHERE campaign_id = {p} AND status = {p}",
        parameters=(status, utc_now_text(), campaign_id, PLANNING),
    )
    found = read(hook, campaign_id)
    if found is None or found["status"] != status:
        raise PlanCleared(
            f"the plan of campaign {campaign_id!r} was cleared as abandoned while it was written "
            f"(status now {found['status'] if found else 'gone'}); plan it again"
        )


def read(hook: DbApiHook, campaign_id: str) -> dict[str, Any] | None:
    """The campaign's row, its definition parsed; None if it was never planned."""
    found = fetch_dicts(
        hook, f"SELECT * FROM {CAMPAIGNS_TABLE} WHERE campaign_id = {hook.placeholder}", (campaign_id,)
    )
    if not found:
        return None
    row = found[0]
    return {**row, "definition": json.loads(row["definition"]), "dry_run": bool(row["dry_run"])}


def summarize(hook: DbApiHook, campaign_id: str, summary: ledger.LedgerSummary, dry_run: bool) -> str:
    """Store the campaign's status and batches per status, from a ledger summary; returns the status."""
    by_status = summary.by_status
    if dry_run:
        status = DRY_RUN
    elif summary.unsent:
        status = INCOMPLETE
    elif summary.batches and by_status.get(ledger.DELIVERED, 0) == summary.batches:
        status = DELIVERED
    elif summary.batches and sum(by_status.get(s, 0) for s in ledger.SENT_STATUSES) == summary.batches:
        status = SCHEDULED
    else:
        status = PLANNED
    p = hook.placeholder
    # A pause or a cancel is the operator's (or the reconcile's) word: only they change it.
    hook.run(
        f"UPDATE {CAMPAIGNS_TABLE} SET status = CASE WHEN status IN ({p}, {p}) THEN status ELSE {p} END, "
        f"batches_by_status = {p}, updated_at = {p} WHERE campaign_id = {p}",
        parameters=(
            ledger.CAMPAIGN_PAUSED,
            ledger.CAMPAIGN_CANCELLED,
            status,
            json.dumps(by_status, sort_keys=True),
            utc_now_text(),
            campaign_id,
        ),
    )
    found = read(hook, campaign_id)
    return found["status"] if found else status
