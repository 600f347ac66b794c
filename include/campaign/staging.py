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
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
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
    """A plan's writes on one connection, which lives in a thread of its own; use as a context
    manager (closed, uncommitted work rolled back, on the way out).

    ``load`` starts a chunk's staged rows into the database in that thread and returns at once;
    ``settle`` waits for them, writes the chunk's rejections and ledger rows and commits the
    chunk. In between the caller reads and screens the next chunk: the database does the
    loading (COPY on PostgreSQL, one statement on SQLite, ``warehouse.bulk_insert``) with the
    GIL released, so the two run side by side. Look-ups go through a second connection, which
    sees what is committed.
    """

    def __init__(self, hook: DbApiHook, campaign_id: str) -> None:
        self._campaign_id = campaign_id
        self._dialect = hook.dialect_name
        self._placeholder = hook.placeholder
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-writer")
        self._loading: tuple[Future, Sequence[Sequence[Any]], Sequence[Sequence[Any]]] | None = None
        self._reader = self._conn = None
        try:
            # Opened in its thread: a sqlite3 connection may only be used by the thread that made it.
            self._conn = self._in_thread(hook.get_conn)
            if self._dialect == "sqlite":
                # WAL (set by ensure_schema) with NORMAL sync: a commit no longer waits for the
                # disk, and a power cut can only lose the last chunks of a plan that has sent
                # nothing and is replaced by the next run. This connection only; batch tasks keep FULL.
                self._in_thread(self._conn.execute, "PRAGMA synchronous=NORMAL")
            self._reader = hook.get_conn()
            if hook.supports_autocommit:  # a look-up holds no transaction open between chunks
                hook.set_autocommit(self._reader, True)
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> PlanWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._loading is not None:  # the caller failed with a chunk loading: wait, then drop it
                wait([self._loading[0]])
                self._loading = None
            if self._conn is not None:
                self._in_thread(self._close)
        finally:
            self._thread.shutdown()
            if self._reader is not None:
                self._reader.close()

    def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return self._thread.submit(function, *args).result()

    def _close(self) -> None:
        try:
            self._conn.rollback()  # nothing if the last chunk was committed
        finally:
            self._conn.close()

    def rollback(self) -> None:
        self._in_thread(self._conn.rollback)

    def staged(self, emails: set[str], ids: set[str]) -> tuple[set[str], set[str]]:
        """Which of these emails and recipient ids earlier chunks staged (``StagedLookup``)."""
        return self._staged("email", emails), self._staged("recipient_id", ids)

    def _staged(self, column: str, values: set[str]) -> set[str]:
        if not values:
            return set()
        condition, parameters = in_values(self._dialect, self._placeholder, column, values)
        with closing(self._reader.cursor()) as cur:
            cur.execute(
                f"SELECT {column} FROM {STAGING_TABLE} "
                f"WHERE campaign_id = {self._placeholder} AND {condition}",
                [self._campaign_id, *parameters],
            )
            return {row[0] for row in cur.fetchall()}

    def suppressed(self, emails: set[str]) -> set[str]:
        """Which of these emails are on the suppression list now."""
        with closing(self._reader.cursor()) as cur:
            return suppressions.active_among(cur, self._dialect, self._placeholder, emails)

    def history(self, emails: set[str], since: datetime, cap: frequency.FrequencyCap) -> frequency.History:
        """Other campaigns' mails to these emails from ``since`` on (the frequency cap's counts)."""
        return frequency.history(
            self._reader, self._dialect, self._placeholder, self._campaign_id, emails, since, cap
        )

    def load(
        self,
        staged: Sequence[Sequence[Any]],
        rejected: Sequence[Sequence[Any]],
        planned: Sequence[Sequence[Any]],
    ) -> None:
        """Start writing one chunk's rows (``STAGING_FIELDS``, ``REJECTED_FIELDS``, ledger
        ``FIELDS``): the staged ones load while the caller goes on; ``settle`` finishes it."""
        if self._loading is not None:
            raise RuntimeError("a chunk is still loading: settle it first")
        conn, p = self._conn, self._placeholder
        future = self._thread.submit(bulk_insert, conn, p, STAGING_TABLE, STAGING_FIELDS, staged)
        self._loading = (future, rejected, planned)

    def settle(self) -> None:
        """Finish the chunk ``load`` started: its rows in one transaction, committed, or a raise
        of what the database refused with none of them written. Nothing to do if none is loading."""
        if self._loading is None:
            return
        future, rejected, planned = self._loading
        self._loading = None
        self._in_thread(self._finish_chunk, future, rejected, planned)

    def write_chunk(
        self,
        staged: Sequence[Sequence[Any]],
        rejected: Sequence[Sequence[Any]],
        planned: Sequence[Sequence[Any]],
    ) -> None:
        """One chunk's rows, in one transaction, committed before it returns."""
        self.load(staged, rejected, planned)
        self.settle()

    def _finish_chunk(self, loaded: Future, rejected, planned) -> None:
        try:
            loaded.result()
            bulk_insert(self._conn, self._placeholder, REJECTED_TABLE, REJECTED_FIELDS, rejected)
            ledger.insert_planned(self._conn, self._placeholder, planned)
            with closing(self._conn.cursor()) as cur:  # the plan is alive (see clear_abandoned_plans)
                p = self._placeholder
                cur.execute(
                    f"UPDATE {CAMPAIGNS_TABLE} SET updated_at = {p} WHERE campaign_id = {p}",
                    (utc_now_text(), self._campaign_id),
                )
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise


@dataclass
class _State:
    """A plan as far as it is written, or as it will be once a chunk is: its packer, the
    recipient ids of its batches not yet in the ledger, and how many recipients it staged."""

    packer: BatchPacker
    open_ids: dict[int, list[str]]
    staged: int


@dataclass
class _Chunk:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    first_source_row: int


@dataclass
class _Placed:
    """A chunk placed on a copy of a plan's state: its rows, and the state once they are written."""

    chunk: _Chunk
    state: _State
    rejected: int = 0
    staging_rows: list[tuple] = field(default_factory=list)
    rejected_rows: list[tuple] = field(default_factory=list)
    ledger_rows: list[tuple] = field(default_factory=list)
    overflow: int | None = None  # recipients that fit the allowed batches, if the chunk passes them


class ChunkedPlan:
    """A new plan, built a chunk at a time on a ``BatchPacker``; a context manager (its writer).

    Each chunk is placed on the state the plan will have once the chunk before it is written,
    and that one is settled only then, so its rows load while this one is screened. If the
    database refuses the chunk before (a duplicate of an earlier chunk, see the module's
    docstring), it is placed again against what is staged and written, and this one is placed
    again on the result: the plan is the one a chunk-by-chunk writer makes."""

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
        self._default_zone = default_zone
        self._cap = frequency_cap
        self._since = since
        self._max_batches = max_batches
        self._key_for = key_for
        self._writer = PlanWriter(hook, campaign_id)
        self._suppressed = self._writer.suppressed if honour_suppressions else None
        self._state = _State(packer, {}, 0)  # the plan as written and committed
        self._loading: _Placed | None = None  # the chunk being written, and the state after it
        self.read = self.rejected = 0

    def __enter__(self) -> ChunkedPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.__exit__(*exc)

    @property
    def staged(self) -> int:
        return self._state.staged

    @property
    def batches(self) -> list[Batch]:
        """The batches written so far (closed), in batch-number order."""
        return sorted(self._state.packer.batches, key=lambda b: b.batch_number)

    def add(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Screen and place one chunk and start writing it, once the chunk before is written;
        raises ``TooManyBatches`` past ``max_batches``."""
        chunk = _Chunk(columns, rows, self.read + 1)
        self.read += len(rows)
        ahead = self._loading.state if self._loading is not None else self._state
        placed = self._place(chunk, _nothing_staged, ahead)
        if not self._settle():  # the chunk before was written again: place this one on it
            placed = self._place(chunk, _nothing_staged, self._state)
        if placed.overflow is not None:  # duplicates of earlier chunks take no room: look them up
            placed = self._place(chunk, self._writer.staged, self._state)
            if placed.overflow is not None:
                raise TooManyBatches(placed.overflow)
        self._writer.load(placed.staging_rows, placed.rejected_rows, placed.ledger_rows)
        self._loading = placed

    def finish(self) -> None:
        """Write the chunk still loading, then close the last batch and write its ledger row."""
        self._settle()
        state = self._state
        closed_before = state.packer.closed_count
        if state.packer.finish() is not None:
            self._writer.write_chunk([], [], self._ledger_rows(state.packer, closed_before, state.open_ids))

    def _settle(self) -> bool:
        """Commit the chunk being written; False if the database refused it as it was and it was
        placed against what earlier chunks staged and written again."""
        placed, self._loading = self._loading, None
        if placed is None:
            return True
        try:
            self._writer.settle()
        except Exception as err:
            if not _is_integrity_error(err):
                raise
            placed = self._place(placed.chunk, self._writer.staged, self._state)
            if placed.overflow is not None:
                raise TooManyBatches(placed.overflow) from None
            self._writer.write_chunk(placed.staging_rows, placed.rejected_rows, placed.ledger_rows)
            self._written(placed)
            return False
        self._written(placed)
        return True

    def _written(self, placed: _Placed) -> None:
        self._state = placed.state
        self.rejected += placed.rejected

    def _place(self, chunk: _Chunk, staged: StagedLookup, base: _State) -> _Placed:
        screened = self._screen(
            chunk.columns, chunk.rows, chunk.first_source_row, staged, self._suppressed, self._default_zone
        )
        packer = base.packer.copy()
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
        position = base.staged
        if runs and max(number for number, _ in runs) > self._max_batches:
            fit = sum(n for number, n in runs if number <= self._max_batches)
            return _Placed(chunk, base, overflow=position + fit)
        open_ids = {number: list(ids) for number, ids in base.open_ids.items()}
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
        rejected_rows = [
            (self._campaign_id, r.source_row, r.recipient_id, r.email, r.reason, details.get(r.source_row))
            for r in screened.rejected
        ]
        ledger_rows = self._ledger_rows(packer, base.packer.closed_count, open_ids)
        return _Placed(
            chunk,
            _State(packer, open_ids, position),
            len(screened.rejected),
            staging_rows,
            rejected_rows,
            ledger_rows,
        )

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
