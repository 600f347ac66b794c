"""Advance the ledger from stored delivery events: per-batch counts, ``delivered`` when all are final.

Why a reconcile task rather than the webhook receiver: events arrive more than
once and out of order, so counting them one by one as they come would need
read-modify-write under concurrency in the request. Recomputing from the whole
event set (the latest event per recipient) is idempotent, order-free and can
be rerun at any time; it also keeps the receiver's answer fast.

The same pass judges a bad start: once a campaign has enough final results, a complaint or
hard-bounce rate above the thresholds its sending run recorded pauses it (``steering.pause``),
so the batches not yet at the provider wait for an operator to look.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.campaign import definition, ledger, provider, steering, suppressions
from include.campaign.provider import EVENT_TYPES, FINAL_TYPES
from include.warehouse import (
    CAMPAIGNS_TABLE,
    DELIVERIES_TABLE,
    EVENTS_TABLE,
    LEDGER_TABLE,
    fetch_dicts,
    parse_utc,
    utc_now_text,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

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


@dataclass(frozen=True)
class DeliveryRates:
    """A campaign's results so far: recipients whose latest event is final (delivered, a hard
    bounce, a complaint, an unsubscribe; a soft bounce is not), and the shares of them that
    complained and that bounced hard (0 before the first result)."""

    results: int
    complaints: int
    hard_bounces: int
    unsubscribes: int
    complaint_rate: float
    hard_bounce_rate: float

    @classmethod
    def of(cls, outcomes: Mapping[str, Any]) -> DeliveryRates:
        """From recipients per outcome, as the latest event per recipient counts them (``bounced``
        is a hard bounce there: a soft one counts as ``deferred``). A count that is not a number
        (SQLite keeps any text) counts as none."""
        final = {t: _count(outcomes.get(t)) for t in FINAL_TYPES}
        results = sum(final.values())
        return cls(
            results=results,
            complaints=final["complained"],
            hard_bounces=final["bounced"],
            unsubscribes=final["unsubscribed"],
            complaint_rate=final["complained"] / results if results else 0.0,
            hard_bounce_rate=final["bounced"] / results if results else 0.0,
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def campaign_rates(hook: DbApiHook, campaign_id: str) -> DeliveryRates:
    """The campaign's rates over its final events, as the reconcile last counted them.

    Read from ``email_batch_deliveries``, which holds ``_LATEST_PER_RECIPIENT``'s counts per batch
    (or the provider's own, when the reconcile polls: then there are no stored events to count).
    """
    found = fetch_dicts(
        hook,
        "SELECT " + ", ".join(f"COALESCE(SUM({t}), 0) AS {t}" for t in FINAL_TYPES) + " "
        f"FROM {DELIVERIES_TABLE} WHERE campaign_id = {hook.placeholder}",
        (campaign_id,),
    )
    return DeliveryRates.of({t: int(found[0][t]) for t in FINAL_TYPES})


def _percent(rate: float, threshold: float) -> tuple[str, str]:
    """Both as percentages, with the fewest decimals (2 to 4) that tell them apart."""
    for digits in (2, 3, 4):
        shown = f"{rate:.{digits}%}", f"{threshold:.{digits}%}"
        if shown[0] != shown[1]:
            break
    return shown


def over_thresholds(rates: DeliveryRates, thresholds: Mapping[str, Any]) -> list[str]:
    """What of ``rates`` is above the recorded thresholds (an email_campaigns row's
    ``max_complaint_rate``, ``max_hard_bounce_rate``, ``min_results_for_rates``), e.g.
    ``["complaints 0.41% > 0.30%"]``; nothing before ``min_results_for_rates`` results, and
    nothing for a threshold that is not recorded (a campaign planned before there were any)."""
    at_least = thresholds.get("min_results_for_rates")
    if at_least is None or rates.results < at_least:
        return []
    judged = (
        ("complaints", rates.complaint_rate, thresholds.get("max_complaint_rate")),
        ("hard bounces", rates.hard_bounce_rate, thresholds.get("max_hard_bounce_rate")),
    )
    return [
        "{} {} > {}".format(name, *_percent(rate, limit))
        for name, rate, limit in judged
        if limit is not None and rate > limit
    ]


def _still_to_go(hook: DbApiHook, campaign_id: str, now: datetime) -> tuple[int, int]:
    """The campaign's batches a stop still reaches: those not yet at the provider (a pause holds
    them), and those it holds with their slot still ahead (only a cancel reaches them)."""
    waiting = at_provider = 0
    for entry in ledger.rows(hook, campaign_id):
        if entry["status"] not in ledger.SETTLED_STATUSES:
            waiting += 1
        elif entry["status"] == ledger.SCHEDULED and parse_utc(entry["send_at"]) > now:
            at_provider += 1
    return waiting, at_provider


def pause_on_bad_start(hook: DbApiHook, campaign_id: str, now: datetime | None = None) -> bool:
    """Pause the campaign if its rates so far are above the thresholds its sending run recorded,
    and alert once: only the reconcile whose pause changed the campaign's state alerts. True if
    it paused it.

    A campaign already paused or cancelled is left as it is; so is one with nothing left that a
    stop would reach (every batch delivered or past its slot). A resumed campaign is judged again
    by the next reconcile, against the thresholds its resume recorded.
    """
    now = now or datetime.now(UTC)
    p = hook.placeholder
    found = fetch_dicts(
        hook,
        "SELECT dag_id, sending_dag_id, status, max_complaint_rate, max_hard_bounce_rate, "
        f"min_results_for_rates FROM {CAMPAIGNS_TABLE} WHERE campaign_id = {p}",
        (campaign_id,),
    )
    if not found or found[0]["status"] in (steering.PAUSED, steering.CANCELLED):
        return False
    recorded = found[0]
    rates = campaign_rates(hook, campaign_id)
    over = over_thresholds(rates, recorded)
    if not over:
        return False
    waiting, at_provider = _still_to_go(hook, campaign_id, now)
    if not waiting and not at_provider:
        log.info("Campaign %s is over its thresholds (%s) with nothing left to stop", campaign_id, over)
        return False
    reason = f"paused by the reconcile at {now.astimezone(UTC):%H:%M}Z: {', '.join(over)}"
    if not steering.pause(hook, campaign_id, reason):
        return False  # paused, cancelled or finished meanwhile: whoever did it said so
    log.warning("Campaign %s %s", campaign_id, reason)
    # Imported here: the Campaigns view imports this module (DeliveryRates) and needs no notifier.
    from include.campaign.alerts import CampaignHaltNotifier

    CampaignHaltNotifier().deliver(
        _paused_message(campaign_id, reason, rates, recorded, waiting, at_provider)
    )
    return True


def _paused_message(
    campaign_id: str,
    reason: str,
    rates: DeliveryRates,
    recorded: Mapping[str, Any],
    waiting: int,
    at_provider: int,
) -> str:
    dag_id = recorded["sending_dag_id"] or recorded["dag_id"]
    message = (
        f"MigoSMTP campaign {campaign_id!r} {reason}. Over its {rates.results:,} final results so far: "
        f"{rates.complaints:,} complaints ({rates.complaint_rate:.2%}), {rates.hard_bounces:,} hard "
        f"bounces ({rates.hard_bounce_rate:.2%}), {rates.unsubscribes:,} unsubscribes. "
        f"Its {waiting:,} batches not yet at the provider wait"
    )
    if at_provider:
        message += (
            f"; {at_provider:,} already at the provider go out at their slot unless the campaign is "
            "cancelled (mode=cancel)"
        )
    return message + (
        f". Look at the campaign's page and its events first. To go on, trigger DAG {dag_id} with "
        f"mode=resume and campaign_id {campaign_id!r}; a resume may set new max_complaint_rate and "
        "max_hard_bounce_rate, and with the same ones the next reconcile pauses it again while its "
        "rates stay above them. To stop it, trigger mode=cancel instead."
    )


# Campaigns whose counts may still change and whose bad start may still be stopped: a complaint
# comes after its delivery, so a campaign whose batches at the provider are all delivered is
# judged again while it has batches waiting to go (and is not paused or cancelled).
_WAITING_AFTER_DELIVERIES = f"""
    SELECT l.campaign_id FROM {LEDGER_TABLE} l
    JOIN {CAMPAIGNS_TABLE} c ON c.campaign_id = l.campaign_id
    WHERE c.status NOT IN ({{p}}, {{p}})
    GROUP BY l.campaign_id
    HAVING SUM(CASE WHEN l.status = {{p}} THEN 1 ELSE 0 END) > 0
       AND SUM(CASE WHEN l.status = {{p}} THEN 1 ELSE 0 END) > 0
"""


def open_campaigns(hook: DbApiHook) -> list[str]:
    """The campaigns the reconcile visits: every one with a batch out for delivery
    (``scheduled``), paused or not, and every running one with a delivered batch and one still
    waiting to go (``planned``)."""
    waiting = fetch_dicts(
        hook,
        _WAITING_AFTER_DELIVERIES.format(p=hook.placeholder),
        (steering.PAUSED, steering.CANCELLED, ledger.DELIVERED, ledger.PLANNED),
    )
    return sorted({*ledger.campaigns_with(hook, ledger.SCHEDULED), *(r["campaign_id"] for r in waiting)})


def reconcile_open_campaigns(source: str = "webhooks") -> dict[str, Any]:
    """Suppress the addresses the stored events say to, then reconcile every open campaign
    (``open_campaigns``) and pause those off to a bad start (``pause_on_bad_start``).

    Returns ``{"campaigns": {campaign_id: reconcile's counts}, "paused": [campaign_id, ...]}``
    (campaign ids are the operator's text, so they are not keys beside ``paused``).
    """
    from include.warehouse import ensure_schema, get_warehouse_hook

    hook = get_warehouse_hook()
    ensure_schema(hook)
    added = suppressions.update_from_events(hook)
    if added:
        log.info("Suppressed %d more addresses (hard bounces, complaints, unsubscribes)", added)
    reconciled, paused = {}, []
    for campaign_id in open_campaigns(hook):
        reconciled[campaign_id] = reconcile(hook, campaign_id, source)
        if pause_on_bad_start(hook, campaign_id):
            paused.append(campaign_id)
    return {"campaigns": reconciled, "paused": paused}
