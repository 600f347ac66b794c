"""What holds the account's caps when a campaign plans: ``ledger.occupied_slots``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.campaign import definition, ledger
from include.campaign.ledger import held_by_others
from include.warehouse import ensure_schema

NOW = datetime(2026, 12, 1, 10, 20, tzinfo=UTC)
HOUR = NOW.replace(minute=0)


def book(hook, campaign_id, number, send_at, count, status=ledger.PLANNED, dry_run=False, plan=None):
    row = ledger.planned_row(campaign_id, number, f"k-{campaign_id}-{number}", ["r"] * count, send_at, "t")
    hook.insert_rows(ledger.LEDGER_TABLE, [row], target_fields=list(ledger.FIELDS))
    if status == ledger.SCHEDULED:
        ledger.record_scheduled(hook, campaign_id, number, f"bat-{campaign_id}-{number}")
    elif status == ledger.FAILED:
        ledger.record_failure(hook, campaign_id, number, "503")
    definition.record(hook, campaign_id, {}, dag_id="d", run_id="r", dry_run=dry_run, status=plan)


class TestOccupiedSlots:
    def test_batches_at_the_provider_count_from_the_start_of_the_day_whoever_sent_them(self, warehouse):
        ensure_schema(warehouse)
        book(warehouse, "mine", 1, HOUR - timedelta(hours=3), 10, ledger.SCHEDULED)
        book(warehouse, "other", 1, HOUR - timedelta(hours=2), 20, ledger.SCHEDULED)
        book(warehouse, "other", 2, HOUR - timedelta(days=1), 40, ledger.SCHEDULED)  # yesterday

        occupied = ledger.occupied_slots(warehouse, NOW, "mine")

        assert occupied == {HOUR - timedelta(hours=3): 10, HOUR - timedelta(hours=2): 20}

    def test_other_campaigns_batches_still_to_send_hold_this_hour_and_later(self, warehouse):
        ensure_schema(warehouse)
        book(warehouse, "other", 1, HOUR, 5)  # planned, this hour
        book(warehouse, "other", 2, HOUR + timedelta(hours=1), 7, ledger.FAILED)  # a resume keeps it
        book(warehouse, "other", 3, HOUR - timedelta(hours=1), 9)  # passed: a resume re-places it

        occupied = ledger.occupied_slots(warehouse, NOW, "mine")

        assert occupied == {HOUR: 5, HOUR + timedelta(hours=1): 7}

    def test_the_planning_campaigns_own_unsent_batches_and_dry_runs_hold_nothing(self, warehouse):
        ensure_schema(warehouse)
        book(warehouse, "mine", 1, HOUR + timedelta(hours=1), 5)
        book(warehouse, "preview", 1, HOUR + timedelta(hours=1), 7, dry_run=True)

        assert ledger.occupied_slots(warehouse, NOW, "mine") == {}
        assert ledger.occupied_slots(warehouse, NOW, "someone-else") == {HOUR + timedelta(hours=1): 5}

    @pytest.mark.parametrize("plan", [ledger.PLANNING, ledger.PLAN_FAILED])
    def test_an_unfinished_plan_holds_no_slot_and_no_quota(self, warehouse, plan):
        ensure_schema(warehouse)
        book(warehouse, "unfinished", 1, HOUR + timedelta(hours=1), 5, plan=plan)
        book(warehouse, "finished", 1, HOUR + timedelta(hours=2), 7)

        assert ledger.occupied_slots(warehouse, NOW, "mine") == {HOUR + timedelta(hours=2): 7}
        assert held_by_others(warehouse, "mine") == 7
