"""The send task: one planned batch to the provider, exactly once, and its outcome in the ledger.

Each batch is one mapped task. It sends what was first planned (the recorded definition and the
staged recipients), never what the run's Params say now, so a retry or a rerun sends the same
request under the same idempotency key, and asks the provider first if an earlier attempt may
have reached it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.campaign import definition, halts, ledger, provider, staging, steering, suppressions, warmup
from include.campaign.planner import hour_floor, place_whole_batches
from include.campaign.settings import CampaignSettings, for_task
from include.warehouse import (
    REJECTED_TABLE,
    account_lock,
    get_warehouse_hook,
    one_connection,
    parse_utc,
    utc_text,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wait:
    """Not yet: the batch waits (deferred, holding no worker or pool slot) until ``until``."""

    campaign_id: str
    until: datetime
    why: str


def submit_time(send_at: datetime, submit_ahead_minutes: int) -> datetime:
    """When a batch goes to the provider: ``submit_ahead_minutes`` before its slot."""
    try:
        return send_at - timedelta(minutes=submit_ahead_minutes)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def send_batch(
    batch: dict[str, Any],
    params: dict[str, Any],
    run_id: str,
    *,
    dag_id: str | None = None,
    logical_date: datetime | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | Wait:
    """Submit one planned batch, exactly once, with the campaign's recorded definition, and record
    the outcome in the ledger; or, before its submit time or while its campaign is paused, say
    how long to wait (``Wait``). Asked again each time the batch wakes, against the state of then.

    Raises the provider's errors so the retry policy can apply the article's error table; one that
    halts the run (``provider.halts_run``: a 402 or 401) also records the halt, so batches not yet
    sent are not attempted.
    """
    settings = for_task(params, dag_id, logical_date)
    number = batch["batch_number"]
    if settings.dry_run:
        raise AirflowSkipException(f"dry run: batch {number} planned, not sent")
    with one_connection(get_warehouse_hook()) as hook:
        wait = _not_yet(hook, settings, number, now or datetime.now(UTC))
        if wait is not None:
            return wait
        try:
            result, hold = _send_batch(hook, settings, number, run_id)
        except _Paused:
            return Wait(settings.campaign_id, now or datetime.now(UTC), "paused")
    if hold:
        # Keep this pool slot until the provider's rate window resets, so the next batch in it
        # cannot be the request that crosses the limit (see RateWindow.hold_seconds).
        log.info("Rate window nearly spent: holding this pool slot for %.0f s before the next batch", hold)
        time.sleep(hold)
    return result


def _not_yet(hook, settings: CampaignSettings, number: int, now: datetime) -> Wait | None:
    """Whether the batch must wait, against the campaign's state now; None when it goes. A
    cancelled campaign's batch ends here, ``cancelled``; one whose slot passed while it waited
    (a pause, a triggerer or scheduler that was down) moves, whole, to the first slot with room."""
    campaign_id = settings.campaign_id
    entry = ledger.row(hook, campaign_id, number)
    if entry is None or entry["status"] in ledger.SETTLED_STATUSES:
        return None  # _send_batch says why
    state = steering.status(hook, campaign_id)
    if state == steering.CANCELLED:
        ledger.record_cancelled(hook, campaign_id, "campaign cancelled", number)
        raise AirflowSkipException(f"batch {number} not sent: campaign {campaign_id!r} was cancelled")
    if state == steering.PAUSED:
        log.info("Batch %d waits: campaign %s is paused", number, campaign_id)
        return Wait(campaign_id, now, "paused")
    send_at = parse_utc(entry["send_at"])
    due = submit_time(send_at, settings.submit_ahead_minutes)
    if now < due:
        log.info(
            "Batch %d waits until %s, %d min before its slot %s",
            number,
            utc_text(due),
            settings.submit_ahead_minutes,
            entry["send_at"],
        )
        return Wait(campaign_id, due, "submit time")
    if hour_floor(send_at) >= hour_floor(now) or entry["attempts"]:
        return None  # in its slot; an attempted batch keeps its send_at (its key covers the body)
    moved = _replace_late(hook, settings, entry, now)
    log.warning(
        "Batch %d woke after its slot %s had passed: moved to %s", number, entry["send_at"], utc_text(moved)
    )
    due = submit_time(moved, settings.submit_ahead_minutes)
    return Wait(campaign_id, due, "re-placed") if now < due else None


def _replace_late(hook, settings: CampaignSettings, entry: dict[str, Any], now: datetime) -> datetime:
    """Move a late batch, whole, to the first slot from now with room under the account's caps,
    counting every campaign's batches and this campaign's others; one mover at a time, so two late
    batches never take the same room."""
    campaign_id, number = settings.campaign_id, entry["batch_number"]
    with account_lock(hook):
        # At the provider, every campaign's (occupied_slots); still to go, this campaign's others.
        occupied = Counter(ledger.occupied_slots(hook, now, campaign_id))
        for other in ledger.rows(hook, campaign_id):
            slot = parse_utc(other["send_at"])
            if other["batch_number"] != number and other["status"] not in ledger.SETTLED_STATUSES:
                if slot >= hour_floor(now):
                    occupied[slot] += other["recipient_count"]
        recorded = definition.read(hook, campaign_id)
        window, _ = definition.window(recorded["definition"] if recorded else {})
        try:
            (slot,) = place_whole_batches(
                [entry["recipient_count"]],
                settings.caps,
                now,
                occupied,
                zones=[entry.get("timezone")],
                window=window,
                ramp=warmup.for_task(),
            )
        except ValueError as err:
            raise AirflowFailException(f"cannot re-place batch {number}: {err}") from err
        ledger.reschedule(hook, campaign_id, number, slot)
    return slot


def _without_new_suppressions(hook, entry: dict[str, Any]) -> dict[str, Any]:
    """The ledger row once the recipients suppressed since planning are out of this never-attempted
    batch (see ``suppressions.drop_from_unsent_batch``)."""
    campaign_id, number = entry["campaign_id"], entry["batch_number"]
    dropped = suppressions.drop_from_unsent_batch(hook, campaign_id, number)
    if not dropped:
        return entry
    log.info(
        "Batch %d: %d recipients suppressed since planning are not sent (in %s as %s)",
        number,
        dropped,
        REJECTED_TABLE,
        suppressions.SUPPRESSED_AFTER_PLAN,
    )
    return ledger.row(hook, campaign_id, number)


def _result(number: int, batch_id: str | None, resent: bool) -> dict[str, Any]:
    return {"batch_number": number, "batch_id": batch_id, "resent": resent}


def _send_batch(hook, settings: CampaignSettings, number: int, run_id: str) -> tuple[dict[str, Any], float]:
    """``send_batch`` on one warehouse connection; returns its result and how long to hold the slot."""
    campaign_id = settings.campaign_id
    entry = ledger.row(hook, campaign_id, number)
    recorded = definition.read(hook, campaign_id)
    if entry is None or recorded is None:
        raise AirflowFailException(f"batch {number} of campaign {campaign_id!r} was not planned")
    if entry["status"] in ledger.SENT_STATUSES:
        log.info(
            "Batch %d is already %s as %s; not sending again", number, entry["status"], entry["batch_id"]
        )
        return _result(number, entry["batch_id"], False), 0.0
    stop = halts.current(hook, campaign_id, run_id)
    if stop is not None:
        reason = f"not sent: the run was halted by batch {stop['batch_number']}: {stop['reason']}"
        ledger.record_halted(hook, campaign_id, number, reason)
        raise AirflowSkipException(reason)
    try:
        outcome = _submit_once(hook, settings, entry, recorded["definition"])
    except Exception as err:
        if not provider.is_provider_error(err):
            raise  # ours or the warehouse's: the retry policy's default applies, the ledger is unchanged
        ledger.record_failure(hook, campaign_id, number, str(err))
        if provider.halts_run(err):
            halts.halt(hook, campaign_id, run_id, number, str(err))
        raise
    if outcome is None:
        log.info("Batch %d not sent: all its recipients were suppressed since planning", number)
        return _result(number, None, False), 0.0
    ledger.record_scheduled(hook, campaign_id, number, outcome.batch_id)
    if steering.status(hook, campaign_id) == steering.CANCELLED:
        # Cancelled while the request was in flight: the cancel could not see this batch yet.
        entry = ledger.row(hook, campaign_id, number)
        if steering.cancel_sent_batch(hook, campaign_id, entry, outcome.batch_id, provider.Provider()):
            log.info("Batch %d reached the provider as its campaign was cancelled: cancelled there", number)
    return _result(number, outcome.batch_id, True), outcome.hold_seconds


def _stopped_before_request(hook, campaign_id: str, number: int) -> BaseException:
    """The attempt was refused: the campaign was paused or cancelled since this batch woke."""
    if steering.status(hook, campaign_id) == steering.CANCELLED:
        ledger.record_cancelled(hook, campaign_id, "campaign cancelled", number)
        return AirflowSkipException(f"batch {number} not sent: campaign {campaign_id!r} was cancelled")
    return _Paused(number)


class _Paused(Exception):
    """Paused between the batch's wake and its request: it waits again."""

    def __init__(self, number: int) -> None:
        super().__init__(f"batch {number}: campaign paused just before its request")


def _submit_once(
    hook, settings: CampaignSettings, entry: dict[str, Any], content: dict[str, Any]
) -> provider.Accepted | None:
    """The batch at the provider: found by its key if an earlier attempt reached it, else sent.
    None if no one is left to send it to."""
    campaign_id, number, key = settings.campaign_id, entry["batch_number"], entry["idempotency_key"]
    gateway = provider.Provider()
    # An earlier attempt may have reached the provider without us hearing back: ask first.
    found = gateway.find_submitted(key) if entry["attempts"] else None
    if found is not None:
        log.info("Batch %d was already accepted as %s (found by idempotency key)", number, found)
        return provider.Accepted(found, replayed=True, hold_seconds=0.0)
    # A batch never attempted drops whoever was suppressed since planning; one attempted is sent
    # as it was (its idempotency key covers the body it was first sent with).
    check = not entry["attempts"] and not settings.ignore_suppressions
    recipients, suppressed = staging.batch_recipients(hook, campaign_id, number, flag_suppressed=check)
    if suppressed:
        entry = _without_new_suppressions(hook, entry)
        if entry["status"] == ledger.SUPPRESSED:
            return None
        recipients, _ = staging.batch_recipients(hook, campaign_id, number)
    if len(recipients) != entry["recipient_count"]:
        raise AirflowFailException(
            f"batch {number} has {len(recipients)} staged recipients but the ledger planned "
            f"{entry['recipient_count']}; refusing to send a batch that changed"
        )
    # The recorded definition, not this run's Params: a resend must be what was first planned.
    body = provider.payload(content, recipients, parse_utc(entry["send_at"]), campaign_id, number)
    if not ledger.record_attempt(hook, campaign_id, number):
        raise _stopped_before_request(hook, campaign_id, number)
    accepted = gateway.submit(body, key)
    log.info(
        "Batch %d: %d recipients scheduled for %s as %s%s",
        number,
        len(recipients),
        entry["send_at"],
        accepted.batch_id,
        " (idempotent replay)" if accepted.replayed else "",
    )
    return accepted
