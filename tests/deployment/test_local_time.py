"""The warm-up ramp on a real deployment: the ``migosmtp_warmup`` Variable set through the REST API
(as in the UI), two campaigns of bulk_email_campaign planned one after the other on the LocalExecutor
stack, each in recipients' time zones inside a window, and the ramp holding their sum each UTC day."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from demo.airflow_stack import DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from include.campaign.warmup import VARIABLE
from include.warehouse import parse_utc, utc_text
from sandbox import SandboxProcess
from tests.deployment.campaign_checks import API_KEY, first_slot

pytestmark = pytest.mark.deployment

ZONES = ("Europe/Berlin", "Asia/Kolkata")


def test_two_campaigns_under_the_ramp_share_each_days_limit_inside_their_windows(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    stack, hook = local_stack, postgres_warehouse.hook
    day_1 = first_slot().replace(hour=0)  # a week ahead
    ramp = {"start": day_1.date().isoformat(), "daily": [30, 60]}
    conf = {
        "max_batch_size": 10,
        "hourly_cap": 100,
        "daily_cap": 1000,
        "start_at": utc_text(day_1),
        "submit_ahead_minutes": 14 * 24 * 60,  # every batch at once: nothing waits
        "send_hours": "09:00-17:00",
    }
    stack.api.set_variable(VARIABLE, json.dumps(ramp))
    try:
        with SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox:
            stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
            states = []
            for campaign_id in ("ramp-a", "ramp-b"):  # one after the other: b plans on a's calendar
                table = campaign_id.replace("-", "_")
                create_recipients_table(hook, table, 40, zones=ZONES)
                run = stack.api.trigger_dag_run(
                    DAG_ID, {**conf, "campaign_id": campaign_id, "recipients_table": table}
                )
                states.append(stack.wait_for_dag_run(DAG_ID, run, timeout=300)["state"])
            stored = sandbox.record()["batches"]
    finally:
        stack.api.delete_variable(VARIABLE)

    assert states == ["success", "success"]
    per_day = Counter()
    for batch in stored:
        per_day[batch["send_at"][:10]] += batch["recipient_count"]
    day = [(day_1 + timedelta(days=n)).date().isoformat() for n in range(3)]
    # 80 recipients of the two campaigns: 30 on day 1, the other 50 within day 2's 60. (Both zones'
    # 09:00-17:00 lie inside one UTC day: Berlin's 08:00-16:00, Kolkata's 03:30-11:30.)
    assert per_day == {day[0]: 30, day[1]: 50}, per_day
    by_campaign = Counter(tag for b in stored for tag in b["tags"] if tag.startswith("campaign:"))
    assert sum(b["recipient_count"] for b in stored) == 80 and len(by_campaign) == 2
    for batch in stored:
        emails = {r["to"] for r in batch["recipients"]}
        numbers = {int(e.removeprefix("user").split("@")[0]) for e in emails}
        [zone] = {ZONES[(n - 1) % len(ZONES)] for n in numbers}
        local = parse_utc(batch["send_at"]).astimezone(ZoneInfo(zone))
        assert 9 <= local.hour < 17, (zone, local)
