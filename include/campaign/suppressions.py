"""The suppression list, ``email_suppressions``: addresses no campaign mails again.

Mailing an address that bounced hard, complained or unsubscribed hurts the
sender's reputation, and the law requires opt-outs to be honoured. The events
that say so arrive by webhook; the reconcile turns them into suppressions
(:func:`update_from_events`). Planning rejects a suppressed address with the
reason ``suppressed``; a batch that has never been attempted checks again just
before its first request and drops whoever was suppressed since it was planned
(:func:`drop_from_unsent_batch`, reason ``suppressed_after_plan``). A batch that
has been attempted is never changed: its resend must be byte-identical, or its
idempotency key would not protect it.

Operators add and remove rows by hand (see the README): a removal sets
``removed_at``, so the history stays for an audit, and an address has at most
one active row. Addresses match trimmed and case-insensitively
(``warehouse.normalized_email_sql``) however they were typed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from include.campaign import ledger
from include.warehouse import (
    EVENTS_TABLE,
    REJECTED_TABLE,
    STAGING_TABLE,
    SUPPRESSION_REASONS,
    SUPPRESSIONS_TABLE,
    in_values,
    normalized_email_sql,
    transaction,
    utc_now_text,
)

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

SUPPRESSED, SUPPRESSED_AFTER_PLAN = "suppressed", "suppressed_after_plan"


# The events that suppress, and the reason each gives; update_from_events' SQL is built from these.
# The reasons are the table's (its CHECK constraint lists them); manual is an operator's INSERT.
HARD_BOUNCE, COMPLAINT, UNSUBSCRIBE, MANUAL = SUPPRESSION_REASONS
ALWAYS_SUPPRESS = {"complained": COMPLAINT, "unsubscribed": UNSUBSCRIBE}
# HARD_BOUNCE: a "bounced" event whose bounce_type is "hard"; a soft or unspecified bounce never suppresses.


def _active(dialect: str) -> str:
    """The suppression row's address (alias ``x``), normalised."""
    return normalized_email_sql(dialect, "x.email")


def flag_sql(dialect: str, email_column: str) -> str:
    """A SQL expression: 1 if the (normalised) address in ``email_column`` is suppressed now, else 0."""
    return (
        f"CASE WHEN EXISTS (SELECT 1 FROM {SUPPRESSIONS_TABLE} x "
        f"WHERE x.removed_at IS NULL AND {_active(dialect)} = {email_column}) THEN 1 ELSE 0 END"
    )


def active_among(cursor: Any, dialect: str, placeholder: str, emails: set[str]) -> set[str]:
    """Which of these normalised addresses are suppressed now (one statement)."""
    if not emails:
        return set()
    normalized = _active(dialect)
    condition, parameters = in_values(dialect, placeholder, normalized, emails)
    cursor.execute(
        f"SELECT {normalized} FROM {SUPPRESSIONS_TABLE} x WHERE x.removed_at IS NULL AND {condition}",
        parameters,
    )
    return {row[0] for row in cursor.fetchall()}


def update_from_events(hook: DbApiHook) -> int:
    """Suppress every address with a suppressing event that is not suppressed yet; returns how many.

    The first such event per address names the reason and the campaign. Any later event
    (a ``delivered`` after an ``unsubscribed``) does not lift it; only an operator does,
    and an event received before that removal does not bring it back.
    """
    dialect, p = hook.dialect_name, hook.placeholder
    recipient = normalized_email_sql(dialect, "e.recipient")
    cases = " ".join(f"WHEN '{event}' THEN '{reason}'" for event, reason in ALWAYS_SUPPRESS.items())
    always = ", ".join(f"'{event}'" for event in ALWAYS_SUPPRESS)
    sql = f"""
        INSERT INTO {SUPPRESSIONS_TABLE} (email, reason, campaign_id, event_id, suppressed_at)
        SELECT email, reason, campaign_id, event_id, {p} FROM (
            SELECT {recipient} AS email,
                CASE e.type {cases} ELSE '{HARD_BOUNCE}' END AS reason,
                e.campaign_id, e.event_id,
                ROW_NUMBER() OVER (
                    PARTITION BY {recipient} ORDER BY e.occurred_at, e.event_id, e.batch_id
                ) AS nth
            FROM {EVENTS_TABLE} e
            WHERE (e.type IN ({always}) OR (e.type = 'bounced' AND e.bounce_type = 'hard'))
              AND NOT EXISTS (
                SELECT 1 FROM {SUPPRESSIONS_TABLE} x
                WHERE {_active(dialect)} = {recipient}
                  AND (x.removed_at IS NULL OR x.removed_at >= e.received_at))
        ) first_event
        WHERE nth = 1
    """
    with transaction(hook) as cur:
        cur.execute(sql, (utc_now_text(),))
        return max(cur.rowcount, 0)


def drop_from_unsent_batch(hook: DbApiHook, campaign_id: str, batch_number: int) -> int:
    """Take the recipients suppressed since planning out of a batch never attempted; returns how many.

    In one transaction: the staged rows go, each becomes a rejected row (``suppressed_after_plan``)
    and the ledger's count and ids shrink, so ``send_batch``'s staged-vs-ledger check still holds.
    The ledger row is only changed while ``attempts`` is 0; otherwise nothing is.
    """
    dialect, p = hook.dialect_name, hook.placeholder
    with transaction(hook) as cur:
        cur.execute(
            f"SELECT s.recipient_id, s.email, s.source_row, s.position FROM {STAGING_TABLE} s "
            f"WHERE s.campaign_id = {p} AND s.batch_number = {p} AND EXISTS ("
            f"SELECT 1 FROM {SUPPRESSIONS_TABLE} x "
            f"WHERE x.removed_at IS NULL AND {_active(dialect)} = s.email)",
            (campaign_id, batch_number),
        )
        found = cur.fetchall()
        if not found:
            return 0
        recipient_ids = ledger.unattempted_recipient_ids(cur, p, campaign_id, batch_number)
        if recipient_ids is None:
            return 0
        dropped = {recipient_id for recipient_id, *_ in found}
        remaining = [i for i in recipient_ids if i not in dropped]
        condition, ids = in_values(dialect, p, "recipient_id", dropped)
        cur.execute(
            f"DELETE FROM {STAGING_TABLE} WHERE campaign_id = {p} AND batch_number = {p} AND {condition}",
            (campaign_id, batch_number, *ids),
        )
        # Rows staged before source_row was recorded have none: their position, negated, keeps
        # the rejected table's key unique without claiming a row number.
        cur.executemany(
            f"INSERT INTO {REJECTED_TABLE} (campaign_id, source_row, recipient_id, email, reason) "
            f"VALUES ({p}, {p}, {p}, {p}, {p})",
            [
                (
                    campaign_id,
                    -position if source_row is None else source_row,
                    recipient_id,
                    email,
                    SUPPRESSED_AFTER_PLAN,
                )
                for recipient_id, email, source_row, position in found
            ],
        )
        if not ledger.shrink_unattempted(cur, p, campaign_id, batch_number, remaining):
            # attempted meanwhile: roll the whole drop back
            raise RuntimeError(f"batch {batch_number} of {campaign_id!r} was attempted while being checked")
        return len(found)
