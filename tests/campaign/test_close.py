"""close_ledger settles the run: what ended without an outcome is failed, and only the run's batches."""

from __future__ import annotations

import pytest

from demo.audience import create_recipients_table
from include.campaign import ledger
from include.campaign.plan import plan_campaign
from include.campaign.send import send_batch
from tests.helpers import SMALL_CAMPAIGN as PARAMS


class TestCloseLedger:
    def test_the_runs_batches_that_ended_without_an_outcome_are_marked_failed(
        self, airflow_db, warehouse, clean_sandbox
    ):
        from airflow.exceptions import AirflowException

        from include.campaign.close import close_ledger

        create_recipients_table(warehouse, "recipients", 30)
        params = {**PARAMS, "campaign_id": "c1"}
        batches = plan_campaign(params, run_id="r1")
        send_batch(batches[0], params, "r1")  # batch 1 is sent; 2 and 3 die without an outcome

        with pytest.raises(AirflowException, match="1 of 3 batches were not sent"):
            close_ledger(params, batches[:2], "r1")  # batch 3 is not this run's (e.g. waiting for quota)

        entries = {e["batch_number"]: e for e in ledger.rows(warehouse, "c1")}
        assert [entries[n]["status"] for n in (1, 2, 3)] == ["scheduled", "failed", "planned"]
        assert "ended without recording an outcome" in entries[2]["last_error"]
