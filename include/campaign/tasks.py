"""What the campaign DAG's three tasks do: plan, send one batch, close the ledger.

Kept apart from the DAG file so the DAG stays a short story and these can be
imported and read (and tested) without a scheduler. Heavy imports happen on
call, not at DAG parse time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.campaign import definition, halts, ledger, preview, staging, suppressions
from include.campaign.audience import REQUIRED_COLUMNS, Recipient
from include.campaign.planner import BatchPacker, hour_floor, place_whole_batches
from include.campaign.quota import QuotaCheckFailed, QuotaProjection, held_by_other_campaigns, split_to_fit
from include.campaign.settings import (
    IGNORE,
    REFUSE,
    RETRY_FAILED,
    CampaignSettings,
    CampaignSettingsError,
)
from include.campaign.staging import ChunkedPlan, TooManyBatches
from include.warehouse import (
    REJECTED_TABLE,
    STAGING_TABLE,
    WarehouseInputError,
    ensure_schema,
    fetch_dicts,
    get_warehouse_hook,
    one_connection,
    quote_table,
    stream_rows,
    table_columns,
    utc_text,
)

log = logging.getLogger(__name__)

# Rows read, screened and written per transaction: large enough that per-statement costs vanish,
# small enough that memory stays flat (a chunk is a few MB).
CHUNK_ROWS = 10_000


def _settings(
    params: dict[str, Any], dag_id: str | None = None, logical_date: datetime | None = None
) -> CampaignSettings:
    try:
        return CampaignSettings.from_params(params, dag_id=dag_id, logical_date=logical_date)
    except CampaignSettingsError as err:
        raise AirflowFailException(f"invalid campaign Params: {err}") from err


# -- plan ---------------------------------------------------------------------------------------


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
    max_batches: int | None = None,
) -> list[dict[str, Any]]:
    """Plan the run's batches; returns only small batch descriptors (recipients stay in the warehouse).

    Every run converges on "each valid recipient scheduled exactly once". ``mode=send``
    plans a new campaign from the recipients table; for a campaign already attempted
    with the same definition it resumes instead, exactly as ``mode=retry_failed`` does
    (the batches not yet at the provider, as first planned). A different definition
    under the same campaign_id is refused before anything is read or sent.
    """
    settings = _settings(params, dag_id, logical_date)
    campaign_id = settings.campaign_id
    max_batches = max_map_length() if max_batches is None else max_batches
    hook = get_warehouse_hook()
    ensure_schema(hook)
    staging.clear_abandoned_plans(hook)
    if run_id and halts.lift(hook, campaign_id, run_id):
        log.info("Run %s was halted and is planned again (cleared): its halt is lifted", run_id)
    entries = ledger.rows(hook, campaign_id)
    recorded = definition.read(hook, campaign_id)
    if recorded and recorded["status"] in ledger.UNFINISHED_PLANS and not _was_attempted(entries):
        entries = []  # a plan that never finished: none of it is the campaign's
    if settings.mode != RETRY_FAILED and not _was_attempted(entries):
        return _plan_new_within_quota(hook, settings, dag_id or "", run_id, chunk_rows, max_batches)
    current = definition.of(settings)
    recorded = _resumable_definition(settings, entries, recorded, current)
    if recorded is None:  # planned before email_campaigns existed: its definition is what this run says
        definition.record(hook, campaign_id, current, dag_id=dag_id or "", run_id=run_id, dry_run=False)
    return _within_quota(hook, settings, _plan_resume(hook, settings, entries, max_batches), new_plan=False)


def _plan_new_within_quota(
    hook, settings: CampaignSettings, dag_id: str, run_id: str, chunk_rows: int, max_batches: int
) -> list[dict[str, Any]]:
    """A new plan and its quota pre-flight. Until both are done the plan is ``planning`` and
    holds nothing for other campaigns; if either fails, its batches and staged recipients go."""
    campaign_id = settings.campaign_id
    try:
        batches = _plan_new(hook, settings, dag_id, run_id, chunk_rows, max_batches)
        if settings.dry_run:
            preview.log_preview(hook, campaign_id, batches)
        batches = _within_quota(hook, settings, batches, new_plan=True)
        definition.finish_plan(hook, campaign_id, settings.dry_run)
    except BaseException:
        try:
            staging.abandon_plan(hook, campaign_id)
        except Exception:  # the warehouse is gone too: the next plan clears it (clear_abandoned_plans)
            log.exception("Could not clear campaign %s's unfinished plan", campaign_id)
        raise
    return batches


def _within_quota(
    hook, settings: CampaignSettings, batches: list[dict[str, Any]], *, new_plan: bool
) -> list[dict[str, Any]]:
    """The quota pre-flight (see ``quota``): the batches this run may send, by ``quota_policy``.

    A refused new plan is removed, so that it holds no quota or slots for other campaigns; a
    refused resume keeps its batches (they are still the campaign's to send).
    """
    from include.migosmtp.client import InvalidApiKey, MigoSmtpClient, MigoSmtpError

    campaign_id = settings.campaign_id
    if settings.quota_policy == IGNORE or not batches:
        return batches
    try:
        quota = MigoSmtpClient().get_quota()
    except MigoSmtpError as err:
        if settings.dry_run:
            log.warning("Quota projection unavailable (the dry run goes on without it): %s", err)
            return batches
        if new_plan:
            staging.clear_plan(hook, campaign_id)
        message = (
            f"cannot check the MigoSMTP quota before sending campaign {campaign_id!r}, so nothing was "
            f"sent: {err}. Set quota_policy=ignore to send without the check."
        )
        if isinstance(err, InvalidApiKey):
            raise AirflowFailException(message) from err
        raise QuotaCheckFailed(message) from err  # the plan task's retry asks again
    projection = QuotaProjection(
        needed=sum(b["recipient_count"] for b in batches),
        limit=quota.monthly_limit,
        used=quota.monthly_used,
        held=held_by_other_campaigns(hook, campaign_id),
    )
    fitting, waiting = split_to_fit(batches, projection.left)
    if projection.fits:
        log.info("Quota: campaign %s %s: it fits", campaign_id, projection.describe())
        return batches
    if settings.dry_run:
        log.warning(
            "Quota (dry run): campaign %s %s: quota_policy=refuse would send nothing, "
            "send_what_fits %d of %d batches",
            campaign_id,
            projection.describe(),
            len(fitting),
            len(batches),
        )
        return batches
    if settings.quota_policy == REFUSE:
        if new_plan:
            staging.clear_plan(hook, campaign_id)
        raise AirflowFailException(
            f"campaign {campaign_id!r} does not fit in this month's MigoSMTP quota: it "
            f"{projection.describe()}. This run sent nothing. Wait for the monthly reset or raise the "
            f"plan's quota; or trigger it with quota_policy=send_what_fits to send the {len(fitting)} "
            f"of {len(batches)} batches that fit now."
        )
    reason = (
        f"waiting for quota: left unsent by the quota pre-flight "
        f"({projection.describe()}); resume after the monthly reset with mode=retry_failed"
    )
    ledger.record_waiting(hook, campaign_id, [b["batch_number"] for b in waiting], reason)
    log.warning(
        "Quota: campaign %s %s: sending the %d of %d batches that fit (%d recipients); %d stay planned",
        campaign_id,
        projection.describe(),
        len(fitting),
        len(batches),
        sum(b["recipient_count"] for b in fitting),
        len(waiting),
    )
    return fitting


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
    if settings.mode == RETRY_FAILED:
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
    sql = f"SELECT COUNT(*) AS n FROM {quote_table(settings.recipients_table)}"
    rows = int(fetch_dicts(hook, sql, ())[0]["n"])
    per_batch = staged / limit  # as packed so far; rejected rows make the estimate high
    estimate = max(limit + 1, math.ceil(rows / per_batch))
    needs = f"about {estimate:,} ({rows:,} rows, {per_batch:,.0f} recipients per batch so far)"
    return _too_many_batches(settings.campaign_id, needs, limit)


def _plan_resume(hook, settings: CampaignSettings, entries: list[dict[str, Any]], max_batches: int):
    """The campaign's unsent batches, with the same recipients and keys; passed slots re-placed.

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
        (passed if hour_floor(_parse_utc(r["send_at"])) < hour_floor(now) else kept).append(r)
    # Slots are the account's: what is at the provider and the unsent batches kept in their slots count.
    occupied = Counter(ledger.occupied_slots(hook, now, campaign_id))
    for r in kept:
        occupied[_parse_utc(r["send_at"])] += r["recipient_count"]
    try:
        new_slots = place_whole_batches([r["recipient_count"] for r in passed], settings.caps, now, occupied)
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
    hook, settings: CampaignSettings, dag_id: str, run_id: str, chunk_rows: int, max_batches: int
) -> list[dict[str, Any]]:
    """Record the campaign's definition (``planning``), then stream the recipients, screen them,
    stage them in batches and write the planned ledger; an earlier plan that sent nothing is
    replaced."""
    from include.migosmtp.client import idempotency_key

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
    )

    occupied = ledger.occupied_slots(hook, settings.start_at, campaign_id)
    packer = BatchPacker(settings.caps, settings.start_at, occupied)
    sql = f"SELECT * FROM {quote_table(settings.recipients_table)} ORDER BY recipient_id, email"
    overflow = None
    if settings.ignore_suppressions:
        log.warning("ignore_suppressions is set: suppressed addresses are planned like any other")
    with ChunkedPlan(
        hook, campaign_id, packer, max_batches, idempotency_key, not settings.ignore_suppressions
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
        utc_text(batches[0].send_at),
        utc_text(batches[-1].send_at),
    )
    return [
        _descriptor(b.batch_number, len(batches), utc_text(b.send_at), b.recipient_count) for b in batches
    ]


# -- send ---------------------------------------------------------------------------------------


def _parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _staged_recipients(hook, campaign_id: str, batch_number: int, *, flag_suppressed: bool = False):
    """The batch's recipients in order, and how many of them are on the suppression list now
    (asked in the same statement, so the check before a first send costs no round trip)."""
    p = hook.placeholder
    flag = suppressions.flag_sql(hook.dialect_name, "s.email") if flag_suppressed else "0"
    staged = fetch_dicts(
        hook,
        f"SELECT s.recipient_id, s.email, s.variables, {flag} AS suppressed FROM {STAGING_TABLE} s "
        f"WHERE s.campaign_id = {p} AND s.batch_number = {p} ORDER BY s.position",
        (campaign_id, batch_number),
    )
    recipients = [Recipient(s["recipient_id"], s["email"], json.loads(s["variables"])) for s in staged]
    return recipients, sum(1 for s in staged if s["suppressed"])


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


def send_batch(
    batch: dict[str, Any],
    params: dict[str, Any],
    run_id: str,
    *,
    dag_id: str | None = None,
    logical_date: datetime | None = None,
) -> dict[str, Any]:
    """Submit one planned batch, exactly once, with the campaign's recorded definition, and record
    the outcome in the ledger.

    Raises the client's errors so the retry policy can apply the article's error table;
    a 402 or 401 also halts the run, so batches not yet sent are not attempted.
    """
    settings = _settings(params, dag_id, logical_date)
    number = batch["batch_number"]
    if settings.dry_run:
        raise AirflowSkipException(f"dry run: batch {number} planned, not sent")
    with one_connection(get_warehouse_hook()) as hook:
        result, hold = _send_batch(hook, settings, number, run_id)
    if hold:
        # Keep this pool slot until the provider's rate window resets, so the next batch in it
        # cannot be the request that crosses the limit (see RateWindow.hold_seconds).
        log.info("Rate window nearly spent: holding this pool slot for %.0f s before the next batch", hold)
        time.sleep(hold)
    return result


def _send_batch(hook, settings: CampaignSettings, number: int, run_id: str) -> tuple[dict[str, Any], float]:
    """``send_batch`` on one warehouse connection; returns its result and how long to hold the slot."""
    from include.migosmtp.client import (
        InvalidApiKey,
        MigoSmtpClient,
        MigoSmtpError,
        QuotaExceeded,
        batch_tags,
        build_payload,
        pause_after_send,
    )

    campaign_id = settings.campaign_id
    entry = ledger.row(hook, campaign_id, number)
    recorded = definition.read(hook, campaign_id)
    if entry is None or recorded is None:
        raise AirflowFailException(f"batch {number} of campaign {campaign_id!r} was not planned")
    if entry["status"] in ledger.SENT_STATUSES:
        log.info(
            "Batch %d is already %s as %s; not sending again", number, entry["status"], entry["batch_id"]
        )
        return {"batch_number": number, "batch_id": entry["batch_id"], "resent": False}, 0.0
    stop = halts.current(hook, campaign_id, run_id)
    if stop is not None:
        reason = f"not sent: the run was halted by batch {stop['batch_number']}: {stop['reason']}"
        ledger.record_halted(hook, campaign_id, number, reason)
        raise AirflowSkipException(reason)

    client = MigoSmtpClient()
    key = entry["idempotency_key"]
    hold = 0.0
    try:
        # An earlier attempt may have reached the provider without us hearing back: ask first.
        found = client.find_batch(key) if entry["attempts"] else None
        if found is not None:
            batch_id = found["batch_id"]
            log.info("Batch %d was already accepted as %s (found by idempotency key)", number, batch_id)
        else:
            # A batch never attempted drops whoever was suppressed since planning; one attempted
            # is sent as it was (its idempotency key covers the body it was first sent with).
            check = not entry["attempts"] and not settings.ignore_suppressions
            recipients, suppressed = _staged_recipients(hook, campaign_id, number, flag_suppressed=check)
            if suppressed:
                entry = _without_new_suppressions(hook, entry)
                if entry["status"] == ledger.SUPPRESSED:
                    log.info("Batch %d not sent: all its recipients were suppressed since planning", number)
                    return {"batch_number": number, "batch_id": None, "resent": False}, 0.0
                recipients, _ = _staged_recipients(hook, campaign_id, number)
            if len(recipients) != entry["recipient_count"]:
                raise AirflowFailException(
                    f"batch {number} has {len(recipients)} staged recipients but the ledger planned "
                    f"{entry['recipient_count']}; refusing to send a batch that changed"
                )
            # The recorded definition, not this run's Params: a resend must be what was first planned.
            content = recorded["definition"]
            payload = build_payload(
                from_email=content["from_email"],
                subject=content["subject"],
                html=content["html_body"],
                text=content["text_body"],
                recipients=recipients,
                send_at=_parse_utc(entry["send_at"]),
                tags=batch_tags(campaign_id, number),
            )
            ledger.record_attempt(hook, campaign_id, number)
            receipt = client.send_bulk(payload, key)
            batch_id = receipt.batch_id
            hold = pause_after_send(receipt.rate_window)
            log.info(
                "Batch %d: %d recipients scheduled for %s as %s%s",
                number,
                len(recipients),
                entry["send_at"],
                batch_id,
                " (idempotent replay)" if receipt.replayed else "",
            )
    except (QuotaExceeded, InvalidApiKey) as err:
        ledger.record_failure(hook, campaign_id, number, str(err))
        if halts.halt(hook, campaign_id, run_id, number, str(err)):
            err.halted_campaign = (campaign_id, run_id, number)  # read by CampaignHaltNotifier
        raise
    except MigoSmtpError as err:
        ledger.record_failure(hook, campaign_id, number, str(err))
        err.campaign_batch = (campaign_id, run_id, number)  # read by CampaignHaltNotifier
        raise
    ledger.record_scheduled(hook, campaign_id, number, batch_id)
    return {"batch_number": number, "batch_id": batch_id, "resent": True}, hold


# -- ledger -------------------------------------------------------------------------------------


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
    settings = _settings(params, dag_id, logical_date)
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
    rejected = fetch_dicts(
        hook,
        f"SELECT COUNT(*) AS n FROM {REJECTED_TABLE} WHERE campaign_id = {hook.placeholder}",
        (campaign_id,),
    )[0]["n"]
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
    if summary.unsent:
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
