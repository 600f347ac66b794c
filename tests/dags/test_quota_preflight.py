"""The quota pre-flight through the real DAG: the sandbox's monthly quota, and its quota endpoint failing.

Three batches of 10 (30 recipients). ``quota_policy`` decides what a campaign
that does not fit does: refuse (the default), send_what_fits, or ignore.
"""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.campaign import definition
from include.campaign.ledger import rows as ledger_rows
from include.campaign.plan import plan_campaign
from include.campaign.quota import QuotaCheckFailed
from tests.conftest import DAY
from tests.helpers import received, sends

SMALL = {"max_batch_size": 10, "hourly_cap": 1000, "daily_cap": 1000, "start_at": f"{DAY}T09:00:00Z"}
PARAMS = {
    "recipients_table": "recipients",
    "from_email": "news@example.com",
    "subject": "Hello {{first_name}}",
    "html_body": "<p>Hi</p>",
    "text_body": "Hi",
    "dry_run": False,
    "mode": "send",
    **SMALL,
}


def quota_checks(sandbox):
    return [r for r in sandbox.requests() if r["path"] == "/v1/account/quota"]


class TestRefuse:
    def test_a_campaign_that_does_not_fit_sends_nothing_and_keeps_no_plan(
        self, run_campaign, audience, sandbox
    ):
        sandbox.update_settings(monthly_limit=25)

        run = run_campaign(**SMALL)

        assert run.state == "failed" and run.states("plan") == ["failed"]
        assert sends(sandbox) == [] and len(quota_checks(sandbox)) == 1
        # Removed, so that it holds neither quota nor slots for other campaigns.
        assert ledger_rows(audience, "c1") == []

    def test_the_message_gives_what_it_needs_and_what_is_left(self, audience, sandbox):
        sandbox.update_settings(monthly_limit=25)

        with pytest.raises(AirflowFailException) as refused:
            plan_campaign({**PARAMS, "campaign_id": "c1"})

        message = str(refused.value)
        assert "needs 30 sends; 25 left this month (limit 25, used 0" in message
        assert "This run sent nothing" in message and "quota_policy=send_what_fits" in message
        assert "the 2 of 3 batches that fit" in message

    def test_other_campaigns_unsent_batches_hold_quota(self, run_campaign, audience, sandbox):
        # Campaign "a" is planned but its batches never reach the provider (402s, halted).
        sandbox.set_faults([{"action": "status", "status": 402, "times": 10}])
        assert run_campaign(campaign_id="a", **SMALL).state == "failed"
        sandbox.set_faults([])
        sandbox.update_settings(monthly_limit=50)

        with pytest.raises(AirflowFailException, match=r"needs 30 sends; 20 left .*held by other .* 30\)"):
            plan_campaign({**PARAMS, "campaign_id": "b"})

    def test_a_campaign_that_fits_is_sent(self, run_campaign, audience, sandbox):
        sandbox.update_settings(monthly_limit=30)

        assert run_campaign(**SMALL).state == "success"

        assert len(received(sandbox)) == 30 and len(quota_checks(sandbox)) == 1


class TestSendWhatFits:
    def test_sends_the_batches_that_fit_and_the_rest_after_the_reset(self, run_campaign, audience, sandbox):
        sandbox.update_settings(monthly_limit=25)

        run = run_campaign(**SMALL, quota_policy="send_what_fits")

        assert run.state == "success"
        assert run.states("send_batch") == ["success", "success"]
        rows = ledger_rows(audience, "c1")
        assert [r["status"] for r in rows] == ["scheduled", "scheduled", "planned"]
        assert rows[2]["last_error"].startswith("waiting for quota") and rows[2]["attempts"] == 0
        assert len(received(sandbox)) == 20
        assert definition.read(audience, "c1")["status"] == definition.PLANNED

        sandbox.update_settings(monthly_limit=1000)  # the monthly reset, or an upgrade
        resumed = run_campaign(**SMALL, mode="retry_failed", quota_policy="send_what_fits")

        assert resumed.state == "success" and resumed.states("send_batch") == ["success"]
        assert [r["status"] for r in ledger_rows(audience, "c1")] == ["scheduled"] * 3
        assert set(received(sandbox).values()) == {1} and len(received(sandbox)) == 30

    def test_nothing_fits_maps_no_batch(self, run_campaign, audience, sandbox):
        sandbox.update_settings(monthly_limit=5)

        run = run_campaign(**SMALL, quota_policy="send_what_fits")

        assert run.state == "success" and run.states("send_batch") == ["skipped"]  # mapped over nothing
        assert [r["status"] for r in ledger_rows(audience, "c1")] == ["planned"] * 3
        assert sends(sandbox) == []


class TestIgnoreAndDryRun:
    def test_ignore_does_not_ask(self, run_campaign, audience, sandbox):
        assert run_campaign(**SMALL, quota_policy="ignore").state == "success"
        assert quota_checks(sandbox) == []

    def test_a_dry_run_that_would_not_fit_still_previews(self, run_campaign, audience, sandbox):
        sandbox.update_settings(monthly_limit=5)

        run = run_campaign(**SMALL, dry_run=True)

        assert run.state == "success" and sends(sandbox) == []
        assert len(quota_checks(sandbox)) == 1
        assert len(ledger_rows(audience, "c1")) == 3


class TestQuotaEndpointFails:
    def test_a_server_error_fails_the_plan_and_sends_nothing(self, audience, sandbox):
        sandbox.set_faults([{"action": "status", "status": 503, "endpoint": "quota"}])

        with pytest.raises(QuotaCheckFailed, match="cannot check the MigoSMTP quota.*nothing was sent.*503"):
            plan_campaign({**PARAMS, "campaign_id": "c1"})

        assert sends(sandbox) == [] and ledger_rows(audience, "c1") == []

    def test_the_plans_retry_asks_again_and_the_campaign_goes_out(self, run_campaign, audience, sandbox):
        sandbox.set_faults([{"action": "drop", "endpoint": "quota"}])

        run = run_campaign(**SMALL)

        assert run.state == "success" and run.task("plan").try_number == 2
        assert len(quota_checks(sandbox)) == 2 and len(received(sandbox)) == 30

    def test_a_rejected_key_fails_the_plan_at_once(self, run_campaign, audience, sandbox):
        sandbox.set_faults([{"action": "status", "status": 401, "endpoint": "quota"}])

        run = run_campaign(**SMALL)

        assert run.state == "failed" and run.task("plan").try_number == 1
        assert len(quota_checks(sandbox)) == 1 and sends(sandbox) == []

    def test_a_dry_run_goes_on_without_the_projection(self, run_campaign, audience, sandbox):
        sandbox.set_faults([{"action": "status", "status": 500, "endpoint": "quota"}])

        assert run_campaign(**SMALL, dry_run=True).state == "success"
        assert len(ledger_rows(audience, "c1")) == 3
