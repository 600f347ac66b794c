"""Batches that wait on a real deployment: deferred to the real triggerer, holding no pool slot, two
campaigns of bulk_email_campaign running at once, a cancel that ends the run that waits and cancels
its batch at the provider, and the reconcile DAG pausing a bad start that a resume lets go on.

Steering several batches of one run is tested here, not with ``dag.test()``: that runs one
deferred task's trigger at a time, in line, in no set order, where the triggerer runs them all."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from demo.airflow_stack import DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from demo.receiver import webhook_receiver
from include.campaign import definition
from include.campaign.dag_factory import API_POOL
from include.campaign.ledger import rows as ledger_rows
from include.warehouse import utc_text
from sandbox import SandboxProcess
from tests.conftest import ChatWebhook
from tests.deployment.campaign_checks import API_KEY, first_slot
from tests.deployment.conftest import RECONCILE_DAG_ID
from tests.helpers import received, sends

pytestmark = pytest.mark.deployment

CAMPAIGNS = ("wait-a", "wait-b")


def send_states(stack: AirflowStack, run_id: str) -> Counter:
    return Counter(
        t["state"] for t in stack.api.task_instances(DAG_ID, run_id) if t["task_id"] == "send_batch"
    )


def test_waiting_batches_are_deferred_without_a_pool_slot_and_a_cancel_ends_their_run(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    stack, hook = local_stack, postgres_warehouse.hook
    slot = first_slot()
    conf = {"max_batch_size": 10, "hourly_cap": 10, "daily_cap": 1000, "start_at": utc_text(slot)}
    with SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox:
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        runs = {}
        # A week ahead. wait-b's two batches are submitted at their slot: both wait. wait-a's first
        # is due at once and goes to the provider; its second, an hour later, waits.
        ahead = {"wait-a": math.ceil((slot - datetime.now(UTC)).total_seconds() / 60) + 1, "wait-b": 0}
        for campaign_id in CAMPAIGNS:
            table = campaign_id.replace("-", "_")
            create_recipients_table(hook, table, 20)
            runs[campaign_id] = stack.api.trigger_dag_run(
                DAG_ID,
                {
                    **conf,
                    "campaign_id": campaign_id,
                    "recipients_table": table,
                    "submit_ahead_minutes": ahead[campaign_id],
                },
            )
        waiting = {"wait-a": {"success": 1, "deferred": 1}, "wait-b": {"deferred": 2}}
        deadline = time.monotonic() + 180
        while any(send_states(stack, r) != waiting[c] for c, r in runs.items()):
            assert time.monotonic() < deadline, {c: send_states(stack, r) for c, r in runs.items()}
            time.sleep(2)
        pool = stack.api.pool(API_POOL)
        both_running = [stack.api.dag_run(DAG_ID, r)["state"] for r in runs.values()]

        cancelled_at = time.monotonic()
        cancel = stack.api.trigger_dag_run(DAG_ID, {"campaign_id": "wait-a", "mode": "cancel"})
        assert stack.wait_for_dag_run(DAG_ID, cancel)["state"] == "success"
        ended = stack.wait_for_dag_run(DAG_ID, runs["wait-a"], timeout=300)
        took = time.monotonic() - cancelled_at
        cancelled_states = send_states(stack, runs["wait-a"])
        other = stack.api.dag_run(DAG_ID, runs["wait-b"])["state"]
        # Leave nothing waiting for a week on the shared stack.
        stack.wait_for_dag_run(
            DAG_ID, stack.api.trigger_dag_run(DAG_ID, {"campaign_id": "wait-b", "mode": "cancel"})
        )
        stack.wait_for_dag_run(DAG_ID, runs["wait-b"], timeout=300)
        bulk_sends = sends(sandbox)
        stored = sandbox.record()["batches"]

    assert both_running == ["running", "running"]
    # Three batches wait, deferred: they hold none of the API pool's slots.
    assert (pool["deferred_slots"], pool["occupied_slots"], pool["running_slots"]) == (3, 0, 0), pool
    assert ended["state"] == "success" and took < 5 * 60, (ended, took)
    # The waiting batch ended skipped, in the triggerer (its ledger row cancelled, below).
    assert cancelled_states == {"success": 1, "skipped": 1}, cancelled_states
    assert other == "running"  # the other campaign went on waiting
    # wait-a's first batch went, a week ahead of its slot, and the cancel cancelled it there.
    assert len(bulk_sends) == 1
    assert [(b["send_at"], b["status"]) for b in stored] == [(utc_text(slot), "cancelled")]
    for campaign_id in CAMPAIGNS:
        assert {r["status"] for r in ledger_rows(hook, campaign_id)} == {"cancelled"}
        assert definition.read(hook, campaign_id)["status"] == "cancelled"


def test_the_reconcile_pauses_a_bad_start_and_a_resume_goes_on(
    tmp_path, monkeypatch, postgres_warehouse, local_stack: AirflowStack
):
    stack, hook = local_stack, postgres_warehouse.hook
    create_recipients_table(hook, "recipients", 200)
    # Batch 1 at the next whole hour (at least 5 minutes ahead) goes at once; batch 2, an hour later,
    # is submitted in 6 to 7 minutes: time for batch 1's results to come back and be reconciled.
    now = datetime.now(UTC)
    first = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1 if now.minute < 55 else 2)
    ahead = math.floor((first + timedelta(hours=1) - now).total_seconds() / 60) - 6
    submit_2 = first + timedelta(hours=1) - timedelta(minutes=ahead)
    conf = {
        "campaign_id": "bad-start",
        "max_batch_size": 100,
        "hourly_cap": 100,
        "daily_cap": 1000,
        "min_results_for_rates": 100,
        "start_at": utc_text(first),
        "submit_ahead_minutes": ahead,
    }
    # The events come to the receiver plugin's app, here, on this test's warehouse; the alerts to a
    # chat webhook behind campaign_alerts, which the stack's tasks read.
    secret = json.dumps({"conn_type": "generic", "password": "whsec"})
    monkeypatch.setenv("AIRFLOW_CONN_MIGOSMTP_WEBHOOK", secret)
    with (
        SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox,
        webhook_receiver() as receiver,
        ChatWebhook() as chat,
    ):
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        stack.api.set_connection("campaign_alerts", {"conn_type": "http", "host": chat.url})
        sandbox.update_settings(webhook_url=receiver, webhook_secret="whsec", complaint_rate=0.2)
        run = stack.api.trigger_dag_run(DAG_ID, conf)
        wait_until("batch 1 went and batch 2 waits", stack, lambda: send_states(stack, run) == WAITING_ONE)
        sandbox.advance(2 * 3600)  # past batch 1's slot: the sandbox sends it
        wait_until("batch 1 was sent", stack, lambda: sandbox.record()["batches"][0]["status"] != "scheduled")
        sandbox.advance(3600)  # past its follow-ups (a complaint after its delivery)
        wait_until(
            "the receiver took batch 1's events",
            stack,
            lambda: sandbox.record()["batches"][0]["status"] == "delivered",
            detail=lambda: Counter((e["type"], e["delivered"]) for e in sandbox.events()),
        )
        assert reconcile(stack) == "success"
        paused = definition.read(hook, "bad-start")
        alerts_after_pause = list(chat.received)
        assert reconcile(stack) == "success"  # still over: no second alert
        alerts_after_second = len(chat.received)

        # Past batch 2's submit time (and its trigger's wake), nothing more went.
        time.sleep(max(0.0, (submit_2 - datetime.now(UTC)).total_seconds()) + 5)
        sent_while_paused = len(sends(sandbox))
        states_while_paused = send_states(stack, run)
        ledger_while_paused = {r["batch_number"]: r["status"] for r in ledger_rows(hook, "bad-start")}

        # The operator looks, accepts the rate, and resumes with a new threshold: the run goes on.
        resume = {"campaign_id": "bad-start", "mode": "resume", "max_complaint_rate": 0.5}
        assert stack.wait_for_dag_run(DAG_ID, stack.api.trigger_dag_run(DAG_ID, resume))["state"] == "success"
        ended = stack.wait_for_dag_run(DAG_ID, run, timeout=300)
        stored = sorted(sandbox.record()["batches"], key=lambda b: b["send_at"])
        recipients = received(sandbox)
        # Judged again against the resume's threshold: not paused a second time.
        assert reconcile(stack) == "success"
        after_resume = definition.read(hook, "bad-start")["status"]
        alerts = list(chat.received)

    assert paused["status"] == "paused", paused
    [alert] = alerts_after_pause
    assert "bad-start" in alert["text"] and re.search(r"complaints \d+\.\d+% > 0\.30%", alert["text"]), alert
    assert alerts_after_second == 1
    assert sent_while_paused == 1
    assert states_while_paused == WAITING_ONE, states_while_paused
    assert ledger_while_paused[2] == "planned", ledger_while_paused
    assert ended["state"] == "success"
    assert [b["send_at"] for b in stored] == [utc_text(first), utc_text(first + timedelta(hours=1))]
    assert sum(recipients.values()) == 200 == len(recipients)
    assert after_resume != "paused"
    assert len(alerts) == 2 and "goes on with it" in alerts[-1]["text"], alerts  # the pause's, the resume's


WAITING_ONE = Counter({"success": 1, "deferred": 1})


def wait_until(what: str, stack: AirflowStack, condition, seconds: float = 180, detail=lambda: "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        stack.check_processes()
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting until {what}: {detail()}"
        time.sleep(1)


def reconcile(stack: AirflowStack) -> str:
    return stack.wait_for_dag_run(RECONCILE_DAG_ID, stack.api.trigger_dag_run(RECONCILE_DAG_ID, {}))["state"]
