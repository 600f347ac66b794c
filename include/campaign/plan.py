"""The plan task: what a run sends, decided before anything is sent.

A new campaign is read from its recipients table a chunk at a time, screened, packed into
batches against the account's caps and staged (``staging``); a campaign that has sent before
is resumed from its ledger instead, its passed slots re-placed. Either way the quota
pre-flight (``quota``) decides which of the batches this run maps.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.campaign import alerts, definition, halts, ledger, preview, provider, staging, steering, warmup
from include.campaign.audience import REQUIRED_COLUMNS
from include.campaign.frequency import FrequencyCap
from include.campaign.planner import BatchPacker, hour_floor, place_whole_batches
from include.campaign.quota import within_quota
from include.campaign.screening import screen_frame
from include.campaign.settings import PAUSE, RESUME, RETRY_FAILED, CampaignSettings, for_task
from include.campaign.staging import ChunkedPlan, TooManyBatches
from include.warehouse import (
    REJECTED_TABLE,
    WarehouseInputError,
    count_rows,
    ensure_schema,
    get_warehouse_hook,
    parse_utc,
    quote_table,
    stream_rows,
    table_columns,
    utc_now_text,
    utc_text,
)

log = logging.getLogger(__name__)

# Rows read, screened and written per transaction. Measured (benchmarks/plan_memory.py --sizes 10000
# 1000000 --no-naive --chunk-rows N --repeat 2, SQLite, 2026-12-03): 1M rows planned in 11.6 and 11.6 s
# at 10,000, 11.5 and 15.0 s at 50,000, 12.2 and 11.2 s at 100,000 (the same within the machine's
# drift), at a peak RSS of 188.6, 224.5 and 265.1 MiB (1.02, 1.22 and 1.45 times the 10,000-row
# list's). Larger chunks buy no time and cost memory that grows with the chunk; 10,000 keeps it flat.
CHUNK_ROWS = 10_000


def _was_attempted(entries: list[dict[str, Any]]) -> bool:
    """Whether any batch may have reached the provider; until then a plan can be replaced freely."""
    return any(r["status"] != ledger.PLANNED or r["attempts"] for r in entries)


def max_map_length() -> int:
    """Airflow's ceiling on one run's mapped tasks, so one batch per task (``[core] max_map_length``)."""
    from airflow.sdk.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)


def plan_campaign(
    params: dict[str, Any],
    *,
    dag_id: str | None = None,
    run_id: str = "",
    logical_date: datetime | None = None,
    chunk_rows: int = CHUNK_ROWS,
    screen: staging.Screen = screen_frame,
    max_batches: int | None = None,
    run_state: Callable[[str, str], str | None] | None = None,
) -> list[dict[str, Any]]:
    """Plan the run's batches; returns only small batch descriptors (recipients stay in the warehouse).

    Every run converges on "each valid recipient scheduled exactly once". ``mode=send``
    plans a new campaign from the recipients table; for a campaign already attempted
    with the same definition it resumes instead, exactly as ``mode=retry_failed`` does
    (the batches not yet at the provider, as first planned). A different definition
    under the same campaign_id is refused before anything is read or sent, and so is a run
    while another live run sends the campaign (``run_state`` says which runs are live) or one
    for a cancelled campaign. ``mode`` pause, resume and cancel steer the campaign instead.
    """
    settings = for_task(params, dag_id, logical_date)
    campaign_id = settings.campaign_id
    max_batches = max_map_length() if max_batches is None else max_batches
    hook = get_warehouse_hook()
    ensure_schema(hook)
    staging.clear_abandoned_plans(hook)
    if run_id and halts.lift(hook, campaign_id, run_id):
        log.info("Run %s was halted and is planned again (cleared): its halt is lifted", run_id)
    recorded = definition.read(hook, campaign_id)
    steering.refuse_if_cancelled(campaign_id, recorded)
    sender = steering.live_sender(recorded, run_id, run_state)
    if settings.steers:
        resumed = _steer(hook, settings, recorded, sender, run_id)
        if not resumed:
            return []
    elif sender is not None:
        raise AirflowFailException(
            f"campaign {campaign_id!r} is still being sent by run {sender}; this run would send it "
            "twice. Wait for that run to end, or pause or cancel the campaign (mode=pause, mode=cancel); "
            "a run whose processes died stays running until the scheduler fails it: mark it failed."
        )
    entries = ledger.rows(hook, campaign_id)
    if recorded and recorded["status"] in ledger.UNFINISHED_PLANS and not _was_attempted(entries):
        entries = []  # a plan that never finished: none of it is the campaign's
    if settings.mode not in (RETRY_FAILED, RESUME) and not _was_attempted(entries):
        batches = _plan_new_within_quota(
            hook, settings, dag_id or "", run_id, chunk_rows, max_batches, screen
        )
    else:
        current = definition.of(settings)
        recorded = _resumable_definition(settings, entries, recorded, current)
        if recorded is None:  # planned before email_campaigns existed: its definition is this run's
            definition.record(
                hook,
                campaign_id,
                current,
                dag_id=dag_id or "",
                run_id=run_id,
                dry_run=False,
                transactional=settings.ignore_suppressions,
            )
        resumed = _plan_resume(
            hook, settings, entries, max_batches, (recorded or {}).get("definition", current)
        )
        batches = within_quota(hook, settings, resumed, new_plan=False)
    if not settings.dry_run:
        steering.record_sender(hook, settings, dag_id or "", run_id)
    return batches


def _steer(
    hook, settings: CampaignSettings, recorded: dict[str, Any] | None, sender: str | None, run_id: str
) -> bool:
    """Pause, resume or cancel the campaign, log what changed and alert once. True when this run
    must go on to send the campaign itself: a resume with no live run left to do it."""
    campaign_id = settings.campaign_id
    if recorded is None or recorded["status"] in (*ledger.UNFINISHED_PLANS, definition.DRY_RUN):
        found = recorded["status"] if recorded else "never planned"
        raise AirflowFailException(
            f"campaign {campaign_id!r} has no plan that sends ({found}); there is nothing to {settings.mode}"
        )
    by = f"by run {run_id} at {utc_now_text()[:16]}Z"
    if settings.mode == PAUSE:
        if not steering.pause(hook, campaign_id, f"paused {by}"):
            log.info("Campaign %s is already %s: nothing to pause", campaign_id, recorded["status"])
            return False
        waiting = sum(1 for r in ledger.rows(hook, campaign_id) if r["status"] not in ledger.SETTLED_STATUSES)
        message = (
            f"MigoSMTP campaign {campaign_id!r} paused {by}: its {waiting} batches not yet at the provider "
            "wait until it is resumed (trigger mode=resume for this campaign_id) or cancelled (mode=cancel)."
        )
    elif settings.mode == RESUME:
        if not steering.resume(hook, campaign_id, f"resumed {by}"):
            raise AirflowFailException(
                f"campaign {campaign_id!r} is {recorded['status']}, not paused: there is nothing to resume"
            )
        steering.record_thresholds(hook, settings)  # a resume may change what a bad start is
        goes_on = f"run {sender} goes on with it" if sender else f"run {run_id} sends its unsent batches"
        message = f"MigoSMTP campaign {campaign_id!r} resumed {by}: {goes_on}."
    else:
        done = steering.cancel(hook, campaign_id, f"cancelled {by}", provider.Provider())
        message = (
            f"MigoSMTP campaign {campaign_id!r} cancelled {by}: {done['never_sent']} batches not yet at "
            f"the provider and {done['at_provider']} at it are cancelled; {done['too_late']} at the provider "
            f"within {provider.CANCEL_MIN_LEAD.seconds // 60} minutes of their slot go out as scheduled. "
            "Nothing more of this campaign is sent."
        )
    log.warning("%s", message)
    alerts.CampaignHaltNotifier().deliver(message)
    return settings.mode == RESUME and sender is None


def _plan_new_within_quota(
    hook,
    settings: CampaignSettings,
    dag_id: str,
    run_id: str,
    chunk_rows: int,
    max_batches: int,
    screen: staging.Screen,
) -> list[dict[str, Any]]:
    """A new plan and its quota pre-flight. Until both are done the plan is ``planning`` and
    holds nothing for other campaigns; if either fails, its batches and staged recipients go."""
    campaign_id = settings.campaign_id
    try:
        batches = _plan_new(hook, settings, dag_id, run_id, chunk_rows, max_batches, screen)
        if settings.dry_run:
            preview.log_preview(hook, campaign_id, batches, settings.default_timezone)
        batches = within_quota(hook, settings, batches, new_plan=True)
        definition.finish_plan(hook, campaign_id, settings.dry_run)
    except BaseException:
        try:
            staging.abandon_plan(hook, campaign_id)
        except Exception:  # the warehouse is gone too: the next plan clears it (clear_abandoned_plans)
            log.exception("Could not clear campaign %s's unfinished plan", campaign_id)
        raise
    return batches


def _resumable_definition(
    settings: CampaignSettings,
    entries: list[dict[str, Any]],
    recorded: dict[str, Any] | None,
    current: dict[str, Any],
) -> dict[str, Any] | None:
    """Check that this run may resume the campaign; returns its recorded row (None if it has none).

    ``mode=retry_failed`` always sends what was first planned, whatever the run's Params say;
    ``mode=send`` resumes only a campaign of the same definition, and never as a dry run.
    """
    campaign_id = settings.campaign_id
    changed = definition.differences(recorded["definition"], current) if recorded else []
    if settings.mode in (RETRY_FAILED, RESUME):
        if not entries:
            raise AirflowFailException(
                f"campaign {campaign_id!r} has no ledger to resume; plan and send it with mode=send first"
            )
        if changed:
            log.warning(
                "mode=retry_failed sends campaign %s as first planned; the run's %s differ and are not used",
                campaign_id,
                ", ".join(changed),
            )
        return recorded
    if changed:
        raise AirflowFailException(
            f"campaign {campaign_id!r} was first planned (run {recorded['planned_by_run']}) with "
            f"another {', '.join(changed)}; a campaign's definition cannot change once it has sent. "
            "Rerun it with its first definition to finish it, or give the new one a new campaign_id."
        )
    if settings.dry_run:
        raise AirflowFailException(
            f"campaign {campaign_id!r} has already sent batches, so a dry run cannot plan it afresh; "
            "use a new campaign_id to preview a new campaign"
        )
    log.info("Campaign %s was planned before with this definition: finishing it", campaign_id)
    return recorded


def _descriptor(batch_number: int, batch_count: int, send_at: str, recipient_count: int) -> dict[str, Any]:
    return {
        "batch_number": batch_number,
        "batch_count": batch_count,
        "send_at": send_at,
        "recipient_count": recipient_count,
    }


def _too_many_batches(campaign_id: str, batches: str, limit: int) -> AirflowFailException:
    return AirflowFailException(
        f"campaign {campaign_id!r} needs {batches} batches, more than one run can map "
        f"([core] max_map_length = {limit:,}); nothing was kept or sent. Ways out: raise "
        "[core] max_map_length (AIRFLOW__CORE__MAX_MAP_LENGTH, on the scheduler, API server and workers); "
        "send larger batches (max_batch_size up to 1,000, where hourly_cap allows); or split the audience "
        "into several campaigns (a table or view per part, each with its own campaign_id)."
    )


def _too_many_to_map(hook, settings: CampaignSettings, staged: int, limit: int) -> AirflowFailException:
    """Remove the partial plan (the batch count is only known by packing) and say what it needs."""
    staging.clear_plan(hook, settings.campaign_id)
    rows = count_rows(hook, settings.recipients_table)
    per_batch = staged / limit  # as packed so far; rejected rows make the estimate high
    estimate = max(limit + 1, math.ceil(rows / per_batch))
    needs = f"about {estimate:,} ({rows:,} rows, {per_batch:,.0f} recipients per batch so far)"
    return _too_many_batches(settings.campaign_id, needs, limit)


def _plan_resume(
    hook,
    settings: CampaignSettings,
    entries: list[dict[str, Any]],
    max_batches: int,
    recorded: dict[str, Any],
):
    """The campaign's unsent batches, with the same recipients and keys; passed slots re-placed,
    within the recorded sending window and the warm-up ramp of now.

    The audience is frozen at the first plan: the recipients table is not read again.
    """
    campaign_id = settings.campaign_id
    pending = [r for r in entries if r["status"] not in ledger.SENT_STATUSES]
    if not pending:
        log.info(
            "Every batch of campaign %s (%d) is already at the provider: nothing to send",
            campaign_id,
            len(entries),
        )
        return []
    if len(pending) > max_batches:
        raise _too_many_batches(campaign_id, f"{len(pending):,} unsent", max_batches)
    now = settings.start_at
    passed, kept = [], []
    for r in pending:
        (passed if hour_floor(parse_utc(r["send_at"])) < hour_floor(now) else kept).append(r)
    # Slots are the account's: what is at the provider and the unsent batches kept in their slots count.
    occupied = Counter(ledger.occupied_slots(hook, now, campaign_id))
    for r in kept:
        occupied[parse_utc(r["send_at"])] += r["recipient_count"]
    window, _ = definition.window(recorded)
    try:
        new_slots = place_whole_batches(
            [r["recipient_count"] for r in passed],
            settings.caps,
            now,
            occupied,
            zones=[r.get("timezone") for r in passed],
            window=window,
            ramp=warmup.for_task() if passed else None,
        )
    except ValueError as err:
        raise AirflowFailException(
            f"cannot re-place campaign {campaign_id!r}'s batches: {err}; resume with caps that fit a batch"
        ) from err
    for r, send_at in zip(passed, new_slots, strict=True):
        ledger.reschedule(hook, campaign_id, r["batch_number"], send_at)
        r["send_at"] = utc_text(send_at)
    log.info(
        "Resuming campaign %s: %d of %d batches not sent (%d re-placed from passed slots)",
        campaign_id,
        len(pending),
        len(entries),
        len(passed),
    )
    return [_descriptor(r["batch_number"], len(entries), r["send_at"], r["recipient_count"]) for r in pending]


def _plan_new(
    hook,
    settings: CampaignSettings,
    dag_id: str,
    run_id: str,
    chunk_rows: int,
    max_batches: int,
    screen: staging.Screen,
) -> list[dict[str, Any]]:
    """Record the campaign's definition (``planning``), then stream the recipients, screen them,
    stage them in batches and write the planned ledger; an earlier plan that sent nothing is
    replaced."""
    campaign_id = settings.campaign_id
    try:
        columns = table_columns(hook, settings.recipients_table)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise WarehouseInputError(
                f"table {settings.recipients_table!r} lacks column(s) {', '.join(missing)}; "
                f"it has {', '.join(columns)}"
            )
    except WarehouseInputError as err:
        raise AirflowFailException(str(err)) from err
    account_ramp = warmup.for_task()  # before anything is written: a malformed Variable leaves no trace
    staging.clear_plan(hook, campaign_id)
    # Recorded before the first row is written, so every row of this plan is known unfinished.
    definition.record(
        hook,
        campaign_id,
        definition.of(settings),
        dag_id=dag_id,
        run_id=run_id,
        dry_run=settings.dry_run,
        status=definition.PLANNING,
        transactional=settings.ignore_suppressions,
    )

    occupied = ledger.occupied_slots(hook, settings.start_at, campaign_id)
    packer = BatchPacker(
        settings.caps, settings.start_at, occupied, window=settings.window, ramp=account_ramp
    )
    cap = None
    if settings.max_mails_per_recipient and not settings.ignore_suppressions:  # transactional: no cap
        cap = FrequencyCap(settings.max_mails_per_recipient, settings.frequency_days)
    if account_ramp is not None:
        log.info("Warm-up ramp %s holds each UTC day to the smaller of it and daily_cap", account_ramp.text)
    sql = f"SELECT * FROM {quote_table(settings.recipients_table)} ORDER BY recipient_id, email"
    overflow = None
    if settings.ignore_suppressions:
        log.warning("ignore_suppressions is set: suppressed addresses are planned like any other")
    with ChunkedPlan(
        hook,
        campaign_id,
        packer,
        max_batches,
        provider.batch_key,
        not settings.ignore_suppressions,
        default_zone=settings.default_timezone,
        frequency_cap=cap,
        since=settings.start_at - (cap.period if cap else timedelta(0)),
        screen=screen,
    ) as plan:
        try:
            for columns, rows in stream_rows(hook, sql, chunk_rows):
                plan.add(columns, rows)
            plan.finish()
        except TooManyBatches as err:
            overflow = err.staged
    if overflow is not None:
        raise _too_many_to_map(hook, settings, overflow, max_batches)
    read, rejected, staged = plan.read, plan.rejected, plan.staged

    if read == 0:
        raise AirflowFailException(f"table {settings.recipients_table!r} is empty: nothing to send")
    batches = plan.batches
    if not batches:
        raise AirflowFailException(
            f"none of the {read} recipients in {settings.recipients_table!r} can be sent to; "
            f"the reasons are in {REJECTED_TABLE} (campaign_id {campaign_id!r})"
        )
    log.info(
        "Planned campaign %s: %d recipients read, %d rejected, %d staged in %d batches from %s to %s",
        campaign_id,
        read,
        rejected,
        staged,
        len(batches),
        utc_text(min(b.send_at for b in batches)),
        utc_text(max(b.send_at for b in batches)),
    )
    return [
        _descriptor(b.batch_number, len(batches), utc_text(b.send_at), b.recipient_count) for b in batches
    ]
