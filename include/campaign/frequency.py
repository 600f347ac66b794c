"""The frequency cap: no recipient gets more than ``max_mails_per_recipient`` marketing mails within
``frequency_days``, whichever campaigns send them.

The history is already in the warehouse: every campaign's staged audience and its ledger. A
mail counts if another campaign's batch holds the address with a ``send_at`` in the
``frequency_days`` before this campaign's slot for the recipient, and that batch is at the
provider (scheduled or delivered) or still to be sent by a finished plan (the same batches
that hold room under the caps: ``ledger._held_by_others_sql``). Cancelled batches, dry runs,
unfinished plans and transactional campaigns (``ignore_suppressions``) do not count.

The plan asks once per chunk, for the chunk's accepted addresses, with one set-based query
on the staging table's email index; the slot is known only as each recipient is placed, so
the count is made then (``staging.ChunkedPlan``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from include.campaign import ledger
from include.warehouse import CAMPAIGNS_TABLE, LEDGER_TABLE, STAGING_TABLE, in_values, parse_utc, utc_text

FREQUENCY_CAPPED = "frequency_capped"
# Ledger statuses of batches that mailed (or will mail) their recipients.
MAILED = (ledger.SCHEDULED, ledger.DELIVERED)


@dataclass(frozen=True)
class FrequencyCap:
    max_mails: int
    days: int

    @property
    def period(self) -> timedelta:
        return timedelta(days=self.days)


class History:
    """Other campaigns' mails to a chunk's addresses: ``(send_at, campaign_id)``, by email, sorted."""

    def __init__(self, mails: dict[str, list[tuple[datetime, str]]], cap: FrequencyCap) -> None:
        self._mails = {email: sorted(found) for email, found in mails.items()}
        self._cap = cap

    def capped_by(self, email: str, slot: datetime) -> list[str] | None:
        """The campaigns whose mails fill the cap for ``email`` at ``slot`` (mails with a send_at
        from ``frequency_days`` before the slot up to it), or None if the recipient may be mailed."""
        found = self._mails.get(email)
        if not found:
            return None
        lo = bisect_left(found, (slot - self._cap.period, ""))
        hi = bisect_right(found, (slot, "\U0010ffff"))
        if hi - lo < self._cap.max_mails:
            return None
        return sorted({campaign for _, campaign in found[lo:hi]})


def detail(campaigns: list[str], cap: FrequencyCap) -> str:
    """The rejection's detail: the campaigns that count."""
    return f"{cap.max_mails}+ mails in {cap.days} days from {', '.join(campaigns)}"


def history(
    conn: Any,
    dialect: str,
    placeholder: str,
    campaign_id: str,
    emails: set[str],
    since: datetime,
    cap: FrequencyCap,
) -> History:
    """Other campaigns' mails to ``emails`` with a send_at from ``since`` on, on ``conn``."""
    if not emails:
        return History({}, cap)
    p = placeholder
    held, held_parameters = ledger._held_by_others_sql(p, campaign_id)
    mailed = ", ".join([p] * len(MAILED))
    condition, email_parameters = in_values(dialect, p, "s.email", emails)
    sql = (
        f"SELECT s.email, l.send_at, s.campaign_id FROM {STAGING_TABLE} s "
        f"JOIN {LEDGER_TABLE} l ON l.campaign_id = s.campaign_id AND l.batch_number = s.batch_number "
        f"LEFT JOIN {CAMPAIGNS_TABLE} c ON c.campaign_id = s.campaign_id "
        f"WHERE {condition} AND s.campaign_id <> {p} AND l.send_at >= {p} "
        f"AND COALESCE(c.transactional, 0) = 0 AND (l.status IN ({mailed}) OR ({held}))"
    )
    parameters = [*email_parameters, campaign_id, utc_text(since), *MAILED, *held_parameters]
    mails: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    with closing(conn.cursor()) as cur:
        cur.execute(sql, parameters)
        for email, send_at, other in cur.fetchall():
            mails[email].append((parse_utc(send_at), other))
    return History(mails, cap)
