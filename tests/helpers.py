"""Helpers shared by the tests: reference implementations and shortcuts that production code
does not need (it plans from a stream and suppresses from events), kept out of ``include/``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from include.campaign.audience import REQUIRED_COLUMNS, VARIABLES_COLUMN, Recipient, Rejection, screen_rows
from include.campaign.planner import Batch, BatchPacker, PlanCaps
from include.campaign.suppressions import active_among
from include.warehouse import SUPPRESSIONS_TABLE, normalized_email_sql, transaction, utc_now_text

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook


# -- planning without a stream ---------------------------------------------------------------


def plan_batches(
    recipient_count: int, caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
) -> list[Batch]:
    """The batches for a known number of recipients (the planner's packing, without a stream)."""
    packer = BatchPacker(caps, start_at, occupied)
    packer.take(recipient_count)
    packer.finish()
    return packer.batches


@dataclass
class ScreenedChunk:
    accepted: list[Recipient] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def screen_chunk(
    rows: list[dict[str, Any]],
    first_source_row: int,
    known_emails: set[str],
    known_ids: set[str],
) -> ScreenedChunk:
    """``audience.screen_rows`` for rows as dicts (a DataFrame's records), with the staged keys
    given (``known_emails``/``known_ids``, not changed)."""
    # Extra columns are the first row's, as in a table; a variables value is read from every row.
    columns = list(rows[0]) if rows else list(REQUIRED_COLUMNS)
    if VARIABLES_COLUMN not in columns:
        columns.append(VARIABLES_COLUMN)

    def staged(emails: set[str], ids: set[str]) -> tuple[set[str], set[str]]:
        return emails & known_emails, ids & known_ids

    screened = screen_rows(columns, [[r.get(c) for c in columns] for r in rows], first_source_row, staged)
    return ScreenedChunk(
        [Recipient(i, e, json.loads(v)) for i, e, v, _ in screened.accepted],
        screened.rejected,
    )


# -- the suppression list by hand (the README gives operators the SQL) ------------------------


def suppress(hook: DbApiHook, email: str, reason: str = "manual", note: str | None = None) -> bool:
    """Suppress an address as an operator's INSERT would; False if it already is."""
    dialect, p = hook.dialect_name, hook.placeholder
    with transaction(hook) as cur:
        if active_among(cur, dialect, p, {email.strip().lower()}):
            return False
        cur.execute(
            f"INSERT INTO {SUPPRESSIONS_TABLE} (email, reason, note) VALUES ({p}, {p}, {p})",
            (email, reason, note),
        )
        return True


def unsuppress(hook: DbApiHook, email: str, note: str) -> bool:
    """Lift an address's suppression as the README's UPDATE does, keeping the row for an audit."""
    dialect, p = hook.dialect_name, hook.placeholder
    with transaction(hook) as cur:
        cur.execute(
            f"UPDATE {SUPPRESSIONS_TABLE} SET removed_at = {p}, removal_note = {p} "
            f"WHERE removed_at IS NULL "
            f"AND {normalized_email_sql(dialect)} = {normalized_email_sql(dialect, p)}",
            (utc_now_text(), note, email),
        )
        return cur.rowcount > 0
