"""Advance the ledger from stored delivery events: per-batch counts, ``delivered`` when all are final.

Why a reconcile task rather than the webhook receiver: events arrive more than
once and out of order, so counting them one by one as they come would need
read-modify-write under concurrency in the request. Recomputing from the whole
event set (the latest event per recipient) is idempotent, order-free and can
be rerun at any time; it also keeps the receiver's answer fast.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from include.campaign import definition, ledger, provider, suppressions
from include.campaign.provider import EVENT_TYPES, FINAL_TYPES
from include.warehouse import DELIVERIES_TABLE, EVENTS_TABLE, LEDGER_TABLE, fetch_dicts, utc_now_text

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

log = logging.getLogger(__name__)

# Counted per recipient from its latest event. A soft bounce is temporary: it counts as deferred.
SOURCES = ("webhooks", "polling")  # "deferred" may still turn into any of these
_KNOWN_TYPES = ", ".join(f"'{t}'" for t in EVENT_TYPES)

# The latest event per recipient wins; at the same second, the more final outcome. Events are
# found through the ledger's batch ids, so those that came before their batch was recorded
# (a task that died between the request and the ledger) count once it is. Types this version
# does not know are stored but not counted; a bounce that does not say "soft" is final.
_LATEST_PER_RECIPIENT = f"""
    SELECT batch_id, outcome, COUNT(*) AS recipients FROM (
        SELECT e.batch_id,
            CASE WHEN e.type = 'bounced' AND e.bounce_type = 'soft' THEN 'deferred' ELSE e.type END
                AS outcome,
            ROW_NUMBER() OVER (
                PARTITION BY e.batch_id, e.recipient
                ORDER BY e.occurred_at DESC, CASE e.type
                    WHEN 'complained' THEN 4 WHEN 'unsubscribed' THEN 3 WHEN 'delivered' THEN 1
                    WHEN 'bounced' THEN CASE WHEN e.bounce_type = 'soft' THEN 0 ELSE 2 END
                    ELSE 0 END DESC
            ) AS newest
        FROM {EVENTS_TABLE} e
        WHERE e.batch_id IN (
            SELECT l.batch_id FROM {LEDGER_TABLE} l WHERE l.campaign_id = {{p}} AND l.batch_id IS NOT NULL)
          AND e.type IN ({_KNOWN_TYPES})
    ) latest
    WHERE newest = 1
    GROUP BY batch_id, outcome
"""


def _counts_from_events(hook: DbApiHook, campaign_id: str) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row in fetch_dicts(hook, _LATEST_PER_RECIPIENT.format(p=hook.placeholder), (campaign_id,)):
        counts.setdefault(row["batch_id"], {})[row["outcome"]] = int(row["recipients"])
    return counts


def _counts_from_polling(hook: DbApiHook, campaign_id: str) -> dict[str, dict[str, int]]:
    """The provider's own per-batch counts, for when its webhooks cannot reach the API server."""
    gateway = provider.Provider()
    return {
        r["batch_id"]: gateway.batch_counts(r["batch_id"])
        for r in ledger.rows(hook, campaign_id)
        if r["status"] == ledger.SCHEDULED
    }


def reconcile(hook: DbApiHook, campaign_id: str, source: str = "webhooks") -> dict[str, int]:
    """Recompute the campaign's delivery counts from ``webhooks`` (stored events) or by ``polling``
    the provider; returns how many batches are now delivered or partly so."""
    if source not in SOURCES:
        raise ValueError(f"delivery source {source!r} is not one of {', '.join(SOURCES)}")
    counts = (
        _counts_from_events(hook, campaign_id)
        if source == "webhooks"
        else _counts_from_polling(hook, campaign_id)
    )
    delivered = partial = 0
    now = utc_now_text()
    rows: list[tuple[Any, ...]] = []
    for entry in ledger.rows(hook, campaign_id):
        per_type = counts.get(entry["batch_id"])
        if not per_type:
            continue
        rows.append(
            (
                campaign_id,
                entry["batch_number"],
                entry["batch_id"],
                *(per_type.get(t, 0) for t in EVENT_TYPES),
                now,
            )
        )
        if sum(per_type.get(t, 0) for t in FINAL_TYPES) >= entry["recipient_count"]:
            delivered += 1
            if entry["status"] != ledger.DELIVERED:
                ledger.record_delivered(hook, campaign_id, entry["batch_number"])
        else:
            partial += 1
    hook.insert_rows(
        DELIVERIES_TABLE,
        rows,
        target_fields=[
            "campaign_id",
            "batch_number",
            "batch_id",
            *EVENT_TYPES,
            "updated_at",
        ],
        replace=True,
        replace_index=["campaign_id", "batch_number"],
    )
    definition.summarize(hook, campaign_id, ledger.summarize(ledger.rows(hook, campaign_id)), dry_run=False)
    return {"delivered_batches": delivered, "partly_delivered_batches": partial}


def reconcile_open_campaigns(source: str = "webhooks") -> dict[str, dict[str, int]]:
    """Suppress the addresses the stored events say to, then reconcile every campaign that still
    has batches out for delivery (``scheduled``)."""
    from include.warehouse import ensure_schema, get_warehouse_hook

    hook = get_warehouse_hook()
    ensure_schema(hook)
    added = suppressions.update_from_events(hook)
    if added:
        log.info("Suppressed %d more addresses (hard bounces, complaints, unsubscribes)", added)
    return {c: reconcile(hook, c, source) for c in ledger.campaigns_with(hook, ledger.SCHEDULED)}
