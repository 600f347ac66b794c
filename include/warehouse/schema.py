"""The project's own tables: their names, their portable DDL, and ``ensure_schema``, which creates
what is missing and upgrades what an earlier version made.

The DDL is the subset that SQLite and PostgreSQL both accept; timestamps are ISO-8601 UTC text,
which sorts and compares correctly in both.
"""

from __future__ import annotations

import re
from contextlib import closing
from typing import TYPE_CHECKING, Any

from include.warehouse.sql import table_columns

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

LEDGER_TABLE = "email_batch_ledger"
STAGING_TABLE = "email_campaign_recipients"
REJECTED_TABLE = "email_rejected_recipients"
HALTS_TABLE = "email_campaign_halts"
ALERTS_TABLE = "email_campaign_alerts"
EVENTS_TABLE = "email_events"
EVENTS_QUARANTINE_TABLE = "email_events_quarantine"
DELIVERIES_TABLE = "email_batch_deliveries"
CAMPAIGNS_TABLE = "email_campaigns"
SUPPRESSIONS_TABLE = "email_suppressions"
# In this order: campaign/suppressions.py unpacks them by name.
SUPPRESSION_REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")

# Delivery webhook events as received, one row per event. The contract numbers events within a
# batch and promises no more, so the key is (batch_id, event_id): two campaigns' events that share
# an event_id are two events. Tables made when the key was event_id alone are rekeyed by ensure_schema.
_EVENTS_COLUMNS = """(
        event_id TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        campaign_id TEXT,
        recipient TEXT NOT NULL,
        type TEXT NOT NULL,
        reason TEXT,
        occurred_at BIGINT NOT NULL,
        received_at TEXT NOT NULL,
        bounce_type TEXT,
        PRIMARY KEY (batch_id, event_id))"""
_EVENTS_INDEXES = (
    f"CREATE INDEX IF NOT EXISTS {EVENTS_TABLE}_by_batch ON {EVENTS_TABLE} (batch_id, recipient)",
    f"CREATE INDEX IF NOT EXISTS {EVENTS_TABLE}_by_type ON {EVENTS_TABLE} (type)",
)

# Beside the definition, not in it: how the campaign is steered while it runs. The run sending it,
# how long before its slot a batch goes, the bad-start thresholds the reconcile reads (a resume may
# change them), and why the status is what it is (a pause or a cancel, by whom, when).
_STEERING_COLUMNS = (
    ("sending_dag_id", "TEXT"),
    ("sending_run_id", "TEXT"),
    ("submit_ahead_minutes", "INTEGER"),
    ("max_complaint_rate", "REAL"),
    ("max_hard_bounce_rate", "REAL"),
    ("min_results_for_rates", "INTEGER"),
    ("status_reason", "TEXT"),
    # A transactional campaign (ignore_suppressions): its mails do not count under frequency caps.
    ("transactional", "INTEGER"),
)
_CAMPAIGN_STEERING = ",\n        ".join(f"{name} {kind}" for name, kind in _STEERING_COLUMNS)

_SCHEMA = (
    # One row per campaign: its definition as first planned (see campaign/definition.py) and a status.
    f"""CREATE TABLE IF NOT EXISTS {CAMPAIGNS_TABLE} (
        campaign_id TEXT PRIMARY KEY,
        dag_id TEXT NOT NULL,
        planned_by_run TEXT NOT NULL,
        definition TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        status TEXT NOT NULL,
        batches_by_status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        {_CAMPAIGN_STEERING})""",
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
        campaign_id TEXT NOT NULL,
        batch_number INTEGER NOT NULL,
        batch_id TEXT,
        idempotency_key TEXT NOT NULL,
        recipient_ids TEXT NOT NULL,
        recipient_count INTEGER NOT NULL,
        status TEXT NOT NULL,
        send_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        timezone TEXT,
        PRIMARY KEY (campaign_id, batch_number))""",
    # The staged audience: what each batch sends, read back by the batch's own task.
    # The primary key is what makes de-duplication hold across chunks; email first, so the same
    # index is also a recipient's mails in every campaign, the frequency cap's look-up
    # (campaign/frequency.py), and a plan's every row updates one index fewer.
    f"""CREATE TABLE IF NOT EXISTS {STAGING_TABLE} (
        campaign_id TEXT NOT NULL,
        batch_number INTEGER NOT NULL,
        position INTEGER NOT NULL,
        recipient_id TEXT NOT NULL,
        email TEXT NOT NULL,
        variables TEXT NOT NULL,
        source_row INTEGER,
        timezone TEXT,
        PRIMARY KEY (email, campaign_id),
        UNIQUE (campaign_id, recipient_id))""",
    f"""CREATE INDEX IF NOT EXISTS {STAGING_TABLE}_by_batch
        ON {STAGING_TABLE} (campaign_id, batch_number, position)""",
    f"""CREATE TABLE IF NOT EXISTS {REJECTED_TABLE} (
        campaign_id TEXT NOT NULL,
        source_row INTEGER NOT NULL,
        recipient_id TEXT,
        email TEXT,
        reason TEXT NOT NULL,
        detail TEXT,
        PRIMARY KEY (campaign_id, source_row))""",
    # One row per halted run: the signal every batch of that run checks before calling the API.
    f"""CREATE TABLE IF NOT EXISTS {HALTS_TABLE} (
        campaign_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        batch_number INTEGER NOT NULL,
        reason TEXT NOT NULL,
        halted_at TEXT NOT NULL,
        PRIMARY KEY (campaign_id, run_id))""",
    # Alerts that go out once per run (a batch giving up on server errors): the key decides.
    f"""CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} (
        campaign_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        batch_number INTEGER NOT NULL,
        sent_at TEXT NOT NULL,
        PRIMARY KEY (campaign_id, run_id, kind))""",
    f"CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} {_EVENTS_COLUMNS}",
    *_EVENTS_INDEXES,
    # Webhook events that failed validation, kept for a person to look at (never reconciled):
    # raw_event is the event as JSON, ASCII-escaped and cut to 4 kB; the ids as sent, cut short.
    f"""CREATE TABLE IF NOT EXISTS {EVENTS_QUARANTINE_TABLE} (
        event_id TEXT,
        batch_id TEXT,
        reason TEXT NOT NULL,
        raw_event TEXT NOT NULL,
        received_at TEXT NOT NULL)""",
    # Per-batch delivery counts, recomputed from email_events by the reconcile task.
    f"""CREATE TABLE IF NOT EXISTS {DELIVERIES_TABLE} (
        campaign_id TEXT NOT NULL,
        batch_number INTEGER NOT NULL,
        batch_id TEXT NOT NULL,
        delivered INTEGER NOT NULL,
        bounced INTEGER NOT NULL,
        deferred INTEGER NOT NULL,
        complained INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        unsubscribed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (campaign_id, batch_number))""",
)

# Columns added after their table was first released: CREATE TABLE IF NOT EXISTS leaves an
# existing table as it was, so ensure_schema adds these to tables an earlier version created.
_ADDED_COLUMNS = (
    (STAGING_TABLE, "source_row", "INTEGER"),
    (STAGING_TABLE, "timezone", "TEXT"),
    (LEDGER_TABLE, "timezone", "TEXT"),
    (REJECTED_TABLE, "detail", "TEXT"),
    (EVENTS_TABLE, "bounce_type", "TEXT"),
    (DELIVERIES_TABLE, "unsubscribed", "INTEGER NOT NULL DEFAULT 0"),
    *((CAMPAIGNS_TABLE, name, kind) for name, kind in _STEERING_COLUMNS),
)

# The time of day as the other tables write it (utc_text), as a column default, so that a plain
# INSERT by hand needs no timestamp.
_NOW_TEXT = {
    "sqlite": "(strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
    "postgresql": """(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))""",
}


def normalized_email_sql(dialect: str, column: str = "email") -> str:
    """An email column as the planner normalises addresses (trimmed, lower-case), in SQL: how a
    suppression typed by hand matches, and the expression its index is built on."""
    if dialect == "postgresql":
        return f"lower(btrim({column}, E' \\t\\r\\n'))"
    return f"lower(trim({column}, ' ' || char(9) || char(13) || char(10)))"


def _suppressions_schema(dialect: str) -> tuple[str, ...]:
    """One active row per address (a removal is recorded in removed_at, never deleted, so an
    audit sees it; a later suppression of the same address is a new row). Every column but
    the email has a default, so an operator's ``INSERT ... (email, reason)`` is enough."""
    now = _NOW_TEXT.get(dialect, "CURRENT_TIMESTAMP")
    email = normalized_email_sql(dialect)
    reasons = ", ".join(f"'{r}'" for r in SUPPRESSION_REASONS)
    return (
        f"""CREATE TABLE IF NOT EXISTS {SUPPRESSIONS_TABLE} (
            email TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '{SUPPRESSION_REASONS[-1]}' CHECK (reason IN ({reasons})),
            campaign_id TEXT,
            event_id TEXT,
            note TEXT,
            suppressed_at TEXT NOT NULL DEFAULT {now},
            removed_at TEXT,
            removal_note TEXT)""",
        f"""CREATE UNIQUE INDEX IF NOT EXISTS {SUPPRESSIONS_TABLE}_active
            ON {SUPPRESSIONS_TABLE} ({email}) WHERE removed_at IS NULL""",
        f"CREATE INDEX IF NOT EXISTS {SUPPRESSIONS_TABLE}_by_email ON {SUPPRESSIONS_TABLE} ({email})",
    )


# Every table ensure_schema creates, as its DDL names them: the campaign's settings refuse any of
# them as an audience, and a table added above is refused without a change there.
OWN_TABLES = frozenset(
    name.lower()
    for statement in (*_SCHEMA, *_suppressions_schema("sqlite"))
    for name in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
)


# Any constant: the PostgreSQL advisory lock that serialises schema changes between processes.
_SCHEMA_LOCK = 7_351_042_118


def ensure_schema(hook: DbApiHook) -> None:
    """Create the project's tables if missing and add columns that later versions added.
    Idempotent, and safe when several processes (a plan, the webhook receiver's requests)
    do it at once."""
    dialect = hook.dialect_name
    statements = [*_SCHEMA, *_suppressions_schema(dialect)]
    if dialect == "postgresql":
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's catalog
        # (a pg_type unique violation): one process at a time, each statement committed
        # before the lock is released.
        hook.run(
            [
                f"SELECT pg_advisory_lock({_SCHEMA_LOCK})",
                *statements,
                *_missing_columns(hook),
                _REKEY_EVENTS_POSTGRES,
                _STAGING_BY_EMAIL_POSTGRES,
            ],
            autocommit=True,
        )
        hook.run(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK})", autocommit=True)
        return
    if dialect == "sqlite":
        # WAL lets the planner stream the recipients table while it writes the staging table.
        hook.run("PRAGMA journal_mode=WAL", autocommit=True)
    hook.run(statements)
    for statement in _missing_columns(hook):
        try:
            hook.run(statement)
        except Exception as err:  # another process added it since we looked
            if "duplicate column" not in str(err).lower():
                raise
    if dialect == "sqlite":
        _rekey_events_sqlite(hook)
        with closing(hook.get_conn()) as conn:
            key = _sqlite_key(conn.cursor(), STAGING_TABLE)
        if key[:1] != ["email"]:
            hook.run(_STAGING_BY_EMAIL)


# An email_campaign_recipients made before its key began with email (it was (campaign_id, email))
# keeps its rows and key, and gets the frequency cap's look-up as an index of its own.
_STAGING_BY_EMAIL = f"CREATE INDEX IF NOT EXISTS {STAGING_TABLE}_by_email ON {STAGING_TABLE} (email)"
_STAGING_BY_EMAIL_POSTGRES = f"""DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = '{STAGING_TABLE}'::regclass AND i.indisprimary AND a.attname = 'email'
    ) THEN
        {_STAGING_BY_EMAIL};
    END IF;
END $$"""

# An email_events made before its key was (batch_id, event_id) has the key event_id alone.
# PostgreSQL swaps the constraint in place (the rows are unique under either key).
_REKEY_EVENTS_POSTGRES = f"""DO $$
DECLARE old_key name;
BEGIN
    SELECT c.conname INTO old_key
    FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
    WHERE c.conrelid = '{EVENTS_TABLE}'::regclass AND c.contype = 'p'
      AND cardinality(c.conkey) = 1 AND a.attname = 'event_id';
    IF old_key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE {EVENTS_TABLE} DROP CONSTRAINT %I, '
            'ADD CONSTRAINT %I PRIMARY KEY (batch_id, event_id)', old_key, old_key);
    END IF;
END $$"""


def _sqlite_key(cur: Any, table: str) -> list[str]:
    """The primary key's columns, in key order (PRAGMA table_info's pk is the position in it)."""
    rows = cur.execute(f"PRAGMA table_info({table})").fetchall()
    return [row[1] for row in sorted(rows, key=lambda row: row[5]) if row[5]]


def _rekey_events_sqlite(hook: DbApiHook) -> None:
    """SQLite cannot change a primary key: copy an old email_events into a table with the new
    key and put it in its place, all in one transaction (SQLite's DDL is transactional)."""
    with closing(hook.get_conn()) as conn:
        if _sqlite_key(conn.cursor(), EVENTS_TABLE) != ["event_id"]:
            return
        conn.isolation_level = None  # the transaction below is explicit
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")  # one writer at a time; look again under the lock
        try:
            if _sqlite_key(cur, EVENTS_TABLE) == ["event_id"]:
                columns = ", ".join(row[1] for row in cur.execute(f"PRAGMA table_info({EVENTS_TABLE})"))
                cur.execute(f"CREATE TABLE {EVENTS_TABLE}_rekeyed {_EVENTS_COLUMNS}")
                cur.execute(
                    f"INSERT INTO {EVENTS_TABLE}_rekeyed ({columns}) SELECT {columns} FROM {EVENTS_TABLE}"
                )
                cur.execute(f"DROP TABLE {EVENTS_TABLE}")  # and its indexes, made again below
                cur.execute(f"ALTER TABLE {EVENTS_TABLE}_rekeyed RENAME TO {EVENTS_TABLE}")
                for statement in _EVENTS_INDEXES:
                    cur.execute(statement)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")


def _missing_columns(hook: DbApiHook) -> list[str]:
    """ALTER TABLE statements for ``_ADDED_COLUMNS`` that the existing tables lack."""
    if hook.dialect_name != "postgresql":
        have = {table: set(table_columns(hook, table)) for table, _, _ in _ADDED_COLUMNS}
        return [
            f"ALTER TABLE {table} ADD COLUMN {column} {kind}"
            for table, column, kind in _ADDED_COLUMNS
            if column not in have[table]
        ]
    return [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"
        for table, column, kind in _ADDED_COLUMNS
    ]
