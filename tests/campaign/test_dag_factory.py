"""``campaign_dag`` on its own: the DAG it builds (no I/O, so no database is needed), its Params'
defaults, and what the UI shows for a batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk import TriggerRule

from include.campaign.alerts import CampaignHaltNotifier
from include.campaign.dag_factory import (
    API_POOL,
    PLANNING_POOL,
    SEND_BATCH_TIMEOUT,
    batch_label,
    campaign_dag,
)
from include.migosmtp.retry_policy import (
    MAX_RATE_WINDOW_SECONDS,
    MAX_REQUEST_TIMEOUT_SECONDS,
    MigoSmtpRetryPolicy,
)


class TestCampaignDagFactory:
    def test_param_defaults_replace_the_built_in_ones(self):
        from include.campaign.dag_factory import campaign_dag

        dag = campaign_dag(
            "factory_defaults", schedule="@daily", subject="Hi", hourly_cap=20, max_batch_size=9
        )

        assert dag.params.get_param("subject").value == "Hi"
        assert dag.params.get_param("hourly_cap").value == 20
        assert dag.params.get_param("max_batch_size").value == 9
        assert dag.params.get_param("daily_cap").value == 1500
        assert dag.params.get_param("campaign_id").value == ""

    def test_the_usual_dag_keywords_pass_through(self):
        from include.campaign.dag_factory import campaign_dag

        start = datetime(2026, 6, 1, tzinfo=UTC)
        dag = campaign_dag("factory_keywords", start_date=start, catchup=True, tags=["x"], description="d")

        assert (dag.start_date, dag.catchup, dag.tags, dag.description) == (start, True, {"x"}, "d")
        assert dag.schedule is None
        assert dag.params.get_param("campaign_id").has_value is False  # manual: required

    @pytest.mark.parametrize(
        ("defaults", "message"),
        [
            ({"subjekt": "typo"}, r"unknown campaign Param\(s\) subjekt"),
            ({"campaign_id": "fixed"}, "campaign_id cannot have a DAG-level default"),
            ({"hourly_cap": 0}, "default 0 for campaign Param 'hourly_cap' is invalid"),
            ({"recipients_table": "a; DROP TABLE b"}, "campaign Param 'recipients_table' is invalid"),
        ],
    )
    def test_a_bad_default_fails_at_parse_time_naming_it(self, defaults, message):
        from include.campaign.dag_factory import campaign_dag

        with pytest.raises((TypeError, ValueError), match=message):
            campaign_dag("factory_bad", schedule="@daily", **defaults)


@pytest.fixture(scope="module")
def dag():
    return campaign_dag("factory_shape", schedule="@daily")


class TestTheDagItBuilds:
    def test_plan_runs_alone_in_the_planning_pool(self, dag):
        assert dag.get_task("plan").pool == PLANNING_POOL

    def test_send_batch_retries_by_the_providers_error_table_in_the_api_pool(self, dag):
        send = dag.get_task("send_batch")
        assert send.pool == API_POOL and send.retries == 12
        assert isinstance(send.retry_policy, MigoSmtpRetryPolicy)
        callbacks = send.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert any(isinstance(cb, CampaignHaltNotifier) for cb in callbacks)

    def test_a_batch_try_is_bounded_by_its_three_requests_the_rate_hold_and_a_minute(self, dag):
        assert SEND_BATCH_TIMEOUT == timedelta(
            seconds=3 * MAX_REQUEST_TIMEOUT_SECONDS + MAX_RATE_WINDOW_SECONDS + 60
        )
        assert dag.get_task("send_batch").execution_timeout == SEND_BATCH_TIMEOUT

    def test_close_ledger_runs_whatever_happened_and_feeds_the_ledger_asset(self, dag):
        close = dag.get_task("close_ledger")
        assert close.trigger_rule == TriggerRule.ALL_DONE
        assert [o.name for o in close.outlets] == ["email_batch_ledger"]

    def test_several_campaigns_run_at_once(self, dag):
        # Runs last as long as their plans: plan, not the DAG, refuses two live runs of one campaign.
        assert dag.max_active_runs > 1


class TestBatchLabel:
    def test_names_the_batch_its_slot_and_its_size(self):
        batch = {
            "batch_number": 7,
            "batch_count": 34,
            "send_at": "2026-11-28T14:00:00Z",
            "recipient_count": 150,
        }
        assert batch_label(batch) == "batch 7/34 · 2026-11-28T14:00Z · 150"
