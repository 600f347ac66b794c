"""The planner's second act end to end: recipients' time zones and a sending window, the account's
warm-up ramp and the frequency cap, each through the real DAG (``dag.test()``), the sandbox and both
warehouses. The sandbox's record of what it was asked to send is the proof; the zone of each
address is read back from the recipients table the test wrote.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from airflow.sdk.exceptions import ParamValidationError

from demo.audience import create_recipients_table
from include.campaign import definition, preview, report
from include.campaign.ledger import rows as ledger_rows
from include.views import pages
from include.warehouse import fetch_dicts, parse_utc, utc_text

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo"]
CAPS = {"max_batch_size": 50, "hourly_cap": 150, "daily_cap": 1500}
# Every batch submitted at once (a plan here reaches up to three weeks ahead): no batch waits.
AT_ONCE = {"submit_ahead_minutes": 30 * 24 * 60}


def next_monday(weeks: int = 1) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=7 * weeks - today.weekday())


def batches_of(sandbox, campaign_id: str) -> list[dict]:
    return sorted(
        (b for b in sandbox.record()["batches"] if f"campaign:{campaign_id}" in b["tags"]),
        key=lambda b: b["send_at"],
    )


def zone_of(n: int) -> str:
    return ZONES[(n - 1) % len(ZONES)]


def rejected(hook, campaign_id: str) -> list[dict]:
    p = hook.placeholder
    return fetch_dicts(
        hook,
        f"SELECT email, reason, detail FROM email_rejected_recipients WHERE campaign_id = {p} "
        "ORDER BY source_row",
        (campaign_id,),
    )


def test_berlin_new_york_and_tokyo_get_their_own_slots_inside_09_to_11_local(
    run_campaign, warehouse, clean_sandbox
):
    create_recipients_table(warehouse, "recipients", 30, zones=ZONES)
    monday = next_monday()
    run = run_campaign(**CAPS, **AT_ONCE, send_hours="09:00-11:00", start_at=utc_text(monday))

    assert run.state == "success"
    stored = batches_of(clean_sandbox, "c1")
    # Tokyo's 09:00 is 00:00 UTC, Berlin's 08:00 UTC, New York's 14:00 UTC (both on winter time).
    assert [b["send_at"] for b in stored] == [
        utc_text(monday),
        utc_text(monday + timedelta(hours=8)),
        utc_text(monday + timedelta(hours=14)),
    ]
    for batch in stored:
        zones = {zone_of(int(r["to"].removeprefix("user").split("@")[0])) for r in batch["recipients"]}
        [zone] = zones  # one zone a batch
        local = parse_utc(batch["send_at"]).astimezone(ZoneInfo(zone))
        assert local.hour == 9 and local.minute == 0, (zone, local)
    assert sum(len(b["recipients"]) for b in stored) == 30
    assert {r["timezone"] for r in ledger_rows(warehouse, "c1")} == set(ZONES)
    # The preview and the Campaigns page: three UTC hours, one local hour.
    local = {"09:00": {zone: 10 for zone in ZONES}}
    assert preview.by_local_hour(preview.local_hours(warehouse, "c1")) == local
    page = report.campaign(warehouse, "c1")
    assert page["per_local_hour"] == local and len(page["per_hour"]) == 3
    html = pages.campaign_page(page)
    assert 'data-local-hour="09:00"' in html and "Europe/Berlin 10" in html


def test_business_days_in_india_skip_the_weekend_and_start_at_the_half_hour(
    run_campaign, warehouse, clean_sandbox
):
    create_recipients_table(warehouse, "recipients", 20, zones=["Asia/Kolkata"])
    friday = next_monday() + timedelta(days=4)
    conf = {"max_batch_size": 10, "hourly_cap": 10, "daily_cap": 10}
    # One batch a day: Friday's, then the weekend is skipped in India, then Monday's.
    run = run_campaign(
        **conf,
        **AT_ONCE,
        send_days=["mon", "tue", "wed", "thu", "fri"],
        send_hours="09:00-17:00",
        start_at=utc_text(friday),
    )

    assert run.state == "success"
    assert [b["send_at"] for b in batches_of(clean_sandbox, "c1")] == [
        utc_text(friday + timedelta(hours=3, minutes=30)),  # 09:00 IST
        utc_text(friday + timedelta(days=3, hours=3, minutes=30)),
    ]


def test_without_a_timezone_column_the_window_is_read_in_the_default_zone(
    run_campaign, warehouse, clean_sandbox
):
    create_recipients_table(warehouse, "recipients", 10)  # no timezone column
    monday = next_monday(weeks=2)  # its Saturday is ahead whatever today is
    saturday = monday - timedelta(days=2)
    run = run_campaign(
        **CAPS,
        **AT_ONCE,
        send_days=["mon", "tue", "wed", "thu", "fri"],
        send_hours="09:00-10:00",
        default_timezone="Asia/Tokyo",
        start_at=utc_text(saturday + timedelta(hours=20)),
    )

    assert run.state == "success"
    # Not Saturday 20:00 UTC: Monday 09:00 in Tokyo, Monday 00:00 UTC.
    assert [b["send_at"] for b in batches_of(clean_sandbox, "c1")] == [utc_text(monday)]
    assert [r["timezone"] for r in ledger_rows(warehouse, "c1")] == ["Asia/Tokyo"]


def test_a_ramp_of_50_then_100_spreads_300_recipients_then_the_plans_own_cap(
    run_campaign, warehouse, clean_sandbox, monkeypatch
):
    day_1 = next_monday()
    monkeypatch.setenv(
        "AIRFLOW_VAR_MIGOSMTP_WARMUP", json.dumps({"start": day_1.date().isoformat(), "daily": [50, 100]})
    )
    create_recipients_table(warehouse, "recipients", 300)
    run = run_campaign(max_batch_size=50, hourly_cap=150, daily_cap=150, start_at=utc_text(day_1), **AT_ONCE)

    assert run.state == "success"
    per_day = Counter()
    for batch in batches_of(clean_sandbox, "c1"):
        per_day[batch["send_at"][:10]] += len(batch["recipients"])
    assert per_day == {
        day_1.date().isoformat(): 50,
        (day_1 + timedelta(days=1)).date().isoformat(): 100,
        (day_1 + timedelta(days=2)).date().isoformat(): 150,
    }


def test_a_malformed_ramp_fails_the_plan_with_its_reason_before_anything_is_written(
    run_campaign, warehouse, clean_sandbox, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_MIGOSMTP_WARMUP", json.dumps({"start": "2026-12-07", "daily": [50, -1]}))
    create_recipients_table(warehouse, "recipients", 10)
    run = run_campaign(**CAPS)

    assert run.state == "failed"
    assert run.states("plan") == ["failed"]
    assert definition.read(warehouse, "c1") is None
    assert clean_sandbox.requests() == []


def test_a_recipient_in_two_campaigns_this_week_is_capped_at_two_and_a_transactional_one_counts_not(
    run_campaign, warehouse, clean_sandbox
):
    # a and b mailed users 1-5 this week, the transactional t mailed users 6-10.
    create_recipients_table(warehouse, "first_five", 5)
    create_recipients_table(warehouse, "recipients", 10)
    assert run_campaign(campaign_id="a", recipients_table="first_five", **CAPS, **AT_ONCE).state == "success"
    assert run_campaign(campaign_id="b", recipients_table="first_five", **CAPS, **AT_ONCE).state == "success"
    assert run_campaign(campaign_id="t", ignore_suppressions=True, **CAPS, **AT_ONCE).state == "success"

    run = run_campaign(campaign_id="c", max_mails_per_recipient=2, **CAPS, **AT_ONCE)

    assert run.state == "success"
    assert sorted(r["to"] for b in batches_of(clean_sandbox, "c") for r in b["recipients"]) == sorted(
        f"user{n}@example.com" for n in range(1, 11) if n > 5
    )
    capped = rejected(warehouse, "c")
    assert [(r["email"], r["reason"]) for r in capped] == [
        (f"user{n}@example.com", "frequency_capped") for n in range(1, 6)
    ]
    assert all(r["detail"] == "2+ mails in 7 days from a, b" for r in capped), capped


def test_an_unknown_zone_is_rejected_invalid_timezone_and_an_empty_one_takes_the_default(
    run_campaign, warehouse, clean_sandbox
):
    create_recipients_table(warehouse, "recipients", 3, zones=["Mars/Olympus_Mons", "", "../../etc/passwd"])
    monday = next_monday()
    run = run_campaign(
        **CAPS, send_hours="09:00-10:00", default_timezone="Asia/Kathmandu", start_at=utc_text(monday)
    )

    assert run.state == "success"
    assert [(r["email"], r["reason"]) for r in rejected(warehouse, "c1")] == [
        ("user1@example.com", "invalid_timezone"),
        ("user3@example.com", "invalid_timezone"),
    ]
    [batch] = batches_of(clean_sandbox, "c1")
    assert batch["send_at"] == utc_text(monday + timedelta(hours=3, minutes=15))  # 09:00 in Kathmandu


@pytest.mark.parametrize(
    ("param", "value"), [("send_hours", "17:00-09:00"), ("default_timezone", "Europe/Atlantis")]
)
def test_a_window_param_the_form_lets_through_fails_the_plan_and_sends_nothing(
    run_campaign, warehouse, clean_sandbox, param, value
):
    # Their schema is a pattern and a string; the plan's own check names them (test_settings.py).
    create_recipients_table(warehouse, "recipients", 3)
    run = run_campaign(**CAPS, **AT_ONCE, **{param: value})

    assert run.state == "failed" and run.states("plan") == ["failed"]
    assert clean_sandbox.requests() == []


@pytest.mark.parametrize(
    ("param", "value"), [("send_days", ["mon", "someday"]), ("send_hours", "9-5"), ("frequency_days", 0)]
)
def test_a_window_or_cap_param_its_schema_refuses_creates_no_run(
    run_campaign, warehouse, clean_sandbox, param, value
):
    with pytest.raises(ParamValidationError, match=param):
        run_campaign(**CAPS, **{param: value})
    assert clean_sandbox.requests() == []
