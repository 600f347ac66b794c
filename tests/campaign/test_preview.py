"""The dry run's preview: the schedule per day and hour, and the rejected rows by reason."""

from __future__ import annotations

import logging

from demo.audience import create_recipients_table
from include.campaign.plan import plan_campaign
from include.campaign.preview import (
    by_local_hour,
    local_hours,
    log_preview,
    recipients_by,
    rejected_by_reason,
)
from tests.conftest import DAY, NEXT_DAY

BATCHES = [
    {"batch_number": 1, "send_at": f"{DAY}T09:00:00Z", "recipient_count": 150},
    {"batch_number": 2, "send_at": f"{DAY}T10:00:00Z", "recipient_count": 150},
    {"batch_number": 3, "send_at": f"{DAY}T10:00:00Z", "recipient_count": 20},
    {"batch_number": 4, "send_at": f"{NEXT_DAY}T00:00:00Z", "recipient_count": 5},
]


def test_recipients_per_day_and_per_hour_in_time_order():
    assert recipients_by(BATCHES, 10) == {DAY: 320, NEXT_DAY: 5}
    assert recipients_by(BATCHES, 13) == {f"{DAY}T09": 150, f"{DAY}T10": 170, f"{NEXT_DAY}T00": 5}


def test_a_dry_run_logs_its_schedule_and_its_rejected_rows(warehouse, sandbox, caplog):
    create_recipients_table(warehouse, "recipients", 40, bad_every=10)  # 40, and 4 bad rows besides
    params = {
        "campaign_id": "preview",
        "recipients_table": "recipients",
        "from_email": "news@example.com",
        "subject": "Hi",
        "html_body": "<p>Hi</p>",
        "text_body": "",
        "max_batch_size": 10,
        "hourly_cap": 20,
        "daily_cap": 30,
        "start_at": f"{DAY}T09:00:00Z",
        "dry_run": True,
    }

    with caplog.at_level(logging.INFO, logger="include.campaign.preview"):
        batches = plan_campaign(params)

    rejected = rejected_by_reason(warehouse, "preview")
    assert sum(b["recipient_count"] for b in batches) == 40 and sum(rejected.values()) == 4
    [preview] = [r.getMessage() for r in caplog.records if r.name == "include.campaign.preview"]
    assert f"last send_at {batches[-1]['send_at']}" in preview
    assert f"  {DAY}         30" in preview  # the daily cap fills the first day
    assert f"  {DAY}T09:00Z         20" in preview and f"  {DAY}T10:00Z         10" in preview
    assert f"Rejected rows: {sum(rejected.values())}" in preview
    assert all(f"  {reason}" in preview for reason in rejected)


def test_no_batches_no_preview(warehouse, caplog):
    with caplog.at_level(logging.INFO):
        log_preview(warehouse, "none", [])
    assert caplog.records == []


def test_local_hours_of_a_warehouse_staged_before_zones_read_in_the_default_zone(warehouse):
    # The Campaigns view only reads: a staging table without the timezone column (an earlier
    # version's, not yet upgraded by a plan) is read as every recipient in the default zone.
    warehouse.run(
        [
            "CREATE TABLE email_campaign_recipients (campaign_id TEXT, batch_number INTEGER, "
            "position INTEGER, recipient_id TEXT, email TEXT, variables TEXT, source_row INTEGER)",
            "CREATE TABLE email_batch_ledger "
            "(campaign_id TEXT, batch_number INTEGER, send_at TEXT, status TEXT)",
            "INSERT INTO email_campaign_recipients VALUES ('c', 1, 1, 'r1', 'a@example.com', '{}', 1)",
            "INSERT INTO email_campaign_recipients VALUES ('c', 1, 2, 'r2', 'b@example.com', '{}', 2)",
            # 08:00Z is 09:00 in Berlin.
            "INSERT INTO email_batch_ledger VALUES ('c', 1, '2026-12-07T08:00:00Z', 'planned')",
        ]
    )
    assert by_local_hour(local_hours(warehouse, "c", "Europe/Berlin")) == {"09:00": {"Europe/Berlin": 2}}
