"""What a plan looks like to the operator who decides on it: the schedule per day and hour, and
the rejected rows by reason. A dry run logs it; the campaign page shows the same figures."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from include.warehouse import REJECTED_TABLE, fetch_dicts

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

log = logging.getLogger(__name__)


def recipients_by(batches: Iterable[Mapping[str, Any]], width: int) -> dict[str, int]:
    """Recipients per ``send_at`` prefix in time order: width 10 is the UTC day, 13 the hour."""
    totals: Counter[str] = Counter()
    for batch in batches:
        totals[batch["send_at"][:width]] += batch["recipient_count"]
    return dict(sorted(totals.items()))


def rejected_by_reason(hook: DbApiHook, campaign_id: str) -> dict[str, int]:
    found = fetch_dicts(
        hook,
        f"SELECT reason, COUNT(*) AS n FROM {REJECTED_TABLE} WHERE campaign_id = {hook.placeholder} "
        "GROUP BY reason ORDER BY COUNT(*) DESC, reason",
        (campaign_id,),
    )
    return {r["reason"]: int(r["n"]) for r in found}


def log_preview(hook: DbApiHook, campaign_id: str, batches: list[dict[str, Any]]) -> None:
    """The dry run's preview, in the task log."""
    if not batches:
        return
    lines = [
        f"Dry run of campaign {campaign_id}: {len(batches)} batches, "
        f"{sum(b['recipient_count'] for b in batches):,} recipients, "
        f"first send_at {batches[0]['send_at']}, last send_at {batches[-1]['send_at']}",
        "Recipients per UTC day:",
        *(f"  {day}  {n:>9,}" for day, n in recipients_by(batches, 10).items()),
        "Recipients per UTC hour:",
        *(f"  {hour}:00Z  {n:>9,}" for hour, n in recipients_by(batches, 13).items()),
    ]
    rejected = rejected_by_reason(hook, campaign_id)
    lines.append(f"Rejected rows: {sum(rejected.values()):,}")
    lines += [f"  {reason}  {n:>9,}" for reason, n in rejected.items()]
    log.info("\n".join(lines))
