"""What the Campaigns view shows, read from the warehouse only (the view is in ``plugins/``).

Each function is a few set-based queries; nothing here holds a campaign's
recipients in memory except the rejected rows' CSV, which is streamed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from include.campaign import definition, ledger, preview
from include.campaign.deliveries import DeliveryRates
from include.campaign.provider import EVENT_TYPES
from include.campaign.send import submit_time
from include.campaign.windows import DEFAULT_TIMEZONE
from include.warehouse import (
    CAMPAIGNS_TABLE,
    DELIVERIES_TABLE,
    HALTS_TABLE,
    LEDGER_TABLE,
    REJECTED_TABLE,
    WarehouseInputError,
    fetch_dicts,
    parse_utc,
    stream_rows,
    table_columns,
    utc_text,
)

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

# The delivery counts shown per campaign and per batch: one column per event type.
OUTCOMES = EVENT_TYPES
# Batches per ledger status, per campaign: waiting to go, not sent (failed, halted), at the
# provider, delivered, cancelled. Status names are the code's constants, not values.
_BATCH_STATES = {
    "waiting_batches": (ledger.PLANNED,),
    "unsent_batches": (ledger.FAILED, ledger.HALTED),
    "at_provider_batches": (ledger.SCHEDULED,),
    "delivered_batches": (ledger.DELIVERED,),
    "cancelled_batches": (ledger.CANCELLED,),
}
_STATE_COUNTS = ", ".join(
    "SUM(CASE WHEN status IN ({}) THEN 1 ELSE 0 END) AS {}".format(", ".join(f"'{s}'" for s in states), name)
    for name, states in _BATCH_STATES.items()
)
# The steering columns shown as recorded: the campaign's state, why, and its bad-start thresholds.
STEERING = (
    "status_reason",
    "submit_ahead_minutes",
    "max_complaint_rate",
    "max_hard_bounce_rate",
    "min_results_for_rates",
)


def campaigns(hook: DbApiHook, campaign_id: str | None = None) -> list[dict[str, Any]]:
    """Every campaign (or only ``campaign_id``), newest first, with its ledger and delivery totals,
    its batches per state (``_BATCH_STATES``), the next batch to go, whether it was halted, its
    steering columns as recorded (``STEERING``) and what they mean (``progress``).

    None before the first plan has created the tables: the view only reads (creating them here
    could race a plan doing the same, which PostgreSQL refuses).
    """
    try:
        table_columns(hook, CAMPAIGNS_TABLE)
    except WarehouseInputError:
        return []
    rows = fetch_dicts(
        hook,
        "SELECT c.campaign_id, c.dag_id, c.planned_by_run, c.created_at, c.status, c.dry_run, "
        "c.batches_by_status, "
        + "".join(f"c.{k}, " for k in STEERING)
        + "l.recipients, l.batches, l.first_send_at, l.last_send_at, "
        + "".join(f"l.{k}, " for k in _BATCH_STATES)
        + "w.next_send_at, nb.next_batch, nl.last_error AS next_note, "
        + ", ".join(f"COALESCE(d.{o}, 0) AS {o}" for o in OUTCOMES)
        + ", COALESCE(h.halts, 0) AS halts "
        f"FROM {CAMPAIGNS_TABLE} c "
        "LEFT JOIN (SELECT campaign_id, SUM(recipient_count) AS recipients, COUNT(*) AS batches, "
        f"MIN(send_at) AS first_send_at, MAX(send_at) AS last_send_at, {_STATE_COUNTS} FROM {LEDGER_TABLE} "
        "GROUP BY campaign_id) l ON l.campaign_id = c.campaign_id "
        # The next batch to go: the waiting one with the earliest slot (so the earliest submit time),
        # and why it waits if a run said so ("waiting for quota").
        f"LEFT JOIN (SELECT campaign_id, MIN(send_at) AS next_send_at FROM {LEDGER_TABLE} "
        f"WHERE status = '{ledger.PLANNED}' GROUP BY campaign_id) w ON w.campaign_id = c.campaign_id "
        f"LEFT JOIN (SELECT campaign_id, send_at, MIN(batch_number) AS next_batch FROM {LEDGER_TABLE} "
        f"WHERE status = '{ledger.PLANNED}' GROUP BY campaign_id, send_at) nb "
        "ON nb.campaign_id = w.campaign_id AND nb.send_at = w.next_send_at "
        f"LEFT JOIN {LEDGER_TABLE} nl ON nl.campaign_id = nb.campaign_id AND nl.batch_number = nb.next_batch "
        "LEFT JOIN (SELECT campaign_id, "
        + ", ".join(f"SUM({o}) AS {o}" for o in OUTCOMES)
        + f" FROM {DELIVERIES_TABLE} GROUP BY campaign_id) d ON d.campaign_id = c.campaign_id "
        f"LEFT JOIN (SELECT campaign_id, COUNT(*) AS halts FROM {HALTS_TABLE} GROUP BY campaign_id) h "
        "ON h.campaign_id = c.campaign_id "
        + (f"WHERE c.campaign_id = {hook.placeholder} " if campaign_id is not None else "")
        + "ORDER BY c.created_at DESC, c.campaign_id",
        () if campaign_id is None else (campaign_id,),
    )
    for row in rows:
        row["dry_run"] = bool(row["dry_run"])
        row["batches_by_status"] = batch_counts(row["batches_by_status"])
        for key in ("recipients", "batches", *_BATCH_STATES, *OUTCOMES, "halts"):
            row[key] = int(row[key] or 0)
        progress(row)
    return rows


def progress(row: dict[str, Any]) -> dict[str, Any]:
    """Add to a row of ``campaigns`` what its figures mean: its ``rates`` (``DeliveryRates``, from
    its delivery totals, as the reconcile judged them) and the submit time of its next batch
    (``next_submit_at``, UTC text; None when none waits or its slot cannot be read)."""
    row["rates"] = DeliveryRates.of(row)
    row["next_submit_at"] = submit_at(row["next_send_at"], row["submit_ahead_minutes"])
    return row


def submit_at(send_at: Any, submit_ahead_minutes: Any) -> str | None:
    """When a waiting batch goes to the provider (``send.submit_time``), as UTC text; a campaign
    planned before submit times were recorded sent its batches at once (0 minutes ahead). None
    for a slot or a lead that is not what the warehouse should hold."""
    ahead = 0 if submit_ahead_minutes is None else submit_ahead_minutes
    if not _is_count(ahead) or not isinstance(send_at, str):
        return None
    try:
        return utc_text(submit_time(parse_utc(send_at), ahead))
    except (ValueError, OverflowError):
        return None


def batch_counts(text: str | None) -> dict[str, int] | None:
    """``email_campaigns.batches_by_status`` (a JSON object of counts), or None if it is not one:
    the view shows that row's cell as malformed instead of failing the whole page."""
    try:
        counts = json.loads(text or "{}")
    except (TypeError, ValueError, RecursionError):
        return None
    if not isinstance(counts, dict) or not all(_is_count(n) for n in counts.values()):
        return None
    return counts


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def campaign(hook: DbApiHook, campaign_id: str) -> dict[str, Any] | None:
    """One campaign's page: its row, its ledger with delivery counts (and a waiting batch's
    ``submit_at``), halts, rejections, and the recipients per hour and per day (scheduled,
    delivered, bounced)."""
    found = campaigns(hook, campaign_id)
    if not found:
        return None
    summary = found[0]
    p = hook.placeholder
    batches = fetch_dicts(
        hook,
        "SELECT l.batch_number, l.batch_id, l.recipient_count, l.status, l.send_at, l.attempts, "
        "l.last_error, " + ", ".join(f"COALESCE(d.{o}, 0) AS {o}" for o in OUTCOMES) + " "
        f"FROM {LEDGER_TABLE} l LEFT JOIN {DELIVERIES_TABLE} d "
        "ON d.campaign_id = l.campaign_id AND d.batch_number = l.batch_number "
        f"WHERE l.campaign_id = {p} ORDER BY l.batch_number",
        (campaign_id,),
    )
    for b in batches:
        waiting = b["status"] == ledger.PLANNED
        b["submit_at"] = submit_at(b["send_at"], summary["submit_ahead_minutes"]) if waiting else None
    halts = fetch_dicts(
        hook,
        f"SELECT run_id, batch_number, reason, halted_at FROM {HALTS_TABLE} WHERE campaign_id = {p} "
        "ORDER BY halted_at",
        (campaign_id,),
    )
    return {
        **summary,
        "ledger": batches,
        "halts": halts,
        "rejected": preview.rejected_by_reason(hook, campaign_id),
        "per_hour": _series(batches, 13),
        "per_day": _series(batches, 10),
        "per_local_hour": preview.by_local_hour(
            preview.local_hours(hook, campaign_id, _default_zone(hook, campaign_id))
        ),
    }


def _default_zone(hook: DbApiHook, campaign_id: str) -> str:
    """The zone of recipients without their own, as the campaign was defined."""
    recorded = definition.read(hook, campaign_id)
    return definition.window(recorded["definition"])[1] if recorded else DEFAULT_TIMEZONE


def _series(batches: list[dict[str, Any]], width: int) -> dict[str, dict[str, int]]:
    """Per send_at prefix (10: day, 13: hour): recipients scheduled at the provider, planned
    (not sent yet), delivered and bounced."""
    series: dict[str, dict[str, int]] = {}
    for b in batches:
        slot = series.setdefault(
            str(b["send_at"])[:width], {"scheduled": 0, "planned": 0, "delivered": 0, "bounced": 0}
        )
        sent = b["status"] in ledger.SENT_STATUSES
        # A count that is not a number (SQLite keeps any text) is left out here; the ledger table
        # shows it as malformed.
        slot["scheduled" if sent else "planned"] += _count(b["recipient_count"])
        slot["delivered"] += _count(b["delivered"])
        slot["bounced"] += _count(b["bounced"])
    return dict(sorted(series.items()))


def _count(value: Any) -> int:
    return value if _is_count(value) else 0


def rejected_rows(hook: DbApiHook, campaign_id: str) -> Iterator[tuple[list[str], list[tuple]]]:
    """The campaign's rejected rows in source order, in chunks (for a CSV download)."""
    p = hook.placeholder
    sql = (
        f"SELECT source_row, recipient_id, email, reason FROM {REJECTED_TABLE} "
        f"WHERE campaign_id = {p} ORDER BY source_row"
    )
    yield from stream_rows(hook, sql, 5000, (campaign_id,))
