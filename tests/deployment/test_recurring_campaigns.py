"""Recurring campaigns on a real LocalExecutor stack: backfills through the REST API, and two campaign
DAGs planning at the same moment without breaking the account's caps."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from demo.airflow_stack import DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from include.campaign.ledger import rows as ledger_rows
from include.campaign.settings import derive_campaign_id
from include.warehouse import utc_text
from sandbox import SandboxProcess
from tests.conftest import ALL_AT_ONCE
from tests.deployment.campaign_checks import API_KEY
from tests.deployment.conftest import WEEKLY
from tests.helpers import sends as posts

pytestmark = pytest.mark.deployment

SUBSCRIBERS = 20
# The tests share one stack, so each recurring test has weeks of its own (a logical date has one
# run): past Mondays before the README runbook's 2026-11-02..16 (tests/deployment/test_runbook_cli.py),
# always past and after the DAG's start_date. The stack's own scheduled run is the latest Monday.
BACKFILLED_WEEKS = [datetime(2026, 10, day, 9, tzinfo=UTC) for day in (12, 19, 26)]
TRIGGERED_WEEK = datetime(2026, 10, 5, 9, tzinfo=UTC)


def test_a_backfill_of_three_weeks_sends_each_once_and_its_failed_reprocess_finishes_the_failed_week(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    hook = postgres_warehouse.hook
    stack = local_stack
    create_recipients_table(hook, "newsletter_subscribers", SUBSCRIBERS)
    weeks = BACKFILLED_WEEKS
    window = {
        "from_date": utc_text(weeks[0] - timedelta(hours=1)),
        "to_date": utc_text(weeks[-1] + timedelta(hours=1)),
    }

    with SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox:
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        # The DAG's own scheduled run (the latest Monday, at the stack's deployment) is finished
        # (tests/deployment/conftest.py), so the fault below meets the backfill's first week.
        assert all(r["state"] in ("success", "failed") for r in stack.api.dag_runs(WEEKLY))
        sandbox.set_faults(
            [{"action": "status", "status": 400, "message": "rejected for the test", "times": 1}]
        )

        first = stack.api.create_backfill(WEEKLY, reprocess_behavior="none", **window)
        stack.wait_for_backfill(first["id"])
        runs = {r["logical_date"][:16]: r for r in stack.api.dag_runs(WEEKLY) if r["run_type"] == "backfill"}
        states = [runs[f"{w:%Y-%m-%dT%H:%M}"]["state"] for w in weeks]
        assert states == ["failed", "success", "success"], stack.describe_run(
            WEEKLY, runs[f"{weeks[0]:%Y-%m-%dT%H:%M}"]["dag_run_id"]
        )

        second = stack.api.create_backfill(WEEKLY, reprocess_behavior="failed", **window)
        stack.wait_for_backfill(second["id"])
        runs = {r["logical_date"][:16]: r for r in stack.api.dag_runs(WEEKLY) if r["run_type"] == "backfill"}
        assert [runs[f"{w:%Y-%m-%dT%H:%M}"]["state"] for w in weeks] == ["success"] * 3
        posts_after_reprocess = len(posts(sandbox))

        third = stack.api.create_backfill(WEEKLY, reprocess_behavior="completed", **window)
        stack.wait_for_backfill(third["id"])
        runs = {r["logical_date"][:16]: r for r in stack.api.dag_runs(WEEKLY) if r["run_type"] == "backfill"}
        assert [runs[f"{w:%Y-%m-%dT%H:%M}"]["state"] for w in weeks] == ["success"] * 3
        record, requests = sandbox.record(), posts(sandbox)

    # Reprocessing completed weeks scheduled no new recipient, and made no request.
    assert len(requests) == posts_after_reprocess
    for week in weeks:
        campaign_id = derive_campaign_id(WEEKLY, week)
        batches = [b for b in record["batches"] if f"campaign:{campaign_id}" in b["tags"]]
        received = Counter(r["to"] for b in batches for r in b["recipients"])
        assert len(received) == SUBSCRIBERS and set(received.values()) == {1}, campaign_id
        ledger = ledger_rows(hook, campaign_id)
        assert {r["status"] for r in ledger} == {"scheduled"}
        assert {r["batch_id"] for r in ledger} == {b["batch_id"] for b in batches}
    # The failed week: one refused request, then the reprocess looked it up and sent it once.
    first_week = [r for r in requests if derive_campaign_id(WEEKLY, weeks[0]) in r["idempotency_key"]]
    assert [r["status_code"] for r in first_week] == [400, 202]


def test_two_campaign_dags_planning_together_hold_the_account_caps(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    hook = postgres_warehouse.hook
    stack = local_stack
    create_recipients_table(hook, "newsletter_subscribers", 30)
    create_recipients_table(hook, "recipients", 30)
    caps = {"max_batch_size": 10, "hourly_cap": 20, "daily_cap": 1000, "submit_ahead_minutes": ALL_AT_ONCE}
    start_at = (datetime.now(UTC) + timedelta(days=7)).replace(hour=9, minute=0, second=0, microsecond=0)
    weekly_date = TRIGGERED_WEEK

    with SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox:
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        # Its own latest Monday ran at the stack's deployment, on another warehouse and sandbox.
        assert all(r["state"] in ("success", "failed") for r in stack.api.dag_runs(WEEKLY))
        manual = stack.api.trigger_dag_run(
            DAG_ID, {"campaign_id": "together", "start_at": utc_text(start_at), **caps}
        )
        weekly = stack.api.trigger_dag_run(
            WEEKLY, {"start_at": utc_text(start_at), **caps}, logical_date=utc_text(weekly_date)
        )
        results = {
            DAG_ID: stack.wait_for_dag_run(DAG_ID, manual),
            WEEKLY: stack.wait_for_dag_run(WEEKLY, weekly),
        }
        assert {d: r["state"] for d, r in results.items()} == {DAG_ID: "success", WEEKLY: "success"}
        plans = [
            next(ti for ti in stack.api.task_instances(dag_id, run_id) if ti["task_id"] == "plan")
            for dag_id, run_id in ((DAG_ID, manual), (WEEKLY, weekly))
        ]
        record = sandbox.record()

    ours = {"together", derive_campaign_id(WEEKLY, weekly_date)}
    batches = [b for b in record["batches"] if {t.removeprefix("campaign:") for t in b["tags"]} & ours]
    assert sum(b["recipient_count"] for b in batches) == 60
    per_hour, per_day = Counter(), Counter()
    for b in batches:
        per_hour[b["send_at"][:13]] += b["recipient_count"]
        per_day[b["send_at"][:10]] += b["recipient_count"]
    assert max(per_hour.values()) <= caps["hourly_cap"], per_hour
    assert max(per_day.values()) <= caps["daily_cap"], per_day
    assert len(per_hour) == 3  # 60 recipients at 20 an hour, shared: not 30 + 30 in the same hours
    # The planning pool let one plan run at a time, although both runs were started together.
    first, second = sorted(plans, key=lambda ti: ti["start_date"])
    assert first["end_date"] <= second["start_date"], (first, second)
    assert {ti["pool"] for ti in plans} == {"campaign_planning"}


def test_a_halted_run_cleared_over_rest_once_the_quota_is_back_finishes_and_a_second_clear_sends_nothing(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    hook = postgres_warehouse.hook
    stack = local_stack
    create_recipients_table(hook, "recipients", 30)
    start_at = (datetime.now(UTC) + timedelta(days=7)).replace(hour=9, minute=0, second=0, microsecond=0)
    conf = {"campaign_id": "cleared", "max_batch_size": 10, "hourly_cap": 1000, "daily_cap": 1000}
    conf["submit_ahead_minutes"] = ALL_AT_ONCE
    conf["quota_policy"] = "ignore"  # no pre-flight, so the quota runs out part-way (a 402)

    with SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox:
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        sandbox.update_settings(monthly_limit=15)  # room for the first batch of 10 only: then 402
        run_id = stack.api.trigger_dag_run(DAG_ID, {**conf, "start_at": utc_text(start_at)})
        assert stack.wait_for_dag_run(DAG_ID, run_id)["state"] == "failed"
        halted = {r["status"] for r in ledger_rows(hook, "cleared")}
        assert "scheduled" in halted and halted & {"failed", "halted"}

        sandbox.update_settings(monthly_limit=1000)  # the plan was upgraded
        stack.api.clear_dag_run(DAG_ID, run_id)
        cleared = stack.wait_for_dag_run(DAG_ID, run_id)
        assert cleared["state"] == "success", stack.describe_run(DAG_ID, run_id)
        posts_after_clear = len(posts(sandbox))

        stack.api.clear_dag_run(DAG_ID, run_id)  # clearing a successful run
        assert stack.wait_for_dag_run(DAG_ID, run_id)["state"] == "success"
        record, requests = sandbox.record(), posts(sandbox)

    assert len(requests) == posts_after_clear
    received = Counter(r["to"] for b in record["batches"] for r in b["recipients"])
    assert len(received) == 30 and set(received.values()) == {1}
    ledger = ledger_rows(hook, "cleared")
    assert {r["status"] for r in ledger} == {"scheduled"}
    assert {r["batch_id"] for r in ledger} == {b["batch_id"] for b in record["batches"]}
