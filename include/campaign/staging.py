"""Writing a new plan, a chunk at a time: the staged audience, its rejections and the planned ledger.

One connection for the whole plan and one transaction per chunk: a chunk is
staged, rejected and its closed batches written together, or not at all. The
chunk's rows go in as one bulk load (COPY on PostgreSQL).

De-duplication across chunks is left to the staging table's unique indexes
(one row per email, one per recipient id in a campaign). A chunk is first
screened as if nothing were staged and written; only if the indexes refuse it
(a duplicate of an earlier chunk: rare, as the list is read in recipient_id
order) is it rolled back and screened again against what earlier chunks
staged, one set-based look-up per key column. Either way the chunk's first
occurrence wins and later ones are rejected with their reason, so the plan is
the same for any chunk size, and nothing about earlier chunks is held in memory.

A plan being written is its campaign's ``planning`` row in ``email_campaigns``
(``definition``): its rows hold no room or quota for other campaigns until it
is finished. Each chunk's commit touches that row, so a plan whose row has
not moved for ``ABANDONED_AFTER`` died with its process, and the next plan
clears what it left (``clear_abandoned_plans``); a plan that fails in its
process clears its own (``abandon_plan``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

from include.campaign import frequency, ledger, suppressions
from include.campaign.audience import Recipient, Rejection, ScreenedRows, StagedLookup
from include.campaign.ledger import PLAN_FAILED, PLANNING, planned_row
from include.campaign.planner import Batch, BatchPacker
from include.campaign.screening import screen_frame
from include.campaign.windows import DEFAULT_TIMEZONE
from include.warehouse import (
    CAMPAIGNS_TABLE,
    REJECTED_TABLE,
    STAGING_TABLE,
    bulk_insert,
    fetch_dicts,
    in_values,
    transaction,
    utc_now_text,
    utc_text,
)

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

log = logging.getLogger(__name__)

STAGING_FIELDS = (
    "campaign_id",
    "batch_number",
    "position",
    "recipient_id",
    "email",
    "variables",
    "source_row",
    "timezone",
)
REJECTED_FIELDS = ("campaign_id", "source_row", "recipient_id", "email", "reason", "detail")

# A plan writes a chunk every few seconds; one whose row has not moved for this long is dead.
# Generous, since clearing a live plan would fail it (``definition.finish_plan`` notices).
ABANDONED_AFTER = timedelta(minutes=30)

# How a chunk is screened: ``screening.screen_frame`` (pandas) or the row-by-row definition,
# ``audience.screen_rows``, which gives the same result (tests plan one table both ways).
Screen = Callable[
    [Sequence[str], Sequence[Sequence[Any]], int, StagedLookup, Callable[[set[str]], set[str]] | None, str],
    ScreenedRows,
]


def clear_plan(hook: DbApiHook, campaign_id: str) -> None:
    """Drop a plan that sent nothing (a dry run, a run stopped before sending, a refused plan)."""
    p = hook.placeholder
    with transaction(hook) as cur:
        ledger.delete_campaign(cur, p, campaign_id)
        for table in (STAGING_TABLE, REJECTED_TABLE, CAMPAIGNS_TABLE):
            cur.execute(f"DELETE FROM {table} WHERE campaign_id = {p}", (campaign_id,))


def abandon_plan(hook: DbApiHook, campaign_id: str) -> None:
    """A new plan that failed part-way: record the campaign ``plan_failed`` and drop its batches
    and staged recipients, but keep its rejections (they may say why). Only a ``planning``
    campaign: a finished plan that a later run failed to replace stays as it was."""
    p = hook.placeholder
    with transaction(hook) as cur:
        cur.execute(
            f"UPDATE {CAMPAIGNS_TABLE} SET status = {p}, updated_at = {p} "
            f"WHERE campaign_id = {p} AND status = {p}",
            (PLAN_FAILED, utc_now_text(), campaign_id, PLANNING),
        )
        if cur.rowcount == 1:
            ledger.delete_campaign(cur, p, campaign_id)
            cur.execute(f"DELETE FROM {STAGING_TABLE} WHERE campaign_id = {p}", (campaign_id,))


def clear_abandoned_plans(hook: DbApiHook, now: datetime | None = None) -> list[str]:
    """Abandon the plans whose process died while writing them; returns their campaign ids."""
    cutoff = utc_text((now or datetime.now(UTC)) - ABANDONED_AFTER)
    p = hook.placeholder
    dead = fetch_dicts(
        hook,
        f"SELECT campaign_id FROM {CAMPAIGNS_TABLE} WHERE status = {p} AND updated_at < {p}",
        (PLANNING, cutoff),
    )
    for row in dead:
        log.warning("Campaign %s: its plan stopped before %s; clearing it", row["campaign_id"], cutoff)
        abandon_plan(hook, row["campaign_id"])
    return [row["campaign_id"] for row in dead]


def batch_recipients(
    hook: DbApiHook, campaign_id: str, batch_number: int, *, flag_suppressed: bool = False
) -> tuple[list[Recipient], int]:
    """A staged batch's recipients in order, and how many of them are on the suppression list now
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


def rejected_count(hook: DbApiHook, campaign_id: str) -> int:
    """How many of the campaign's rows were rejected, with their reasons (at plan, or dropped after)."""
    found = fetch_dicts(
        hook,
        f"SELECT COUNT(*) AS n FROM {REJECTED_TABLE} WHERE campaign_id = {hook.placeholder}",
        (campaign_id,),
    )
    return int(found[0]["n"])


class TooManyBatches(Exception):
    """The plan needs more batches than allowed; ``staged`` recipients fit in the allowed ones."""

    def __init__(self, staged: int) -> None:
        super().__init__(f"more batches than allowed after {staged} recipients")
        self.staged = staged


def _nothing_staged(emails: set[str], ids: set[str]) -> tuple[set[str], set[str]]:
    return set(), set()


def _is_integrity_error(err: BaseException) -> bool:
    """A DB-API IntegrityError of any driver (the spec names the class, not its module)."""
    return any(cls.__name__ == "IntegrityError" for cls in type(err).__mro__)


class PlanWriter:
    """A plan's writes on one connection; use as a context manager (closed, uncommitted work
    rolled back, on the way out)."""

    def __init__(self, hook: DbApiHook, campaign_id: str) -> None:
        self._campaign_id = campaign_id
        self._dialect = hook.dialect_name
        self._placeholder = hook.placeholder
        self._conn = hook.get_conn()
        if self._dialect == "sqlite":
            # WAL (set by ensure_schema) with NORMAL sync: a commit no longer waits for the disk,
            # and a power cut can only lose the last chunks of a plan that has sent nothing and
            # is replaced by the next run. This connection only; batch tasks keep FULL.
            self._conn.execute("PRAGMA synchronous=NORMAL")

    def __enter__(self) -> PlanWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.rollback()  # nothing if the last chunk was committed
        finally:
            self._conn.close()

    def rollback(self) -> None:
        self._conn.rollback()

    def staged(self, emails: set[str], ids: set[str]) -> tuple[set[str], set[str]]:
        """Which of these emails and recipient ids earlier chunks staged (``StagedLookup``)."""
        return self._staged("email", emails), self._staged("recipient_id", ids)

    def _staged(self, column: str, values: set[str]) -> set[str]:
        if not values:
            return set()
        condition, parameters = in_values(self._dialect, self._placeholder, column, values)
        with closing(self._conn.cursor()) as cur:
            cur.execute(
                f"SELECT {column} FROM {STAGING_TABLE} "
                f"WHERE campaign_id = {self._placeholder} AND {condition}",
                [self._campaign_id, *parameters],
            )
            return {row[0] for row in cur.fetchall()}

    def suppressed(self, emails: set[str]) -> set[str]:
        """Which of these emails are on the suppression list now."""
        with closing(self._conn.cursor()) as cur:
            return suppressions.active_among(cur, self._dialect, self._placeholder, emails)

    def history(self, emails: set[str], since: datetime, cap: frequency.FrequencyCap) -> frequency.History:
        """Other campaigns' mails to these emails from ``since`` on (the frequency cap's counts)."""
        return frequency.history(
            self._conn, self._dialect, self._placeholder, self._campaign_id, emails, since, cap
        )

    def write_chunk(
        self,
        staged: Sequence[Sequence[Any]],
        rejected: Sequence[Sequence[Any]],
        planned: Sequence[Sequence[Any]],
    ) -> None:
        """One chunk's rows (``STAGING_FIELDS``, ``REJECTED_FIELDS``, ledger ``FIELDS``), in one
        transaction."""
        bulk_insert(self._conn, self._placeholder, STAGING_TABLE, STAGING_FIELDS, staged)
        bulk_insert(self._conn, self._placeholder, REJECTED_TABLE, REJECTED_FIELDS, rejected)
        ledger.insert_planned(self._conn, self._placeholder, planned)
        with closing(self._conn.cursor()) as cur:  # the plan is alive (see clear_abandoned_plans)
            p = self._placeholder
            cur.execute(
                f"UPDATE {CAMPAIGNS_TABLE} SET updated_at = {p} WHERE campaign_id = {p}",
                (utc_now_text(), self._campaign_id),
            )
        self._conn.commit()


@dataclass
class _Placed:
    """A chunk placed on a copy of the plan so far: its rows, and the plan as it is once written."""

    screened: ScreenedRows
    packer: BatchPacker
    staged: int
    open_ids: dict[int, list[str]]
    staging_rows: list[tuple]
    overflow: int | None = None  # recipients that fit the allowed batches, if the chunk passes them
    details: dict[int, str] | None = None  # a rejection's detail, by source row


class ChunkedPlan:
    """A new plan, built a chunk at a time on a ``BatchPacker``; a context manager (its writer)."""

    def __init__(
        self,
        hook: DbApiHook,
        campaign_id: str,
        packer: BatchPacker,
        max_batches: int,
        key_for: Callable[[str, int], str],
        honour_suppressions: bool = True,
        *,
        default_zone: str = DEFAULT_TIMEZONE,
        frequency_cap: frequency.FrequencyCap | None = None,
        since: datetime | None = None,
        screen: Screen = screen_frame,
    ) -> None:
        self._campaign_id = campaign_id
        self._screen = screen
        self._packer = packer
        self._default_zone = default_zone
        self._cap = frequency_cap
        self._since = since
        self._max_batches = max_batches
        self._key_for = key_for
        self._writer = PlanWriter(hook, campaign_id)
        self._suppressed = self._writer.suppressed if honour_suppressions else None
        self._open_ids: dict[int, list[str]] = {}  # recipient ids of batches not yet in the ledger
        self.read = self.rejected = self.staged = 0

    def __enter__(self) -> ChunkedPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.__exit__(*exc)

    @property
    def batches(self) -> list[Batch]:
        """The batches written so far (closed), in batch-number order."""
        return sorted(self._packer.batches, key=lambda b: b.batch_number)

    def add(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Screen, place and write one chunk; raises ``TooManyBatches`` past ``max_batches``."""
        first_source_row = self.read + 1
        self.read += len(rows)
        placed = self._place(columns, rows, first_source_row, _nothing_staged)
        if placed.overflow is None:
            try:
                self._write(placed)
                return
            except Exception as err:
                if not _is_integrity_error(err):
                    raise
                self._writer.rollback()  # a duplicate of an earlier chunk: screen against them
        placed = self._place(columns, rows, first_source_row, self._writer.staged)
        if placed.overflow is not None:
            raise TooManyBatches(placed.overflow)
        self._write(placed)

    def finish(self) -> None:
        """Close the last batch and write its ledger row."""
        closed_before = self._packer.closed_count
        if self._packer.finish() is not None:
            self._writer.write_chunk([], [], self._ledger_rows(self._packer, closed_before, self._open_ids))

    def _place(self, columns, rows, first_source_row, staged) -> _Placed:
        screened = self._screen(columns, rows, first_source_row, staged, self._suppressed, self._default_zone)
        packer = self._packer.copy()
        details: dict[int, str] = {}
        if packer.zoned:  # a recipient without a zone of their own is in the default one
            lanes = [zone or self._default_zone for zone in screened.zones]
        else:
            lanes = screened.zones
        if self._cap is not None:
            runs = self._place_capped(packer, screened, lanes, details)
        elif packer.zoned:  # one run per stretch of recipients of one zone, in arrival order
            runs = []
            for zone, count in _stretches(lanes):
                runs += packer.take(count, zone)
        else:
            runs = packer.take(len(screened.ids))
        position = self.staged
        if runs and max(number for number, _ in runs) > self._max_batches:
            fit = sum(n for number, n in runs if number <= self._max_batches)
            return _Placed(screened, packer, position, {}, [], overflow=position + fit)
        open_ids = {number: list(ids) for number, ids in self._open_ids.items()}
        staging_rows: list[tuple] = []
        ids = screened.ids
        if ids:  # the rows are zipped together from the columns, in C
            numbers = chain.from_iterable(repeat(number, count) for number, count in runs)
            positions = range(position + 1, position + 1 + len(ids))
            staging_rows = list(
                zip(
                    repeat(self._campaign_id),
                    numbers,
                    positions,
                    ids,
                    screened.emails,
                    screened.variables,
                    screened.source_rows,
                    screened.zones,
                )
            )
            start = 0
            for number, count in runs:
                open_ids.setdefault(number, []).extend(ids[start : start + count])
                start += count
            position += len(ids)
        return _Placed(screened, packer, position, open_ids, staging_rows, details=details)

    def _place_capped(
        self, packer: BatchPacker, screened: ScreenedRows, lanes: list[str | None], details: dict[int, str]
    ) -> list:
        """Place recipients one at a time, each first counted against the frequency cap at the slot
        it would get; a capped one is rejected (``screened`` loses it) and takes no room."""
        cap = self._cap
        history = self._writer.history(set(screened.emails), self._since, cap)
        runs: list[tuple[int, int]] = []
        kept = ScreenedRows(rejected=screened.rejected)
        for recipient, zone, lane in zip(screened.accepted, screened.zones, lanes, strict=True):
            recipient_id, email, variables, source_row = recipient
            campaigns = history.capped_by(email, packer.next_send_at(lane))
            if campaigns is not None:
                screened.rejected.append(
                    Rejection(source_row, recipient_id, email, frequency.FREQUENCY_CAPPED)
                )
                details[source_row] = frequency.detail(campaigns, cap)
                continue
            [(number, _)] = packer.take(1, lane)
            if runs and runs[-1][0] == number:
                runs[-1] = (number, runs[-1][1] + 1)
            else:
                runs.append((number, 1))
            kept.add(recipient_id, email, variables, source_row, zone)
        screened.ids, screened.emails, screened.variables = kept.ids, kept.emails, kept.variables
        screened.source_rows, screened.zones = kept.source_rows, kept.zones
        return runs

    def _write(self, placed: _Placed) -> None:
        campaign_id = self._campaign_id
        details = placed.details or {}
        rejected_rows = [
            (campaign_id, r.source_row, r.recipient_id, r.email, r.reason, details.get(r.source_row))
            for r in placed.screened.rejected
        ]
        ledger_rows = self._ledger_rows(placed.packer, self._packer.closed_count, placed.open_ids)
        self._writer.write_chunk(placed.staging_rows, rejected_rows, ledger_rows)
        # Written: this is the plan now.
        self._packer, self._open_ids, self.staged = placed.packer, placed.open_ids, placed.staged
        self.rejected += len(placed.screened.rejected)

    def _ledger_rows(
        self, packer: BatchPacker, closed_before: int, open_ids: dict[int, list[str]]
    ) -> list[tuple]:
        """Planned ledger rows of the batches closed since ``closed_before``, each with its ids, once."""
        now = utc_now_text()
        return [
            planned_row(
                self._campaign_id,
                b.batch_number,
                self._key_for(self._campaign_id, b.batch_number),
                open_ids.pop(b.batch_number),
                b.send_at,
                now,
                b.timezone,
            )
            for b in packer.batches[closed_before:]
        ]


def _stretches(zones: Sequence[str | None]) -> list[tuple[str | None, int]]:
    """Consecutive recipients of one zone, as ``(zone, count)``, in order."""
    stretches: list[tuple[str | None, int]] = []
    for zone in zones:
        if stretches and stretches[-1][0] == zone:
            stretches[-1] = (zone, stretches[-1][1] + 1)
        else:
            stretches.append((zone, 1))
    return stretches
