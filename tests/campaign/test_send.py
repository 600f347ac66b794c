"""The send task on its own: one planned batch against the real sandbox and a real warehouse,
called as the mapped task calls it (the DAG-level runs are in tests/dags/)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from demo.audience import create_recipients_table
from include.campaign import halts, ledger
from include.campaign.plan import plan_campaign
from include.campaign.send import send_batch
from include.migosmtp.client import OutcomeUnknown, QuotaExceeded, RequestRejected
from include.warehouse import STAGING_TABLE
from tests.helpers import SMALL_CAMPAIGN, sends

PARAMS = {**SMALL_CAMPAIGN, "campaign_id": "c1"}


@pytest.fixture
def planned(airflow_db, warehouse, clean_sandbox):
    """Campaign c1 planned in run r1: 25 recipients in batches of 10, 10 and 5."""
    create_recipients_table(warehouse, "recipients", 25)
    return plan_campaign(PARAMS, run_id="r1")


def status(hook, number: int) -> dict:
    return ledger.row(hook, "c1", number)


class TestSend:
    def test_a_batch_is_sent_once_with_its_key_and_recorded(self, planned, warehouse, clean_sandbox):
        result = send_batch(planned[0], PARAMS, "r1")
        again = send_batch(planned[0], PARAMS, "r1")  # a rerun of the same batch

        row = status(warehouse, 1)
        assert (row["status"], row["attempts"], row["batch_id"]) == ("scheduled", 1, result["batch_id"])
        assert (result["resent"], again["resent"], again["batch_id"]) == (True, False, result["batch_id"])
        [post] = sends(clean_sandbox)
        assert post["idempotency_key"] == row["idempotency_key"]
        [stored] = clean_sandbox.record()["batches"]
        assert len(stored["recipients"]) == 10 and stored["subject"] == PARAMS["subject"]

    def test_the_recorded_definition_is_sent_not_the_runs_params(self, planned, clean_sandbox):
        send_batch(planned[0], {**PARAMS, "subject": "Changed since the plan"}, "r1")
        [stored] = clean_sandbox.record()["batches"]
        assert stored["subject"] == PARAMS["subject"]

    def test_an_attempt_that_reached_the_provider_is_found_by_key_not_sent_again(
        self, planned, warehouse, clean_sandbox
    ):
        # The answer is lost after the provider took the batch: the task fails, the retry asks first.
        clean_sandbox.set_faults([{"action": "drop_after_accept"}])
        with pytest.raises(OutcomeUnknown):
            send_batch(planned[0], PARAMS, "r1")
        assert status(warehouse, 1)["attempts"] == 1

        result = send_batch(planned[0], PARAMS, "r1")

        assert len(sends(clean_sandbox)) == 1 and len(clean_sandbox.record()["batches"]) == 1
        assert status(warehouse, 1)["status"] == "scheduled" and result["batch_id"]

    def test_a_dry_run_sends_nothing(self, planned, clean_sandbox):
        with pytest.raises(AirflowSkipException, match="dry run"):
            send_batch(planned[0], {**PARAMS, "dry_run": True}, "r1")
        assert sends(clean_sandbox) == []

    def test_a_batch_that_was_not_planned_fails(self, planned):
        with pytest.raises(AirflowFailException, match="batch 9 of campaign 'c1' was not planned"):
            send_batch({**planned[0], "batch_number": 9}, PARAMS, "r1")

    def test_a_batch_whose_staged_rows_changed_is_refused(self, planned, warehouse, clean_sandbox):
        warehouse.run(f"DELETE FROM {STAGING_TABLE} WHERE batch_number = 1 AND position = 1")
        with pytest.raises(AirflowFailException, match="9 staged recipients but the ledger planned 10"):
            send_batch(planned[0], PARAMS, "r1")
        assert sends(clean_sandbox) == [] and status(warehouse, 1)["attempts"] == 0


class TestFailures:
    def test_a_402_records_the_failure_and_halts_the_run_for_the_other_batches(
        self, planned, warehouse, clean_sandbox
    ):
        clean_sandbox.set_faults([{"action": "status", "status": 402}])
        with pytest.raises(QuotaExceeded):
            send_batch(planned[0], PARAMS, "r1")

        assert status(warehouse, 1)["status"] == "failed"
        assert halts.current(warehouse, "c1", "r1")["batch_number"] == 1
        with pytest.raises(AirflowSkipException, match="halted by batch 1"):
            send_batch(planned[1], PARAMS, "r1")
        assert status(warehouse, 2)["status"] == "halted" and status(warehouse, 2)["attempts"] == 0
        assert len(sends(clean_sandbox)) == 1
        # The halt is the run's: another run of the campaign is not halted by it.
        assert send_batch(planned[1], PARAMS, "r2")["resent"] is True

    def test_a_refused_request_records_the_failure_without_halting(self, planned, warehouse, clean_sandbox):
        clean_sandbox.set_faults([{"action": "status", "status": 422, "message": "bad sender"}])
        with pytest.raises(RequestRejected):
            send_batch(planned[0], PARAMS, "r1")

        row = status(warehouse, 1)
        assert row["status"] == "failed" and "bad sender" in row["last_error"]
        assert halts.current(warehouse, "c1", "r1") is None
