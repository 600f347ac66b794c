"""The trigger a waiting batch defers to: it wakes the batch at its submit time, or ends it at once
(skipped) when its campaign is cancelled; while the campaign is paused it keeps waiting, past the
submit time too.

It runs in the triggerer, beside every other waiting batch. What it asks the warehouse (one
campaign's status) is shared by all the batches of that campaign in the triggerer process and
asked at most once per ``poll_seconds``: a campaign with 1,000 waiting batches costs one query a
minute, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSkippedEvent, TriggerEvent

log = logging.getLogger(__name__)

# How often a waiting batch learns of a pause or a cancel: well inside the 5 minutes promised.
POLL_SECONDS = 60

# campaign_id -> (monotonic time read, status), and one lock per campaign so that the batches
# that wake together wait for one query rather than each making one.
_statuses: dict[str, tuple[float, str | None]] = {}
_locks: dict[str, asyncio.Lock] = {}
# Cancelled campaigns whose unsent batches this process has marked cancelled in the ledger.
_cancelled: set[str] = set()


def _read_status(campaign_id: str) -> str | None:
    from include.campaign.steering import status
    from include.warehouse import get_warehouse_hook

    return status(get_warehouse_hook(), campaign_id)


def _cancel_unsent(campaign_id: str) -> int:
    from include.campaign import ledger
    from include.warehouse import get_warehouse_hook

    return ledger.record_cancelled(get_warehouse_hook(), campaign_id, "campaign cancelled")


async def cancel_unsent(campaign_id: str) -> None:
    """Mark the cancelled campaign's never-attempted batches ``cancelled``, once per campaign: the
    cancel run did it already, unless it died between the status and the ledger (a no-op then)."""
    from asgiref.sync import sync_to_async

    async with _locks.setdefault(campaign_id, asyncio.Lock()):
        if campaign_id in _cancelled:
            return
        try:
            await sync_to_async(_cancel_unsent)(campaign_id)
        except Exception:  # the batch ends all the same: nothing more of it is sent either way
            log.warning("Could not mark campaign %s's unsent batches cancelled", campaign_id, exc_info=True)
            return
        _cancelled.add(campaign_id)


async def campaign_status(campaign_id: str, max_age: float) -> str | None:
    """The campaign's status, at most ``max_age`` seconds old, read once for all its batches."""
    from asgiref.sync import sync_to_async

    lock = _locks.setdefault(campaign_id, asyncio.Lock())
    async with lock:
        seen = _statuses.get(campaign_id)
        if seen is None or time.monotonic() - seen[0] >= max_age:
            seen = (time.monotonic(), await sync_to_async(_read_status)(campaign_id))
            _statuses[campaign_id] = seen
    return seen[1]


class BatchDueTrigger(BaseTrigger):
    """Fires ``{"status": <campaign status>}`` once ``submit_at`` has come and the campaign is not
    paused. A cancel ends the batch here, ``skipped``, its ledger row ``cancelled``: no worker
    starts for it, so a cancel of a thousand waiting batches ends their run within a poll, not
    after a thousand task starts (``dag.test()`` resumes the task instead, which skips it too)."""

    def __init__(self, campaign_id: str, submit_at: str, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__()
        self.campaign_id, self.submit_at, self.poll_seconds = campaign_id, submit_at, poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"campaign_id": self.campaign_id, "submit_at": self.submit_at, "poll_seconds": self.poll_seconds},
        )

    async def run(self):
        from include.campaign.steering import CANCELLED, PAUSED

        due = datetime.fromisoformat(self.submit_at.replace("Z", "+00:00"))
        while True:
            status = await campaign_status(self.campaign_id, self.poll_seconds)
            now = datetime.now(UTC)
            if status == CANCELLED:
                await cancel_unsent(self.campaign_id)
                yield TaskSkippedEvent()
                return
            if now >= due and status != PAUSED:
                yield TriggerEvent({"status": status})
                return
            left = (due - now).total_seconds()
            await asyncio.sleep(self.poll_seconds if left <= 0 else min(left, self.poll_seconds))
