"""The article's error table through the real DAG: faults injected in the sandbox, outcomes read from it.

Three batches of 10 (30 recipients, 10 per request). Server-error back-off is
shortened to 0.2 s by conftest; a 429's Retry-After is honoured as sent.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

from demo.audience import create_recipients_table
from include.campaign.ledger import rows as ledger_rows
from tests.conftest import DAY, load_campaign_dag, point_migosmtp_at
from tests.helpers import assert_ledger_matches_sandbox, sends

SMALL = {"max_batch_size": 10, "hourly_cap": 1000, "daily_cap": 1000, "start_at": f"{DAY}T09:00:00Z"}


def ledger(warehouse):
    return ledger_rows(warehouse, "c1")


def assert_each_recipient_scheduled_once(sandbox, expected: int = 30):
    received = Counter(r["to"] for b in sandbox.record()["batches"] for r in b["recipients"])
    assert sum(received.values()) == len(received) == expected


def assert_ledger_is_the_sandbox(warehouse, sandbox):
    rows = ledger_rows(warehouse, "c1", with_recipient_ids=True)
    assert_ledger_matches_sandbox(rows, sandbox.record(), sandbox.requests(), "c1")


class TestServerErrors:
    def test_5xx_that_recover_are_retried_and_each_batch_lands_once(self, run_campaign, audience, sandbox):
        sandbox.set_faults([{"action": "status", "status": 503, "times": 2}])

        run = run_campaign(**SMALL)

        assert run.state == "success"
        assert [r["status_code"] for r in sends(sandbox)].count(503) == 2
        assert len(sends(sandbox)) == 5
        assert_each_recipient_scheduled_once(sandbox)
        assert_ledger_is_the_sandbox(audience, sandbox)
        assert sum(r["attempts"] for r in ledger(audience)) == 5

    def test_5xx_that_persist_fail_the_batch_after_three_retries(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 10)
        sandbox.set_faults([{"action": "status", "status": 500, "times": 100}])

        run = run_campaign(**SMALL)

        assert run.state == "failed"
        assert run.states("send_batch") == ["failed"]
        assert run.states("close_ledger") == ["failed"]
        assert len(sends(sandbox)) == 4  # the first try and 3 retries, as the article says
        assert run.task("send_batch", 0).try_number == 4
        [row] = ledger(warehouse)
        assert row["status"] == "failed" and row["attempts"] == 4
        assert "server error (500 internal_error)" in row["last_error"]
        assert sandbox.record()["batches"] == []


class TestRateLimit:
    def test_429_waits_retry_after_and_does_not_use_up_the_5xx_retries(
        self, run_campaign, warehouse, sandbox
    ):
        create_recipients_table(warehouse, "recipients", 10)
        sandbox.set_faults(
            [
                {"action": "status", "status": 429, "retry_after": "1", "times": 2},
                {"action": "status", "status": 500, "times": 3},
            ]
        )

        run = run_campaign(**SMALL)

        assert run.state == "success"
        assert [r["status_code"] for r in sends(sandbox)] == [429, 429, 500, 500, 500, 202]
        assert run.task("send_batch", 0).try_number == 6
        assert_each_recipient_scheduled_once(sandbox, 10)
        assert_ledger_is_the_sandbox(warehouse, sandbox)


class TestErrorsThatMustNotBeRetried:
    def test_402_quota_exceeded_fails_the_batch_at_once_and_halts_the_run(
        self, run_campaign, audience, sandbox
    ):
        sandbox.set_faults([{"action": "status", "status": 402, "times": 1}])

        run = run_campaign(**SMALL)

        assert run.state == "failed"
        assert sorted(run.states("send_batch")) == ["failed", "skipped", "skipped"]
        rows = ledger(audience)
        assert sorted(r["status"] for r in rows) == ["failed", "halted", "halted"]
        [failed] = [r for r in rows if r["status"] == "failed"]
        assert failed["attempts"] == 1
        assert "quota exceeded" in failed["last_error"] and "monthly reset" in failed["last_error"]
        assert all(
            r["last_error"].startswith("not sent: the run was halted") for r in rows if r is not failed
        )
        assert len(sends(sandbox)) == 1  # no retry, and no other batch called the API
        assert sandbox.record()["batches"] == []

    def test_the_real_monthly_quota_running_out_part_way(self, run_campaign, audience, sandbox):
        sandbox.update_settings(monthly_limit=25)

        # No pre-flight: the quota runs out part-way, as when another client of the account spends it.
        run = run_campaign(**SMALL, quota_policy="ignore")

        assert run.state == "failed"
        statuses = [r["status"] for r in ledger(audience)]
        assert statuses.count("scheduled") == 2 and statuses.count("failed") == 1
        assert len(sends(sandbox)) == 3
        assert_each_recipient_scheduled_once(sandbox, 20)

    def test_401_wrong_key_fails_once_and_halts_the_run(self, run_campaign, audience, sandbox, monkeypatch):
        point_migosmtp_at(monkeypatch, sandbox, password="wrong")

        # quota_policy=ignore: the send, not the pre-flight, meets the 401
        run = run_campaign(**SMALL, quota_policy="ignore")

        assert run.state == "failed"
        assert sorted(run.states("send_batch")) == ["failed", "skipped", "skipped"]
        assert [r["status_code"] for r in sends(sandbox)] == [401]
        [failed] = [r for r in ledger(audience) if r["status"] == "failed"]
        assert "migosmtp_default" in failed["last_error"] and "wrong" not in failed["last_error"]
        assert sandbox.record()["batches"] == []

    def test_a_refused_request_fails_at_once_with_its_reason(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 10)
        sandbox.set_faults([{"action": "status", "status": 400, "message": "html is too large"}])

        run = run_campaign(**SMALL)

        assert run.state == "failed"
        assert run.task("send_batch", 0).try_number == 1
        [row] = ledger(warehouse)
        assert row["status"] == "failed" and "html is too large" in row["last_error"]
        assert len(sends(sandbox)) == 1


class TestNoAnswer:
    def test_a_2xx_without_batch_id_is_found_by_key_in_the_same_try(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 10)
        sandbox.set_faults([{"action": "malformed", "accept": True}])

        run = run_campaign(**SMALL)

        assert run.state == "success"
        assert run.task("send_batch", 0).try_number == 1
        assert len(sends(sandbox)) == 1
        assert_ledger_is_the_sandbox(warehouse, sandbox)

    def test_a_2xx_without_batch_id_and_nothing_under_the_key_is_retried(
        self, run_campaign, warehouse, sandbox
    ):
        create_recipients_table(warehouse, "recipients", 10)
        sandbox.set_faults([{"action": "malformed", "accept": False}])

        run = run_campaign(**SMALL)

        assert run.state == "success"
        assert run.task("send_batch", 0).try_number == 2
        assert [r["status_code"] for r in sends(sandbox)] == [202, 202]
        assert_each_recipient_scheduled_once(sandbox, 10)
        assert_ledger_is_the_sandbox(warehouse, sandbox)

    def test_accepted_but_answer_dropped_is_found_by_key_not_sent_again(
        self, run_campaign, audience, sandbox
    ):
        sandbox.set_faults([{"action": "drop_after_accept", "times": 1}])

        run = run_campaign(**SMALL)

        assert run.state == "success"
        assert len(sandbox.record()["batches"]) == 3
        assert len(sends(sandbox)) == 3  # the dropped batch was found by its key, not re-posted
        lookups = [r for r in sandbox.requests() if r["path"].startswith("/v1/email/batches")]
        assert len(lookups) == 1
        assert_each_recipient_scheduled_once(sandbox)
        assert_ledger_is_the_sandbox(audience, sandbox)

    def test_timeout_is_checked_with_the_api_before_resending(
        self, run_campaign, warehouse, sandbox, monkeypatch
    ):
        create_recipients_table(warehouse, "recipients", 10)
        point_migosmtp_at(monkeypatch, sandbox, timeout=1)
        sandbox.set_faults([{"action": "latency", "seconds": 2, "times": 1}])

        run = run_campaign(**SMALL)

        assert run.state == "success"
        assert run.task("send_batch", 0).try_number >= 2
        assert len(sandbox.record()["batches"]) == 1
        assert_each_recipient_scheduled_once(sandbox, 10)
        assert_ledger_is_the_sandbox(warehouse, sandbox)

    def test_connection_dropped_before_acceptance_is_resent_once(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 10)
        sandbox.set_faults([{"action": "drop", "times": 1}])

        run = run_campaign(**SMALL)

        assert run.state == "success"
        sends_and_lookups = [r for r in sandbox.requests() if r["path"] != "/v1/account/quota"]
        assert [r["method"] for r in sends_and_lookups] == ["POST", "GET", "POST"]
        assert_each_recipient_scheduled_once(sandbox, 10)
        assert_ledger_is_the_sandbox(warehouse, sandbox)


class TestSlowProvider:
    def test_a_batch_try_is_bounded_by_an_execution_timeout(self, airflow_db):
        send_batch = load_campaign_dag().get_task("send_batch")

        # 3 requests at the 120 s ceiling, 120 s holding the pool slot, a minute for the warehouse.
        assert send_batch.execution_timeout == timedelta(minutes=9)

    def test_a_trickled_answer_ends_at_the_deadline_and_the_retry_finds_the_batch(
        self, run_campaign, warehouse, sandbox, monkeypatch
    ):
        create_recipients_table(warehouse, "recipients", 10)
        point_migosmtp_at(monkeypatch, sandbox, timeout=1)
        # 30 s to send the answer, a few bytes every quarter second: no read timeout ever trips.
        sandbox.set_faults([{"action": "trickle", "seconds": 30, "times": 1}])

        started = time.monotonic()
        run = run_campaign(**SMALL)
        elapsed = time.monotonic() - started

        assert run.state == "success"
        assert run.task("send_batch", 0).try_number == 2  # the first try ended at its 1 s deadline
        assert elapsed < 30
        assert len(sends(sandbox)) == 1  # the retry asked by key and found it: not sent again
        [row] = ledger(warehouse)
        assert row["attempts"] == 1
        assert_each_recipient_scheduled_once(sandbox, 10)
        assert_ledger_is_the_sandbox(warehouse, sandbox)


class TestSecrets:
    def test_a_key_echoed_in_a_2xx_without_batch_id_is_not_in_the_ledger_or_the_logs(
        self, run_campaign, warehouse, sandbox, monkeypatch, caplog, capfd
    ):
        create_recipients_table(warehouse, "recipients", 10)
        key = "sk-echoed-0123456789"
        sandbox.update_settings(api_key=key)
        point_migosmtp_at(monkeypatch, sandbox, password=key)
        sandbox.set_faults([{"action": "malformed", "body": f"accepted for {key}", "times": 100}])

        run = run_campaign(**SMALL)

        assert run.state == "failed"  # every try answered 202 without a batch_id: given up after 4
        [row] = ledger(warehouse)
        assert "without a batch_id (body starts 'accepted for [redacted]')" in row["last_error"]
        out, err = capfd.readouterr()
        assert "without a batch_id" in caplog.text + out + err  # the logs were captured
        for text in (row["last_error"], caplog.text, out, err):
            assert key[:8] not in text
