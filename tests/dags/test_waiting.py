"""Batches that wait for their submit time, and campaigns steered while they wait: the real DAG with
``dag.test()`` (which runs each deferred batch's trigger in line), the sandbox and both warehouses.

Timings are seconds to minutes: ``start_at`` and ``submit_ahead_minutes`` make the first batch due
soon after the plan (``tests.helpers.due_in``), late enough for a steering step to land first on a
busy machine; the trigger polls the campaign's state every second instead of every minute.

The operator's steps run in another process, as they would: ``dag.test()`` keeps its task
machinery in this process's globals, which a second thread calling into Airflow would race.

Each campaign here has one batch: ``dag.test()`` runs one deferred task's trigger at a time, in
line, taking the mapped tasks in no set order (a set of task instances), so with two batches it
may wait on the later one's trigger before it sends the first. Steering several batches at once,
some at the provider and some waiting, is tested on the real triggerer
(tests/deployment/test_waiting_batches.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from demo.audience import create_recipients_table
from include.campaign import definition, triggers
from include.campaign.ledger import rows as ledger_rows
from include.warehouse import utc_text
from tests.conftest import REPO_ROOT
from tests.helpers import SMALL_CAMPAIGN, due_in, sends

# One batch of 10 per hour: batch 1 in the next hour, batch 2 in the one after.
CONF = {"max_batch_size": 10, "hourly_cap": 10, "daily_cap": 1000}


# A steering step that fails leaves its campaign paused or its batch waiting for hours, so a test
# here would wait on: it fails at this many seconds instead, its steering process's output above.
pytestmark = pytest.mark.timeout(480)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(triggers, "POLL_SECONDS", 1)


# Waits until the run has planned, then opts user3 out.
OPT_OUT_ONCE_PLANNED = """
from include.warehouse import get_warehouse_hook
from tests.helpers import suppress, wait_for_plan
hook = get_warehouse_hook()
wait_for_plan(hook, "c1")
suppress(hook, "user3@example.com")
"""

# Once the run has planned (and its batch has deferred), triggers the steering Params.
STEER_ONCE_PLANNED = """
import json, sys, time
from include.campaign.plan import plan_campaign
from include.warehouse import get_warehouse_hook
from tests.helpers import wait_for_plan
wait_for_plan(get_warehouse_hook(), "c1")
time.sleep(2)
plan_campaign(json.loads(sys.argv[1]), run_id="steer")
"""

# Once planned: pause; a few seconds past the submit time (argv[3]) write down what was sent and
# the campaign's status (to argv[4]); then resume.
PAUSE_THEN_RESUME = """
import json, sys, time
from datetime import UTC, datetime
from include.campaign import definition
from include.campaign.plan import plan_campaign
from include.warehouse import get_warehouse_hook, parse_utc
from tests.helpers import metadata_run_state, sends_at, wait_for_plan
params, sandbox, submit_at, report = json.loads(sys.argv[1]), sys.argv[2], parse_utc(sys.argv[3]), sys.argv[4]
hook = get_warehouse_hook()
wait_for_plan(hook, "c1")
plan_campaign({**params, "mode": "pause"}, run_id="pause")
time.sleep(max(0.0, (submit_at - datetime.now(UTC)).total_seconds()) + 3)
with open(report, "w") as out:
    status = definition.read(hook, "c1")["status"]
    json.dump({"sent_while_paused": len(sends_at(sandbox)), "status": status}, out)
resume = {**params, "mode": "resume"}
plan_campaign(resume, dag_id="bulk_email_campaign", run_id="resume", run_state=metadata_run_state)
"""


def meanwhile(code: str, *args: str) -> subprocess.Popen:
    """Run ``code`` in another Python process, with this test's connections."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=os.environ.copy())


def finished(process: subprocess.Popen) -> None:
    assert process.wait(timeout=60) == 0, "the steering process failed (its output is above)"


def test_a_batch_waits_then_goes_with_its_planned_send_at_without_whom_opted_out_meanwhile(
    run_campaign, warehouse, clean_sandbox
):
    create_recipients_table(warehouse, "recipients", 10)
    slot, ahead = due_in(90)
    submit_at = slot - timedelta(minutes=ahead)

    opt_out = meanwhile(OPT_OUT_ONCE_PLANNED)  # while the batch waits: the plan took user3 in
    run = run_campaign(**CONF, start_at=utc_text(slot), submit_ahead_minutes=ahead)
    finished(opt_out)

    assert run.state == "success"
    [stored] = clean_sandbox.record()["batches"]
    assert stored["send_at"] == utc_text(slot)
    assert "user3@example.com" not in {r["to"] for r in stored["recipients"]}
    assert len(stored["recipients"]) == 9
    # It went at its submit time, not at the plan.
    assert len(sends(clean_sandbox)) == 1 and datetime.now(UTC) >= submit_at


def test_pause_then_resume_of_a_waiting_batch(run_campaign, warehouse, clean_sandbox, tmp_path):
    create_recipients_table(warehouse, "recipients", 10)
    slot, ahead = due_in(150)
    submit_at = slot - timedelta(minutes=ahead)
    params = json.dumps({**SMALL_CAMPAIGN, **CONF, "campaign_id": "c1"})
    report = tmp_path / "while-paused.json"

    steer = meanwhile(PAUSE_THEN_RESUME, params, clean_sandbox.url, utc_text(submit_at), str(report))
    run = run_campaign(**CONF, start_at=utc_text(slot), submit_ahead_minutes=ahead)
    finished(steer)

    # Past its submit time, nothing went while paused; after the resume it went with its slot.
    assert json.loads(report.read_text()) == {"sent_while_paused": 0, "status": "paused"}
    assert run.state == "success"
    [stored] = clean_sandbox.record()["batches"]
    assert stored["send_at"] == utc_text(slot)
    assert definition.read(warehouse, "c1")["status"] == "scheduled"


def test_cancel_of_a_waiting_batch_ends_its_run_and_refuses_later_runs(
    run_campaign, warehouse, clean_sandbox
):
    # One batch, due in about an hour: it waits. (One, because dag.test() runs one trigger at a time,
    # in line, in no set order; a cancel of a batch at the provider beside waiting ones is checked on
    # the real triggerer, tests/deployment/test_waiting_batches.py.)
    create_recipients_table(warehouse, "recipients", 10)
    slot = (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    ahead = math.floor((slot - datetime.now(UTC)).total_seconds() / 60) - 60
    params = {**SMALL_CAMPAIGN, **CONF, "campaign_id": "c1"}

    cancel = meanwhile(STEER_ONCE_PLANNED, json.dumps({**params, "mode": "cancel"}))
    started = datetime.now(UTC)
    run = run_campaign(**CONF, start_at=utc_text(slot), submit_ahead_minutes=ahead)
    finished(cancel)

    assert run.state == "success"
    assert datetime.now(UTC) - started < timedelta(minutes=5)  # the waiting batch did not wait on
    assert [r["status"] for r in ledger_rows(warehouse, "c1")] == ["cancelled"]
    assert sends(clean_sandbox) == []
    assert definition.read(warehouse, "c1")["status"] == "cancelled"
    # A later send of the campaign is refused, with no request.
    requests = len(clean_sandbox.requests())
    assert run_campaign(**CONF, start_at=utc_text(slot)).state == "failed"
    assert len(clean_sandbox.requests()) == requests
