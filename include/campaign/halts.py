"""The halt signal: after a 402 or 401, no other batch of the run calls the API.

Mapped batches run in parallel, so the signal lives where all of them can see
it, in the warehouse next to the ledger. It is scoped to the run: a later
run (after the plan was upgraded or the key fixed) is not halted, and neither is
the halted run once it is cleared as a whole (its ``plan`` lifts the halt), while
retries and clears of single batches inside the halted run still are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from include.warehouse import HALTS_TABLE, fetch_dicts, insert_once, utc_now_text

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook


def halt(hook: DbApiHook, campaign_id: str, run_id: str, batch_number: int, reason: str) -> bool:
    """Halt the run. True for the batch whose error raised the halt, False if another batch did first."""
    row = {
        "campaign_id": campaign_id,
        "run_id": run_id,
        "batch_number": batch_number,
        "reason": reason[:2000],
        "halted_at": utc_now_text(),
    }
    return insert_once(hook, HALTS_TABLE, row, key=("campaign_id", "run_id"))


def current(hook: DbApiHook, campaign_id: str, run_id: str) -> dict | None:
    """The run's halt (batch_number, reason, halted_at), or None."""
    p = hook.placeholder
    found = fetch_dicts(
        hook,
        f"SELECT batch_number, reason, halted_at FROM {HALTS_TABLE} WHERE campaign_id = {p} AND run_id = {p}",
        (campaign_id, run_id),
    )
    return found[0] if found else None


def lift(hook: DbApiHook, campaign_id: str, run_id: str) -> bool:
    """Lift the run's halt: the whole run was cleared, so the operator has fixed the cause. True if
    there was one (its reason stays in the halted batches' ledger rows and in the alert)."""
    if current(hook, campaign_id, run_id) is None:
        return False
    p = hook.placeholder
    hook.run(
        f"DELETE FROM {HALTS_TABLE} WHERE campaign_id = {p} AND run_id = {p}",
        parameters=(campaign_id, run_id),
    )
    return True
