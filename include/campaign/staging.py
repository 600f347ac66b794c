"""Writing a new plan: the staged audience, its rejections and the planned ledger.

One connection for the whole plan and one transaction per chunk: a chunk is
staged, rejected and its closed batches written together, or not at all. The
chunk's rows go in as one bulk load (COPY on PostgreSQL), and the look-up of
what earlier chunks staged is one statement per key column, against the
staging table's unique indexes, not a set held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

from include.campaign.ledger import FIELDS as LEDGER_FIELDS
from include.warehouse import LEDGER_TABLE, REJECTED_TABLE, STAGING_TABLE, bulk_insert, in_values

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

STAGING_FIELDS = ("campaign_id", "batch_number", "position", "recipient_id", "email", "variables")
REJECTED_FIELDS = ("campaign_id", "source_row", "recipient_id", "email", "reason")


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
            self._conn.rollback()  # nothing if the last chunk was committed
        finally:
            self._conn.close()

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
        bulk_insert(self._conn, self._placeholder, LEDGER_TABLE, LEDGER_FIELDS, planned)
        self._conn.commit()
