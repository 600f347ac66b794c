"""A synthetic recipients table for the demo and the tests.

Written through the warehouse connection's own hook, so the same seed works on
any warehouse common-sql supports. ``bad_every`` sprinkles in the rows a real
export contains (a malformed address, a repeated address, a repeated id, a
missing email) so the screening is exercised, not just the happy path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from include.warehouse import quote_table

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

BAD_ROW_KINDS = ("invalid_email", "duplicate_email", "duplicate_recipient_id", "missing_email")


def sample_rows(count: int, bad_every: int = 0) -> Iterator[tuple]:
    """``count`` valid recipients, plus one bad row after every ``bad_every`` valid ones."""
    bad = 0
    for n in range(1, count + 1):
        yield (n, f"user{n}@example.com", "Ada" if n % 2 else "Grace", json.dumps({"segment": f"s{n % 3}"}))
        if bad_every and n % bad_every == 0:
            kind = BAD_ROW_KINDS[bad % len(BAD_ROW_KINDS)]
            bad += 1
            rid = 10_000_000 + bad
            yield {
                "invalid_email": (rid, f"user{n}-at-example.com", None, None),
                "duplicate_email": (rid, f"USER{n}@Example.com", None, None),
                "duplicate_recipient_id": (n, f"other{n}@example.com", None, None),
                "missing_email": (rid, None, None, None),
            }[kind]


def create_recipients_table(
    hook: DbApiHook, table: str, count: int, bad_every: int = 0, zones: Sequence[str | None] = ()
) -> None:
    """(Re)create ``table`` with recipient_id, email, first_name and a JSON variables column; with
    ``zones``, also a ``timezone`` column: row i written (from 0, bad rows counted) is in
    ``zones[i % len(zones)]``."""
    quoted = quote_table(table)
    columns = "recipient_id INTEGER, email TEXT, first_name TEXT, variables TEXT"
    columns += ", timezone TEXT" if zones else ""
    hook.run([f"DROP TABLE IF EXISTS {quoted}", f"CREATE TABLE {quoted} ({columns})"])
    rows = sample_rows(count, bad_every)
    fields = ["recipient_id", "email", "first_name", "variables"]
    if zones:
        rows = ((*row, zones[(i % len(zones))]) for i, row in enumerate(rows))
        fields.append("timezone")
    hook.insert_rows(table, rows, target_fields=fields, commit_every=5000, executemany=True)
