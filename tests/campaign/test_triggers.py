"""The trigger a waiting batch defers to: when it fires, and what it costs the warehouse."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from airflow.triggers.base import TaskSkippedEvent

from demo.audience import create_recipients_table
from include.campaign import ledger, triggers
from include.campaign.plan import plan_campaign
from include.campaign.triggers import BatchDueTrigger
from include.warehouse import utc_text
from tests.helpers import SMALL_CAMPAIGN


@pytest.fixture
def statuses(monkeypatch):
    """The campaign statuses the trigger reads, as a dict the test changes; and the reads made."""
    now = {"c1": "planned"}
    reads: list[str] = []

    def read(campaign_id):
        reads.append(campaign_id)
        return now.get(campaign_id)

    monkeypatch.setattr(triggers, "_read_status", read)
    monkeypatch.setattr(triggers, "_statuses", {})
    monkeypatch.setattr(triggers, "_locks", {})
    monkeypatch.setattr(triggers, "_cancelled", set())
    monkeypatch.setattr(triggers, "_cancel_unsent", lambda campaign_id: reads.append(f"cancel {campaign_id}"))
    return now, reads


def at(seconds: float) -> str:
    return utc_text(datetime.now(UTC) + timedelta(seconds=seconds))


async def first_event(trigger: BatchDueTrigger, within: float):
    return await asyncio.wait_for(trigger.run().__anext__(), within)


def test_it_round_trips_through_serialize():
    trigger = BatchDueTrigger("c1", "2026-12-10T08:00:00Z", 60)
    path, kwargs = trigger.serialize()
    assert path == "include.campaign.triggers.BatchDueTrigger"
    assert BatchDueTrigger(**kwargs).serialize() == (path, kwargs)


def test_a_batch_due_now_fires_at_once(statuses):
    event = asyncio.run(first_event(BatchDueTrigger("c1", at(-5), 60), within=2))
    assert event.payload == {"status": "planned"}


def test_it_fires_at_its_submit_time_not_before(statuses):
    async def scenario():
        trigger = BatchDueTrigger("c1", at(2.0), 60)  # whole seconds: due in 1 to 2 s
        started = asyncio.get_running_loop().time()
        await first_event(trigger, within=5)
        return asyncio.get_running_loop().time() - started

    assert 0.9 <= asyncio.run(scenario()) < 4


def test_a_paused_campaign_keeps_waiting_past_its_submit_time_until_resumed(statuses):
    now, _ = statuses
    now["c1"] = "paused"

    async def scenario():
        task = asyncio.ensure_future(first_event(BatchDueTrigger("c1", at(-60), 0.2), within=10))
        await asyncio.sleep(1)
        assert not task.done()
        now["c1"] = "planned"
        return await task

    assert asyncio.run(scenario()).payload == {"status": "planned"}


def test_a_cancel_ends_a_batch_long_before_its_submit_time_without_a_worker(statuses):
    now, reads = statuses

    async def scenario():
        waiting = [BatchDueTrigger("c1", at(86_400), 0.2) for _ in range(3)]
        tasks = [asyncio.ensure_future(first_event(t, within=10)) for t in waiting]
        await asyncio.sleep(0.5)
        now["c1"] = "cancelled"
        return await asyncio.gather(*tasks)

    events = asyncio.run(scenario())
    # Each ends skipped in the triggerer (no resume on a worker); the unsent rows are marked once.
    assert all(isinstance(e, TaskSkippedEvent) and e.task_instance_state == "skipped" for e in events)
    assert reads.count("cancel c1") == 1


def test_a_cancel_ends_the_batch_even_when_the_ledger_cannot_be_written(statuses, monkeypatch):
    now, _ = statuses
    now["c1"] = "cancelled"

    def down(campaign_id):
        raise ConnectionError("warehouse down")

    monkeypatch.setattr(triggers, "_cancel_unsent", down)
    event = asyncio.run(first_event(BatchDueTrigger("c1", at(86_400), 60), within=2))

    assert isinstance(event, TaskSkippedEvent)
    assert triggers._cancelled == set()  # the next batch tries again


def test_a_cancel_marks_the_campaigns_unsent_batches_cancelled(airflow_db, warehouse, clean_sandbox):
    """The triggerer's own ledger write, for a cancel run that died after setting the status."""
    create_recipients_table(warehouse, "recipients", 20)
    start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    params = {**SMALL_CAMPAIGN, "campaign_id": "c1", "hourly_cap": 10, "start_at": utc_text(start)}
    plan_campaign(params, run_id="r1")
    warehouse.run("UPDATE email_campaigns SET status = 'cancelled' WHERE campaign_id = 'c1'")

    assert triggers._cancel_unsent("c1") == 2
    assert {r["status"] for r in ledger.rows(warehouse, "c1")} == {"cancelled"}
    assert triggers._cancel_unsent("c1") == 0


def test_the_batches_of_one_campaign_share_one_read_per_poll(statuses):
    _, reads = statuses

    async def scenario():
        waiting = [
            asyncio.ensure_future(first_event(BatchDueTrigger("c1", at(3600), 1.0), 30)) for _ in range(500)
        ]
        await asyncio.sleep(2.5)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    asyncio.run(scenario())
    assert 2 <= len(reads) <= 4  # once a second for 2.5 s, whatever the number of batches
