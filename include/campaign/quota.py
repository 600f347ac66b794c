"""The quota pre-flight: does the campaign fit in what is left of the month's quota?

The plan asks MigoSMTP for the month's limit and use before any batch is sent.
What is left for this campaign is that, less what other campaigns already
hold: their batches not yet at the provider (planned, failed or halted; dry
runs and unfinished plans aside), which will take quota when they are sent or
resumed. This is the rule the caps use (``ledger.held_by_others_sql``). It errs on the safe side:
a batch that will only be resumed after the reset still holds quota now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.campaign.ledger import held_by_others_sql
from include.warehouse import CAMPAIGNS_TABLE, LEDGER_TABLE, fetch_dicts

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook


class QuotaCheckFailed(RuntimeError):
    """The quota could not be read (server error, timeout, a malformed answer): nothing was sent."""


@dataclass(frozen=True)
class QuotaProjection:
    """What the campaign needs against what the month has left for it, in recipients."""

    needed: int
    limit: int
    used: int
    held: int

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used - self.held)

    @property
    def fits(self) -> bool:
        return self.needed <= self.left

    def describe(self) -> str:
        return (
            f"needs {self.needed:,} sends; {self.left:,} left this month "
            f"(limit {self.limit:,}, used {self.used:,}, held by other campaigns' unsent batches "
            f"{self.held:,})"
        )


def held_by_other_campaigns(hook: DbApiHook, campaign_id: str) -> int:
    """Recipients in other campaigns' batches that are not at the provider yet (see
    ``ledger.held_by_others_sql``)."""
    held, parameters = held_by_others_sql(hook.placeholder, campaign_id)
    found = fetch_dicts(
        hook,
        f"SELECT COALESCE(SUM(l.recipient_count), 0) AS n FROM {LEDGER_TABLE} l "
        f"LEFT JOIN {CAMPAIGNS_TABLE} c ON c.campaign_id = l.campaign_id WHERE {held}",
        parameters,
    )
    return int(found[0]["n"])


def split_to_fit(batches: Sequence[dict[str, Any]], left: int) -> tuple[list[dict], list[dict]]:
    """The batches that fit in ``left`` recipients, in order, and the rest (from the first that
    does not fit on, so the campaign goes out in its planned order)."""
    total = 0
    for i, batch in enumerate(batches):
        total += batch["recipient_count"]
        if total > left:
            return list(batches[:i]), list(batches[i:])
    return list(batches), []
