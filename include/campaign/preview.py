"""What a plan looks like to the operator who decides on it: the schedule per day and hour, and
the rejected rows by reason. A dry run logs it; the campaign page shows the same figures."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from include.campaign.windows import DEFAULT_TIMEZONE, zone
from include.warehouse import (
    LEDGER_TABLE,
    REJECTED_TABLE,
    STAGING_TABLE,
    fetch_dicts,
    parse_utc,
    table_columns,
)

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

log = logging.getLogger(__name__)


def recipients_by(batches: Iterable[Mapping[str, Any]], width: int) -> dict[str, int]:
    """Recipients per ``send_at`` prefix in time order: width 10 is the UTC day, 13 the hour."""
    totals: Counter[str] = Counter()
    for batch in batches:
        totals[batch["send_at"][:width]] += batch["recipient_count"]
    return dict(sorted(totals.items()))


def local_hours(
    hook: DbApiHook, campaign_id: str, default_zone: str = DEFAULT_TIMEZONE
) -> list[dict[str, Any]]:
    """Recipients by the hour their own clock shows at their batch's send_at: one row per
    ``(local hour "09:00", zone, ledger status)`` with its ``recipients``. One grouped read of the
    staged audience (rows: batches times zones), so it costs the same for any list size."""
    p = hook.placeholder
    # A warehouse staged before zones were (the Campaigns view reads, it never upgrades): no zone column.
    zoned = "timezone" in table_columns(hook, STAGING_TABLE)
    zone_column, grouped = ("s.timezone", ", s.timezone") if zoned else ("NULL", "")
    found = fetch_dicts(
        hook,
        f"SELECT l.send_at, {zone_column} AS timezone, l.status, COUNT(*) AS n FROM {STAGING_TABLE} s "
        f"JOIN {LEDGER_TABLE} l ON l.campaign_id = s.campaign_id AND l.batch_number = s.batch_number "
        f"WHERE s.campaign_id = {p} GROUP BY l.send_at{grouped}, l.status",
        (campaign_id,),
    )
    totals: Counter[tuple[str, str, str]] = Counter()
    for row in found:
        name = row["timezone"] or default_zone
        local = parse_utc(row["send_at"]).astimezone(zone(name))
        totals[(f"{local:%H}:00", name, row["status"])] += int(row["n"])
    return [
        {"local_hour": hour, "zone": name, "status": status, "recipients": n}
        for (hour, name, status), n in sorted(totals.items())
    ]


def by_local_hour(rows: Iterable[Mapping[str, Any]]) -> dict[str, Counter[str]]:
    """``local_hours`` as ``{local hour: {zone: recipients}}``, hours in order."""
    hours: dict[str, Counter[str]] = {}
    for row in rows:
        hours.setdefault(row["local_hour"], Counter())[row["zone"]] += row["recipients"]
    return dict(sorted(hours.items()))


def rejected_by_reason(hook: DbApiHook, campaign_id: str) -> dict[str, int]:
    found = fetch_dicts(
        hook,
        f"SELECT reason, COUNT(*) AS n FROM {REJECTED_TABLE} WHERE campaign_id = {hook.placeholder} "
        "GROUP BY reason ORDER BY COUNT(*) DESC, reason",
        (campaign_id,),
    )
    return {r["reason"]: int(r["n"]) for r in found}


def log_preview(
    hook: DbApiHook, campaign_id: str, batches: list[dict[str, Any]], default_zone: str = DEFAULT_TIMEZONE
) -> None:
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
        "Recipients per local hour (each recipient's own clock at the batch's send_at):",
        *(
            f"  {hour}  {sum(zones.values()):>9,}  "
            + ", ".join(f"{name} {n:,}" for name, n in sorted(zones.items()))
            for hour, zones in by_local_hour(local_hours(hook, campaign_id, default_zone)).items()
        ),
    ]
    rejected = rejected_by_reason(hook, campaign_id)
    lines.append(f"Rejected rows: {sum(rejected.values()):,}")
    lines += [f"  {reason}  {n:>9,}" for reason, n in rejected.items()]
    log.info("\n".join(lines))
