"""Waiting, pausing, resuming and cancelling a campaign: the plan and send steps called as their tasks
call them, against the sandbox and a real warehouse (the DAG-level runs are in tests/dags/)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.api.datamodels._generated import DagRunState
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from demo.audience import create_recipients_table
from include.campaign import definition, ledger
from include.campaign.plan import plan_campaign
from include.campaign.planner import hour_floor
from include.campaign.send import Wait, send_batch, submit_time
from include.campaign.steering import CampaignCancelled
from include.warehouse import parse_utc, utc_text
from tests.conftest import ALL_AT_ONCE
from tests.helpers import SMALL_CAMPAIGN, sends

PARAMS = {**SMALL_CAMPAIGN, "campaign_id": "c1", "hourly_cap": 10}


def tomorrow_0900() -> datetime:
    return (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)


def status(hook) -> str:
    return definition.read(hook, "c1")["status"]


def by_batch(hook) -> dict[int, dict]:
    return {r["batch_number"]: r for r in ledger.rows(hook, "c1")}


class TestSubmitTime:
    def test_a_batch_goes_submit_ahead_minutes_before_its_slot(self):
        slot = datetime(2026, 12, 10, 9, tzinfo=UTC)
        assert submit_time(slot, 60) == datetime(2026, 12, 10, 8, tzinfo=UTC)
        assert submit_time(slot, 0) == slot
        assert submit_time(slot, 14_400) == datetime(2026, 11, 30, 9, tzinfo=UTC)


class TestWaiting:
    def test_a_batch_before_its_submit_time_waits_and_sends_nothing(
        self, airflow_db, warehouse, clean_sandbox
    ):
        create_recipients_table(warehouse, "recipients", 10)
        start = tomorrow_0900()
        params = {**PARAMS, "start_at": utc_text(start), "submit_ahead_minutes": 60}
        [batch] = plan_campaign(params, run_id="r1")

        wait = send_batch(batch, params, "r1")

        assert wait == Wait("c1", start - timedelta(hours=1), "submit time")
        assert sends(clean_sandbox) == [] and by_batch(warehouse)[1]["attempts"] == 0
        # At its submit time it goes, with its planned send_at.
        result = send_batch(batch, params, "r1", now=start - timedelta(minutes=59))
        [stored] = clean_sandbox.record()["batches"]
        assert result["resent"] and stored["send_at"] == utc_text(start)

    def test_a_batch_that_wakes_after_its_slot_moves_whole_to_the_first_hour_with_room(
        self, airflow_db, warehouse, clean_sandbox
    ):
        create_recipients_table(warehouse, "recipients", 25)
        params = {**PARAMS, "submit_ahead_minutes": 60}
        batches = plan_campaign(params, run_id="r1")  # 10, 10, 5: this hour, the next, the one after
        now = datetime.now(UTC)
        hour = hour_floor(now)
        # Batch 1 slept through its slot (two hours ago); batch 2 now fills this hour.
        ledger.reschedule(warehouse, "c1", 1, hour - timedelta(hours=2))
        ledger.reschedule(warehouse, "c1", 2, max(hour, now))

        result = send_batch(batches[0], params, "r1", now=now)

        moved = parse_utc(by_batch(warehouse)[1]["send_at"])
        assert moved == hour + timedelta(hours=1)  # not into the full hour
        [stored] = clean_sandbox.record()["batches"]
        assert result["resent"] and stored["send_at"] == utc_text(moved)
        per_hour = {}
        for entry in by_batch(warehouse).values():
            slot = hour_floor(parse_utc(entry["send_at"]))
            per_hour[slot] = per_hour.get(slot, 0) + entry["recipient_count"]
        assert max(per_hour.values()) <= 10

    def test_a_late_batch_whose_new_slot_is_far_waits_again(self, airflow_db, warehouse, clean_sandbox):
        create_recipients_table(warehouse, "recipients", 25)
        params = {**PARAMS, "submit_ahead_minutes": 0}
        batches = plan_campaign(params, run_id="r1")
        now = datetime.now(UTC)
        ledger.reschedule(warehouse, "c1", 1, hour_floor(now) - timedelta(hours=1))
        ledger.reschedule(warehouse, "c1", 2, max(hour_floor(now), now))

        wait = send_batch(batches[0], params, "r1", now=now)

        assert isinstance(wait, Wait) and wait.until == hour_floor(now) + timedelta(hours=1)
        assert sends(clean_sandbox) == []


class TestPauseAndResume:
    def test_a_paused_campaign_submits_nothing_until_resumed(self, airflow_db, warehouse, clean_sandbox):
        create_recipients_table(warehouse, "recipients", 10)
        [batch] = plan_campaign(PARAMS, run_id="r1")

        assert plan_campaign({**PARAMS, "mode": "pause"}, run_id="p1") == []
        assert status(warehouse) == "paused"
        assert "paused by run p1" in definition.read(warehouse, "c1")["status_reason"]
        wait = send_batch(batch, PARAMS, "r1")
        assert isinstance(wait, Wait) and wait.why == "paused" and sends(clean_sandbox) == []

        # No live run holds the campaign, so the resume run sends its unsent batches itself.
        resumed = plan_campaign({**PARAMS, "mode": "resume"}, run_id="r2")
        assert [b["batch_number"] for b in resumed] == [1] and status(warehouse) == "planned"
        assert send_batch(resumed[0], PARAMS, "r2")["resent"]
        assert len(clean_sandbox.record()["batches"]) == 1

    def test_a_resume_while_the_sending_run_lives_leaves_the_batches_to_it(self, airflow_db, warehouse):
        create_recipients_table(warehouse, "recipients", 10)
        plan_campaign(PARAMS, dag_id="d", run_id="r1")
        plan_campaign({**PARAMS, "mode": "pause"}, run_id="p1")

        live = {"r1": "running"}
        resumed = plan_campaign(
            {**PARAMS, "mode": "resume"}, dag_id="d", run_id="r2", run_state=lambda _dag, run: live.get(run)
        )

        assert resumed == [] and status(warehouse) == "planned"

    def test_a_resume_records_new_bad_start_thresholds_for_the_reconcile(self, airflow_db, warehouse):
        create_recipients_table(warehouse, "recipients", 10)
        plan_campaign(PARAMS, dag_id="d", run_id="r1")
        plan_campaign({**PARAMS, "mode": "pause"}, run_id="p1")

        plan_campaign(
            {**PARAMS, "mode": "resume", "max_complaint_rate": 0.01},
            run_id="q1",
            run_state=lambda _dag, run: "running" if run == "r1" else None,
        )

        recorded = definition.read(warehouse, "c1")
        assert (recorded["max_complaint_rate"], recorded["sending_run_id"]) == (0.01, "r1")

    def test_resume_refuses_a_campaign_that_is_not_paused(self, airflow_db, warehouse):
        create_recipients_table(warehouse, "recipients", 10)
        plan_campaign(PARAMS, run_id="r1")
        with pytest.raises(AirflowFailException, match="not paused"):
            plan_campaign({**PARAMS, "mode": "resume"}, run_id="r2")

    def test_steering_a_campaign_never_planned_is_refused(self, airflow_db, warehouse):
        with pytest.raises(AirflowFailException, match="never planned"):
            plan_campaign({**PARAMS, "mode": "pause"}, run_id="p1")


class TestCancel:
    def test_a_cancel_stops_waiting_batches_and_cancels_those_at_the_provider_before_their_slot(
        self, airflow_db, warehouse, clean_sandbox
    ):
        create_recipients_table(warehouse, "recipients", 25)
        params = {**PARAMS, "start_at": utc_text(tomorrow_0900()), "submit_ahead_minutes": ALL_AT_ONCE}
        batches = plan_campaign(params, run_id="r1")
        send_batch(batches[0], params, "r1")  # at the provider, its slot tomorrow

        assert plan_campaign({**params, "mode": "cancel"}, run_id="x1") == []

        assert status(warehouse) == "cancelled"
        assert {n: e["status"] for n, e in by_batch(warehouse).items()} == {
            1: "cancelled",
            2: "cancelled",
            3: "cancelled",
        }
        [stored] = clean_sandbox.record()["batches"]
        assert stored["status"] == "cancelled"
        with pytest.raises(AirflowSkipException, match="cancelled"):
            send_batch(batches[1], params, "r1")
        assert len(sends(clean_sandbox)) == 1

    def test_a_batch_within_ten_minutes_of_its_slot_stays_scheduled(
        self, airflow_db, warehouse, clean_sandbox
    ):
        create_recipients_table(warehouse, "recipients", 10)
        [batch] = plan_campaign(PARAMS, run_id="r1")  # its slot is now
        send_batch(batch, PARAMS, "r1")

        plan_campaign({**PARAMS, "mode": "cancel"}, run_id="x1")

        assert by_batch(warehouse)[1]["status"] == "scheduled"
        [stored] = clean_sandbox.record()["batches"]
        assert stored["status"] != "cancelled"  # it goes out as scheduled (the sandbox may have sent it)

    @pytest.mark.parametrize("mode", ["send", "retry_failed", "pause", "resume"])
    def test_every_later_run_of_a_cancelled_campaign_is_refused_with_no_request(
        self, airflow_db, warehouse, clean_sandbox, mode
    ):
        create_recipients_table(warehouse, "recipients", 10)
        plan_campaign(PARAMS, run_id="r1")
        plan_campaign({**PARAMS, "mode": "cancel"}, run_id="x1")
        before = len(clean_sandbox.requests())

        with pytest.raises(CampaignCancelled, match="was cancelled .*cancelled by run x1"):
            plan_campaign({**PARAMS, "mode": mode}, run_id="r1")  # a clear of r1 too

        assert len(clean_sandbox.requests()) == before


class TestOneLiveRunPerCampaign:
    def test_a_run_while_another_live_run_sends_the_campaign_is_refused_naming_it(
        self, airflow_db, warehouse
    ):
        create_recipients_table(warehouse, "recipients", 10)
        # As a task's get_dagrun_state answers: the Task SDK's DagRunState (str() "DagRunState.RUNNING").
        live = {"r1": DagRunState.RUNNING}
        state = lambda _dag, run: live.get(run)  # noqa: E731
        plan_campaign(PARAMS, dag_id="d", run_id="r1", run_state=state)

        with pytest.raises(AirflowFailException, match="still being sent by run d/r1"):
            plan_campaign(PARAMS, dag_id="d", run_id="r2", run_state=state)
        # A clear of the run itself converges, and so does a run once r1 has ended.
        plan_campaign(PARAMS, dag_id="d", run_id="r1", run_state=state)
        live["r1"] = DagRunState.SUCCESS
        plan_campaign(PARAMS, dag_id="d", run_id="r2", run_state=state)
