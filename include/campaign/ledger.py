"""The batch ledger, ``email_batch_ledger``: one row per (campaign_id, batch_number).

Rows are written as ``planned`` before anything is sent. Each batch's task
counts an attempt *before* its request leaves (so ``attempts > 0`` means the
provider may have the batch, and a later attempt asks it first), then records
the outcome the moment it knows it: ``scheduled`` with the provider's batch
id, ``failed`` with the error, or ``halted`` (not sent, because the campaign
was halted). A run that dies anywhere leaves a ledger from which a rerun can
reconstruct exactly what reached the provider.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

from include.warehouse import (
    CAMPAIGNS_TABLE,
    LEDGER_TABLE,
    bulk_insert,
    changed_rows,
    fetch_dicts,
    in_values,
    parse_utc,
    utc_now_text,
    utc_text,
)

if TYPE_CHECKING:
    from datetime import datetime

    from airflow.providers.common.sql.hooks.sql import DbApiHook

# The ledger as an Airflow Asset: downstream reporting DAGs can be scheduled on its changes.
LEDGER_ASSET = Asset(name="email_batch_ledger", uri="warehouse://warehouse_default/email_batch_ledger")

PLANNED, SCHEDULED, FAILED, HALTED, DELIVERED = "planned", "scheduled", "failed", "halted", "delivered"
# Never sent because every recipient was suppressed after planning (suppressions.drop_from_unsent_batch).
SUPPRESSED = "suppressed"
# Stopped by a cancel of the campaign: never sent, or cancelled at the provider before its slot.
CANCELLED = "cancelled"
STATUSES = (PLANNED, SCHEDULED, FAILED, HALTED, DELIVERED, SUPPRESSED, CANCELLED)
# Done: nothing to (re)send. At the provider, or with no one left to send to (no recipients,
# so it holds no room under the caps). Every other status is resent by mode=retry_failed.
SENT_STATUSES = (SCHEDULED, DELIVERED, SUPPRESSED)
# Settled for good: nothing to send, and no room held under the caps or the quota.
SETTLED_STATUSES = (*SENT_STATUSES, CANCELLED)

# email_campaigns.status while a new plan is being written, and after one failed part-way
# (``definition``). Such a plan's rows are no plan yet: they hold no room and no quota.
PLANNING, PLAN_FAILED = "planning", "plan_failed"
UNFINISHED_PLANS = (PLANNING, PLAN_FAILED)
# email_campaigns.status of a campaign an operator (or the reconcile) stopped: no batch is submitted.
CAMPAIGN_PAUSED, CAMPAIGN_CANCELLED = "paused", CANCELLED

FIELDS = (
    "campaign_id",
    "batch_number",
    "batch_id",
    "idempotency_key",
    "recipient_ids",
    "recipient_count",
    "status",
    "send_at",
    "attempts",
    "last_error",
    "created_at",
    "updated_at",
    "timezone",
)


@dataclass(frozen=True)
class LedgerSummary:
    batches: int
    recipients: int
    by_status: dict[str, int]
    unsent: list[dict[str, Any]]


def planned_row(
    campaign_id: str,
    batch_number: int,
    key: str,
    recipient_ids: Sequence[str],
    send_at: datetime,
    now: str,
    timezone: str | None = None,
) -> tuple:
    """A ``planned`` ledger row, in ``FIELDS`` order; ``timezone``: its recipients' zone, when a
    sending window made the batch one zone's (a re-placement keeps it inside that window)."""
    return (
        campaign_id,
        batch_number,
        None,
        key,
        json.dumps(list(recipient_ids)),
        len(recipient_ids),
        PLANNED,
        utc_text(send_at),
        0,
        None,
        now,
        now,
        timezone,
    )


# -- writes inside another module's transaction (a plan's chunk, a plan cleared, a batch shrunk) ---


def insert_planned(conn: Any, placeholder: str, planned: Sequence[Sequence[Any]]) -> None:
    """Append ``planned_row`` rows on ``conn``, in its open transaction (COPY on PostgreSQL)."""
    bulk_insert(conn, placeholder, LEDGER_TABLE, FIELDS, planned)


def delete_campaign(cur: Any, placeholder: str, campaign_id: str) -> None:
    """Remove the campaign's rows, in the cursor's transaction: only for a plan that sent nothing."""
    cur.execute(f"DELETE FROM {LEDGER_TABLE} WHERE campaign_id = {placeholder}", (campaign_id,))


def unattempted_recipient_ids(cur: Any, placeholder: str, campaign_id: str, batch_number: int) -> list | None:
    """The batch's recipient ids while it has never been attempted (None once it has)."""
    p = placeholder
    cur.execute(
        f"SELECT recipient_ids FROM {LEDGER_TABLE} WHERE campaign_id = {p} AND batch_number = {p} "
        "AND attempts = 0",
        (campaign_id, batch_number),
    )
    entry = cur.fetchone()
    return None if entry is None else json.loads(entry[0])


def shrink_unattempted(
    cur: Any, placeholder: str, campaign_id: str, batch_number: int, remaining: Sequence[str]
) -> bool:
    """Keep only ``remaining`` recipients in a never-attempted batch, in the cursor's transaction;
    with none left it is ``suppressed`` (nothing to send). False if it was attempted meanwhile."""
    p = placeholder
    status_sql = f", status = {p}, last_error = {p}" if not remaining else ""
    status = (SUPPRESSED, "every recipient was suppressed after planning") if not remaining else ()
    cur.execute(
        f"UPDATE {LEDGER_TABLE} SET recipient_ids = {p}, recipient_count = {p}{status_sql}, "
        f"updated_at = {p} WHERE campaign_id = {p} AND batch_number = {p} AND attempts = 0",
        (json.dumps(list(remaining)), len(remaining), *status, utc_now_text(), campaign_id, batch_number),
    )
    return cur.rowcount == 1


# -- reads and single-statement writes -------------------------------------------------------


def rows(hook: DbApiHook, campaign_id: str, with_recipient_ids: bool = False) -> list[dict[str, Any]]:
    """The campaign's ledger rows; recipient id lists only on request, as they grow with the audience."""
    columns = ", ".join(f for f in FIELDS if with_recipient_ids or f != "recipient_ids")
    return fetch_dicts(
        hook,
        f"SELECT {columns} FROM {LEDGER_TABLE} WHERE campaign_id = {hook.placeholder} ORDER BY batch_number",
        (campaign_id,),
    )


def campaigns_with(hook: DbApiHook, status: str) -> list[str]:
    """The campaigns that have a batch in ``status``."""
    found = fetch_dicts(
        hook,
        f"SELECT DISTINCT campaign_id FROM {LEDGER_TABLE} WHERE status = {hook.placeholder} "
        "ORDER BY campaign_id",
        (status,),
    )
    return [r["campaign_id"] for r in found]


def row(hook: DbApiHook, campaign_id: str, batch_number: int) -> dict[str, Any] | None:
    found = fetch_dicts(
        hook,
        f"SELECT * FROM {LEDGER_TABLE} WHERE campaign_id = {hook.placeholder} "
        f"AND batch_number = {hook.placeholder}",
        (campaign_id, batch_number),
    )
    return found[0] if found else None


def _update(hook: DbApiHook, campaign_id: str, batch_number: int, assignments: str, values: tuple) -> None:
    p = hook.placeholder
    hook.run(
        f"UPDATE {LEDGER_TABLE} SET {assignments}, updated_at = {p} "
        f"WHERE campaign_id = {p} AND batch_number = {p}",
        parameters=(*values, utc_now_text(), campaign_id, batch_number),
    )


def record_attempt(hook: DbApiHook, campaign_id: str, batch_number: int) -> bool:
    """Count an attempt before the request leaves: from here on the provider may hold the batch.

    False, and nothing counted, if the batch or its campaign was cancelled or paused meanwhile:
    the check and the count are one statement, so a cancel either sees the attempt (and
    cancels the batch at the provider) or the attempt sees the cancel (and sends nothing).
    """
    p = hook.placeholder
    cursor_count = changed_rows(
        hook,
        f"UPDATE {LEDGER_TABLE} SET attempts = attempts + 1, updated_at = {p} "
        f"WHERE campaign_id = {p} AND batch_number = {p} AND status <> {p} AND NOT EXISTS ("
        f"SELECT 1 FROM {CAMPAIGNS_TABLE} c WHERE c.campaign_id = {p} AND c.status IN ({p}, {p}))",
        (utc_now_text(), campaign_id, batch_number, CANCELLED, campaign_id, CAMPAIGN_PAUSED, CANCELLED),
    )
    return cursor_count == 1


def record_cancelled(hook: DbApiHook, campaign_id: str, reason: str, batch_number: int | None = None) -> int:
    """Cancel batches the provider never got: never attempted, not settled. One batch, or all of
    the campaign's; returns how many."""
    p = hook.placeholder
    one = f" AND batch_number = {p}" if batch_number is not None else ""
    return changed_rows(
        hook,
        f"UPDATE {LEDGER_TABLE} SET status = {p}, last_error = {p}, updated_at = {p} "
        f"WHERE campaign_id = {p} AND attempts = 0 AND status NOT IN "
        f"({', '.join([p] * len(SETTLED_STATUSES))}){one}",
        (CANCELLED, reason[:2000], utc_now_text(), campaign_id, *SETTLED_STATUSES)
        + ((batch_number,) if batch_number is not None else ()),
    )


def record_cancelled_at_provider(hook: DbApiHook, campaign_id: str, batch_number: int, reason: str) -> None:
    p = hook.placeholder
    _update(hook, campaign_id, batch_number, f"status = {p}, last_error = {p}", (CANCELLED, reason[:2000]))


def record_scheduled(hook: DbApiHook, campaign_id: str, batch_number: int, batch_id: str) -> None:
    p = hook.placeholder
    _update(
        hook,
        campaign_id,
        batch_number,
        f"status = {p}, batch_id = {p}, last_error = NULL",
        (SCHEDULED, batch_id),
    )


def record_failure(hook: DbApiHook, campaign_id: str, batch_number: int, error: str) -> None:
    """A failed attempt. The row reads ``failed`` until a later attempt succeeds."""
    p = hook.placeholder
    _update(hook, campaign_id, batch_number, f"status = {p}, last_error = {p}", (FAILED, error[:2000]))


def record_halted(hook: DbApiHook, campaign_id: str, batch_number: int, reason: str) -> None:
    p = hook.placeholder
    _update(hook, campaign_id, batch_number, f"status = {p}, last_error = {p}", (HALTED, reason[:2000]))


def record_delivered(hook: DbApiHook, campaign_id: str, batch_number: int) -> None:
    p = hook.placeholder
    _update(hook, campaign_id, batch_number, f"status = {p}", (DELIVERED,))


def reschedule(hook: DbApiHook, campaign_id: str, batch_number: int, send_at: datetime) -> None:
    p = hook.placeholder
    _update(hook, campaign_id, batch_number, f"send_at = {p}", (utc_text(send_at),))


def _update_planned(
    hook: DbApiHook, campaign_id: str, batch_numbers: Sequence[int], assignments: str, values: tuple
) -> None:
    """Update the campaign's ``planned`` rows among ``batch_numbers`` (one statement)."""
    if not batch_numbers:
        return
    p = hook.placeholder
    condition, numbers = in_values(hook.dialect_name, p, "batch_number", batch_numbers)
    hook.run(
        f"UPDATE {LEDGER_TABLE} SET {assignments}, updated_at = {p} "
        f"WHERE campaign_id = {p} AND status = {p} AND {condition}",
        parameters=(*values, utc_now_text(), campaign_id, PLANNED, *numbers),
    )


def fail_unfinished(hook: DbApiHook, campaign_id: str, batch_numbers: Sequence[int], reason: str) -> None:
    """Mark the run's batches whose task ended without recording any outcome (killed, upstream
    failed). Batches the run did not map (left waiting for quota) stay ``planned``."""
    p = hook.placeholder
    _update_planned(hook, campaign_id, batch_numbers, f"status = {p}, last_error = {p}", (FAILED, reason))


def record_waiting(hook: DbApiHook, campaign_id: str, batch_numbers: Sequence[int], reason: str) -> None:
    """Batches left ``planned`` by this run (they did not fit the quota), with the reason."""
    _update_planned(hook, campaign_id, batch_numbers, f"last_error = {hook.placeholder}", (reason[:2000],))


def _held_by_others_sql(placeholder: str, campaign_id: str) -> tuple[str, tuple]:
    """The condition, over ``LEDGER_TABLE l LEFT JOIN CAMPAIGNS_TABLE c``, for other campaigns'
    batches still to be sent, with its parameters: they will take room under the caps and
    quota when sent or resumed. Dry runs' batches and unfinished plans' (still being
    written, or dead part-way) hold nothing."""
    p = placeholder
    settled = ", ".join([p] * len(SETTLED_STATUSES))
    unfinished = ", ".join([p] * len(UNFINISHED_PLANS))
    condition = (
        f"l.status NOT IN ({settled}) AND l.campaign_id <> {p} AND COALESCE(c.dry_run, 0) = 0 "
        f"AND COALESCE(c.status, '') NOT IN ({unfinished})"
    )
    return condition, (*SETTLED_STATUSES, campaign_id, *UNFINISHED_PLANS)


def held_by_others(hook: DbApiHook, campaign_id: str) -> int:
    """Recipients in other campaigns' batches still to be sent (``_held_by_others_sql``): what the
    quota pre-flight counts as already spoken for."""
    held, parameters = _held_by_others_sql(hook.placeholder, campaign_id)
    found = fetch_dicts(
        hook,
        f"SELECT COALESCE(SUM(l.recipient_count), 0) AS n FROM {LEDGER_TABLE} l "
        f"LEFT JOIN {CAMPAIGNS_TABLE} c ON c.campaign_id = l.campaign_id WHERE {held}",
        parameters,
    )
    return int(found[0]["n"])


def occupied_slots(hook: DbApiHook, since: datetime, campaign_id: str) -> dict[datetime, int]:
    """Recipients already holding the account's caps, per send_at, as ``campaign_id`` plans from ``since``.

    The plan's hourly and daily caps are the account's, so these count against them:
    - every batch at the provider, from the start of ``since``'s UTC day (the daily cap
      counts the hours before ``since`` too);
    - other campaigns' batches still to be sent (``_held_by_others_sql``) from ``since``'s
      hour on: they go out in those slots, and a resume keeps a future slot.
    Planning runs one at a time (the planning pool), so two plans never book the same room.
    """

    p = hook.placeholder
    sent = ", ".join([p] * len(SENT_STATUSES))
    held, held_parameters = _held_by_others_sql(p, campaign_id)
    hour = since.replace(minute=0, second=0, microsecond=0)
    found = fetch_dicts(
        hook,
        f"SELECT l.send_at, SUM(l.recipient_count) AS recipients FROM {LEDGER_TABLE} l "
        f"LEFT JOIN {CAMPAIGNS_TABLE} c ON c.campaign_id = l.campaign_id "
        f"WHERE (l.status IN ({sent}) AND l.send_at >= {p}) OR ({held} AND l.send_at >= {p}) "
        "GROUP BY l.send_at",
        (*SENT_STATUSES, utc_text(hour.replace(hour=0)), *held_parameters, utc_text(hour)),
    )
    return {parse_utc(r["send_at"]): int(r["recipients"]) for r in found}


def summarize(ledger_rows: list[dict[str, Any]]) -> LedgerSummary:
    by_status: dict[str, int] = {}
    for r in ledger_rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return LedgerSummary(
        batches=len(ledger_rows),
        recipients=sum(r["recipient_count"] for r in ledger_rows),
        by_status=by_status,
        unsent=[r for r in ledger_rows if r["status"] in (FAILED, HALTED)],
    )
