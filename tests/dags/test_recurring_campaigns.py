"""Recurring campaigns and runs that converge, with dag.test() by logical date against the sandbox.

A scheduled run names its campaign after its logical date. ``run(dag_id, date)``
runs ``dag.test()`` with ``run_after`` at the logical date, so a second call
replaces the first run with one of the same run_id and fresh task instances:
to the campaign (keyed by campaign_id and run_id in the warehouse) that is
what clearing the run does. The deployment tier clears real runs through the
REST API. Every assertion about what was sent reads the sandbox's own record.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from demo.audience import create_recipients_table
from include.campaign import definition
from include.campaign.ledger import rows as ledger_rows
from include.campaign.settings import derive_campaign_id
from tests.conftest import ALL_AT_ONCE, FACTORY_DAG_ID, load_campaign_dag, past_monday_0900, point_migosmtp_at
from tests.helpers import api_requests

WEEKLY = "weekly_newsletter"


def run(dag_id: str, logical_date: datetime, **conf):
    conf.setdefault("submit_ahead_minutes", ALL_AT_ONCE)
    return load_campaign_dag(dag_id).test(logical_date=logical_date, run_after=logical_date, run_conf=conf)


def assert_sent_once_and_ledger_is_the_sandbox(sandbox, warehouse, campaign_id: str, recipients: int):
    batches = [b for b in sandbox.record()["batches"] if f"campaign:{campaign_id}" in b["tags"]]
    received = Counter(r["to"] for b in batches for r in b["recipients"])
    assert len(received) == recipients and set(received.values()) == {1}
    rows = ledger_rows(warehouse, campaign_id)
    assert {r["status"] for r in rows} == {"scheduled"}
    assert {r["idempotency_key"]: r["batch_id"] for r in rows} == {
        b["idempotency_key"]: b["batch_id"] for b in batches
    }
    return batches


@pytest.fixture
def ready(airflow_db, clean_sandbox, warehouse):
    return warehouse


class TestWeeklyNewsletter:
    def test_a_past_week_is_sent_once_from_now_then_its_rerun_sends_nothing(self, ready, sandbox):
        create_recipients_table(ready, "newsletter_subscribers", 25)
        logical_date = past_monday_0900(weeks_back=1)
        campaign_id = derive_campaign_id(WEEKLY, logical_date)
        this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

        first = run(WEEKLY, logical_date)

        assert first.state == "success"
        [batch] = assert_sent_once_and_ledger_is_the_sandbox(sandbox, ready, campaign_id, 25)
        # A past week is sent from now, never into a slot that has passed.
        assert batch["send_at"] >= f"{this_hour:%Y-%m-%dT%H:%M:%SZ}"
        assert batch["subject"] == "This week at Example" and "{{first_name}}" in batch["html"]
        recorded = definition.read(ready, campaign_id)
        assert (recorded["dag_id"], recorded["status"]) == (WEEKLY, definition.SCHEDULED)
        before = len(api_requests(sandbox))

        again = run(WEEKLY, logical_date)

        assert again.state == "success" and again.run_id == first.run_id
        assert len(api_requests(sandbox)) == before

    def test_each_week_is_its_own_campaign(self, ready, sandbox):
        create_recipients_table(ready, "newsletter_subscribers", 5)

        for weeks_back in (2, 1):
            assert run(WEEKLY, past_monday_0900(weeks_back)).state == "success"

        for weeks_back in (2, 1):
            campaign_id = derive_campaign_id(WEEKLY, past_monday_0900(weeks_back))
            assert_sent_once_and_ledger_is_the_sandbox(sandbox, ready, campaign_id, 5)

    def test_a_run_failed_by_5xx_and_cleared_after_the_api_recovers_finishes_the_campaign(
        self, ready, sandbox
    ):
        create_recipients_table(ready, "newsletter_subscribers", 25)
        logical_date = past_monday_0900(weeks_back=1)
        sandbox.set_faults([{"action": "status", "status": 503, "times": 1000}])

        failed = run(WEEKLY, logical_date)

        assert failed.state == "failed"
        assert sandbox.record()["batches"] == []
        sandbox.set_faults([])
        cleared = run(WEEKLY, logical_date)  # the same run, cleared

        assert cleared.state == "success"
        assert cleared.run_id == failed.run_id
        assert_sent_once_and_ledger_is_the_sandbox(
            sandbox, ready, derive_campaign_id(WEEKLY, logical_date), 25
        )

    def test_a_run_halted_by_a_401_then_cleared_with_the_key_fixed_finishes_the_campaign(
        self, ready, sandbox, monkeypatch
    ):
        create_recipients_table(ready, "newsletter_subscribers", 30)
        logical_date, conf = past_monday_0900(weeks_back=1), {"max_batch_size": 10}
        point_migosmtp_at(monkeypatch, sandbox, password="wrong")

        # quota_policy=ignore: the send, not the pre-flight, meets the 401
        halted = run(WEEKLY, logical_date, **conf, quota_policy="ignore")

        assert halted.state == "failed"
        statuses = sorted(r["status"] for r in ledger_rows(ready, derive_campaign_id(WEEKLY, logical_date)))
        assert statuses == ["failed", "halted", "halted"]
        point_migosmtp_at(monkeypatch, sandbox)
        cleared = run(WEEKLY, logical_date, **conf)

        assert cleared.state == "success" and cleared.run_id == halted.run_id
        assert_sent_once_and_ledger_is_the_sandbox(
            sandbox, ready, derive_campaign_id(WEEKLY, logical_date), 30
        )


class TestFactoryBuiltCampaign:
    def test_param_defaults_shape_what_is_sent_once_and_a_rerun_sends_nothing(self, ready, sandbox):
        create_recipients_table(ready, "members", 30)
        logical_date = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        campaign_id = derive_campaign_id(FACTORY_DAG_ID, logical_date)

        first = run(FACTORY_DAG_ID, logical_date)

        assert first.state == "success"
        batches = assert_sent_once_and_ledger_is_the_sandbox(sandbox, ready, campaign_id, 30)
        assert [b["recipient_count"] for b in batches] == [10, 10, 10]  # max_batch_size=10
        assert {(b["subject"], b["html"], b["text"]) for b in batches} == {
            ("Daily {{first_name}}", "<p>{{segment}}</p>", "")
        }
        before = len(api_requests(sandbox))

        assert run(FACTORY_DAG_ID, logical_date).state == "success"
        assert len(api_requests(sandbox)) == before


class TestEveryRunConverges:
    """mode=send for a campaign already planned with the same definition finishes it."""

    CONF = {"max_batch_size": 10, "hourly_cap": 1000, "daily_cap": 1000}

    def test_send_again_after_a_401_halt_with_the_key_fixed_is_exactly_once(
        self, run_campaign, warehouse, sandbox, monkeypatch
    ):
        create_recipients_table(warehouse, "recipients", 30)
        point_migosmtp_at(monkeypatch, sandbox, password="wrong")
        # quota_policy=ignore: the send, not the pre-flight, meets the 401
        assert run_campaign(**self.CONF, quota_policy="ignore").state == "failed"
        point_migosmtp_at(monkeypatch, sandbox)

        run = run_campaign(**self.CONF)

        assert run.state == "success"
        assert_sent_once_and_ledger_is_the_sandbox(sandbox, warehouse, "c1", 30)
        assert [r["status_code"] for r in api_requests(sandbox) if r["method"] == "POST"] == [
            401,
            202,
            202,
            202,
        ]

    def test_send_again_after_a_402_part_way_sends_only_the_rest(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 30)
        sandbox.update_settings(monthly_limit=15)
        assert run_campaign(**self.CONF, quota_policy="ignore").state == "failed"  # 402 part-way
        sandbox.update_settings(monthly_limit=1000)

        run = run_campaign(**self.CONF)

        assert run.state == "success"
        assert len(run.states("send_batch")) == 2
        assert_sent_once_and_ledger_is_the_sandbox(sandbox, warehouse, "c1", 30)

    def test_send_again_when_everything_is_at_the_provider_succeeds_and_sends_nothing(
        self, run_campaign, warehouse, sandbox
    ):
        create_recipients_table(warehouse, "recipients", 30)
        assert run_campaign(**self.CONF).state == "success"
        before = len(api_requests(sandbox))

        run = run_campaign(**self.CONF)

        assert run.state == "success"
        assert run.states("plan") == ["success"] and run.states("close_ledger") == ["success"]
        assert len(api_requests(sandbox)) == before

    def test_the_same_campaign_with_another_subject_is_refused_before_anything_is_sent(
        self, run_campaign, warehouse, sandbox
    ):
        create_recipients_table(warehouse, "recipients", 30)
        sandbox.set_faults([{"action": "status", "status": 500, "times": 1000}])
        assert run_campaign(**self.CONF, subject="First {{first_name}}").state == "failed"
        sandbox.set_faults([])
        before = len(api_requests(sandbox))

        run = run_campaign(**self.CONF, subject="Second {{first_name}}")

        assert run.state == "failed" and run.states("plan") == ["failed"]
        assert len(api_requests(sandbox)) == before
        assert sandbox.record()["batches"] == []
        assert definition.read(warehouse, "c1")["definition"]["subject"] == "First {{first_name}}"

    def test_a_different_definition_replaces_a_plan_that_sent_nothing(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 30)
        assert run_campaign(**self.CONF, dry_run=True, subject="Draft").state == "success"

        run = run_campaign(**self.CONF, subject="Final {{first_name}}")

        assert run.state == "success"
        batches = assert_sent_once_and_ledger_is_the_sandbox(sandbox, warehouse, "c1", 30)
        assert {b["subject"] for b in batches} == {"Final {{first_name}}"}

    def test_retry_failed_sends_the_first_definition_whatever_the_run_says(
        self, run_campaign, warehouse, sandbox
    ):
        create_recipients_table(warehouse, "recipients", 30)
        sandbox.set_faults([{"action": "status", "status": 402}])
        assert run_campaign(**self.CONF, subject="First {{first_name}}").state == "failed"

        run = run_campaign(**self.CONF, mode="retry_failed")  # the form's default subject

        assert run.state == "success"
        batches = assert_sent_once_and_ledger_is_the_sandbox(sandbox, warehouse, "c1", 30)
        assert {b["subject"] for b in batches} == {"First {{first_name}}"}


class TestLargerThanOneRunCanMap:
    def test_plan_fails_with_the_count_the_limit_and_the_ways_out_and_keeps_nothing(
        self, run_campaign, warehouse, sandbox, monkeypatch
    ):
        create_recipients_table(warehouse, "recipients", 50)
        monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")

        run = run_campaign(max_batch_size=10, hourly_cap=1000, daily_cap=1000)

        assert run.state == "failed" and run.states("plan") == ["failed"]
        assert api_requests(sandbox) == []
        assert ledger_rows(warehouse, "c1") == []
        for table in ("email_campaign_recipients", "email_rejected_recipients", "email_campaigns"):
            assert warehouse.get_first(f"SELECT COUNT(*) FROM {table}")[0] == 0

    def test_the_message_gives_the_count_the_limit_and_the_ways_out(self, warehouse):
        from airflow.sdk.exceptions import AirflowFailException

        from include.campaign.plan import plan_campaign

        create_recipients_table(warehouse, "recipients", 50)
        params = {
            **load_campaign_dag().params.dump(),
            "campaign_id": "c1",
            "max_batch_size": 10,
            "hourly_cap": 1000,
            "daily_cap": 1000,
        }

        with pytest.raises(AirflowFailException) as refused:
            plan_campaign(params, max_batches=3)

        message = str(refused.value)
        assert "needs about 5 (50 rows, 10 recipients per batch so far) batches" in message
        assert "[core] max_map_length = 3" in message
        for way_out in ("AIRFLOW__CORE__MAX_MAP_LENGTH", "max_batch_size", "several campaigns"):
            assert way_out in message
        assert ledger_rows(warehouse, "c1") == []
