"""A campaign's definition: what it holds, how two are compared, and its row in email_campaigns."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.campaign import definition
from include.campaign.ledger import LedgerSummary
from include.campaign.settings import CampaignSettings
from include.warehouse import ensure_schema

NOW = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)
PARAMS = {
    "campaign_id": "c1",
    "recipients_table": "recipients",
    "from_email": "news@example.com",
    "subject": "Hi {{first_name}}",
    "html_body": "<p>Hi</p>",
    "text_body": "Hi",
    "hourly_cap": 150,
    "daily_cap": 1500,
    "max_batch_size": 500,
}


def of(**overrides):
    return definition.of(CampaignSettings.from_params({**PARAMS, **overrides}, now=NOW))


class TestWhatADefinitionHolds:
    def test_the_fields_that_make_a_request_or_cut_the_batches(self):
        assert of() == {
            "recipients_table": "recipients",
            "from_email": "news@example.com",
            "subject": "Hi {{first_name}}",
            "html_body": "<p>Hi</p>",
            "text_body": "Hi",
            "max_batch_size": 500,
            "send_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "send_hours": "00:00-24:00",
            "default_timezone": "UTC",
        }

    @pytest.mark.parametrize(
        "change",
        [{"hourly_cap": 10}, {"daily_cap": 100}, {"start_at": "2026-12-24T09:00:00Z"}, {"dry_run": True}],
    )
    def test_caps_start_and_what_a_run_does_are_not_part_of_it(self, change):
        assert definition.differences(of(), of(**change)) == []

    def test_differences_name_every_changed_field_in_order(self):
        changed = of(subject="Other", max_batch_size=100, from_email="x@example.com")

        assert definition.differences(of(), changed) == ["from_email", "subject", "max_batch_size"]


class TestTheCampaignsTable:
    def test_record_then_read_round_trips_and_a_replan_replaces(self, warehouse):
        ensure_schema(warehouse)
        definition.record(warehouse, "c1", of(), dag_id="d", run_id="r1", dry_run=True)

        first = definition.read(warehouse, "c1")
        assert (first["definition"], first["dag_id"], first["planned_by_run"]) == (of(), "d", "r1")
        assert (first["dry_run"], first["status"]) == (True, definition.DRY_RUN)

        definition.record(warehouse, "c1", of(subject="New"), dag_id="d", run_id="r2", dry_run=False)

        second = definition.read(warehouse, "c1")
        assert second["definition"]["subject"] == "New" and second["planned_by_run"] == "r2"
        assert (second["dry_run"], second["status"]) == (False, definition.PLANNED)
        assert definition.read(warehouse, "unknown") is None

    @pytest.mark.parametrize(
        ("by_status", "unsent", "dry_run", "expected"),
        [
            ({"planned": 2}, 0, True, definition.DRY_RUN),
            ({"planned": 2}, 0, False, definition.PLANNED),
            ({"scheduled": 1, "failed": 1}, 1, False, definition.INCOMPLETE),
            ({"scheduled": 1, "delivered": 1}, 0, False, definition.SCHEDULED),
            ({"delivered": 2}, 0, False, definition.DELIVERED),
        ],
    )
    def test_the_status_summarises_the_ledger(self, warehouse, by_status, unsent, dry_run, expected):
        ensure_schema(warehouse)
        definition.record(warehouse, "c1", of(), dag_id="d", run_id="r1", dry_run=dry_run)
        summary = LedgerSummary(batches=2, recipients=20, by_status=by_status, unsent=[{}] * unsent)

        assert definition.summarize(warehouse, "c1", summary, dry_run) == expected

        row = definition.read(warehouse, "c1")
        assert row["status"] == expected
        assert json.loads(row["batches_by_status"]) == by_status
