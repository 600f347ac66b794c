"""A synthetic recipients table for the demo and the tests.

Written through the warehouse connection's own hook, so the same seed works on
any warehouse common-sql supports. ``bad_every`` sprinkles in the rows a real
export contains (a malformed address, a repeated address, a repeated id, a
missing email) so the screening is exercised, not just the happy path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def create_recipients_table(hook: DbApiHook, table: str, count: int, bad_every: int = 0) -> None:
    """(Re)create ``table`` with recipient_id, email, first_name and a JSON variables column."""
    quoted = quote_table(table)
    hook.run(
        [
            f"DROP TABLE IF EXISTS {quoted}",
            f"CREATE TABLE {quoted} (recipient_id INTEGER, email TEXT, first_name TEXT, variables TEXT)",
        ]
    )
    hook.insert_rows(
        table,
        sample_rows(count, bad_every),
        target_fields=["recipient_id", "email", "first_name", "variables"],
        commit_every=5000,
        executemany=True,
    )
