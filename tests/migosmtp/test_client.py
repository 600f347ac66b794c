"""Tests of ``include.migosmtp.client`` against the real MigoSMTP sandbox over HTTP.

No HTTP is mocked: the sandbox subprocess (``sandbox`` / ``clean_sandbox`` in
``conftest.py``) stands in for the provider, and faults are injected through
its admin endpoints. The connection ``migosmtp_default`` comes from the
``AIRFLOW_CONN_MIGOSMTP_DEFAULT`` environment variable the fixture sets.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import requests

import include.migosmtp.client as client_module
from include.campaign.audience import Recipient
from include.migosmtp.client import (
    MAX_PROVIDER_TEXT,
    MAX_RETRY_AFTER_SECONDS,
    MIGOSMTP_CONN_ID,
    IdempotencyConflict,
    InsecureConnection,
    InvalidApiKey,
    MalformedResponse,
    MigoSmtpClient,
    MigoSmtpError,
    MigoSmtpHook,
    OutcomeUnknown,
    Quota,
    QuotaExceeded,
    RateLimited,
    RateWindow,
    RequestRejected,
    SendReceipt,
    ServerError,
    TooLate,
    batch_tags,
    build_payload,
    idempotency_key,
    parse_retry_after,
    pause_after_send,
    provider_text,
)
from include.migosmtp.retry_policy import MigoSmtpRetryPolicy

API_KEY = "test-key"
SEND_AT = datetime(2030, 5, 1, 9, 0, 0, tzinfo=UTC)


def recipients(n: int = 2) -> list[Recipient]:
    return [
        Recipient(
            recipient_id=f"r{i}",
            email=f"user{i}@example.org",
            variables={"first_name": f"Zoë{i}", "code": i, "tier": {"name": "gold"}},
        )
        for i in range(n)
    ]


def make_payload(n: int = 2, campaign_id: str = "spring-sale", batch_number: int = 1) -> dict[str, Any]:
    return build_payload(
        from_email="news@example.com",
        subject="Hello {{first_name}}",
        html="<p>Hi {{first_name}}, your code is {{code}}</p>",
        text="Hi {{first_name}}, your code is {{code}}",
        recipients=recipients(n),
        send_at=SEND_AT,
        tags=batch_tags(campaign_id, batch_number),
    )


def set_connection(
    monkeypatch: pytest.MonkeyPatch, sandbox, conn_id: str = MIGOSMTP_CONN_ID, **fields
) -> None:
    """Point ``conn_id`` at the sandbox with the given connection fields (e.g. password=...)."""
    conn = {"conn_type": "http", "host": sandbox.host, "port": sandbox.port, "schema": "http", **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def wait_for_batches(sandbox, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The sandbox's batches once there are ``count`` of them (a delayed handler may still be working)."""
    deadline = time.monotonic() + timeout
    while True:
        batches = sandbox.record()["batches"]
        if len(batches) >= count or time.monotonic() > deadline:
            return batches
        time.sleep(0.05)


# --- pure helpers ------------------------------------------------------------------------------------


class TestIdempotencyKey:
    def test_is_deterministic(self) -> None:
        assert idempotency_key("spring-sale", 3) == idempotency_key("spring-sale", 3)
        assert idempotency_key("spring-sale", 3) == "bulk-email:spring-sale:batch-3"

    def test_is_distinct_per_campaign_and_batch(self) -> None:
        keys = {idempotency_key(c, b) for c in ("a", "b", "a.1", "a-1", "1") for b in (1, 2, 11, 12, 111)}
        assert len(keys) == 25

    def test_longest_campaign_id_fits_the_255_char_limit(self, clean_sandbox) -> None:
        # campaign_id is capped at 100 characters by CAMPAIGN_ID_PATTERN in include.campaign.settings.
        key = idempotency_key("c" * 100, 10**12)
        assert len(key) <= 255
        receipt = MigoSmtpClient().send_bulk(make_payload(1, "c" * 100, 10**12), key)
        [batch] = clean_sandbox.record()["batches"]
        assert batch["idempotency_key"] == key
        assert batch["batch_id"] == receipt.batch_id


class TestBatchTags:
    def test_tags_name_campaign_and_batch(self) -> None:
        assert batch_tags("spring-sale", 4) == ["campaign:spring-sale", "batch:spring-sale:4"]


class TestBuildPayload:
    def test_body_has_the_articles_fields_untouched(self) -> None:
        payload = make_payload(2)
        assert payload == {
            "from": "news@example.com",
            "subject": "Hello {{first_name}}",
            "html": "<p>Hi {{first_name}}, your code is {{code}}</p>",
            "text": "Hi {{first_name}}, your code is {{code}}",
            "recipients": [
                {
                    "to": "user0@example.org",
                    "variables": {"first_name": "Zoë0", "code": 0, "tier": {"name": "gold"}},
                },
                {
                    "to": "user1@example.org",
                    "variables": {"first_name": "Zoë1", "code": 1, "tier": {"name": "gold"}},
                },
            ],
            "send_at": "2030-05-01T09:00:00Z",
            "tags": ["campaign:spring-sale", "batch:spring-sale:1"],
        }

    def test_send_at_is_converted_to_utc(self) -> None:
        payload = build_payload(
            from_email="news@example.com",
            subject="s",
            html="h",
            text="t",
            recipients=recipients(1),
            send_at=datetime(2030, 5, 1, 11, 30, 15, 987654, tzinfo=timezone(timedelta(hours=2))),
            tags=[],
        )
        assert payload["send_at"] == "2030-05-01T09:30:15Z"


class TestParseRetryAfter:
    NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)

    @pytest.mark.parametrize(("value", "expected"), [("7", 7.0), (" 120 ", 120.0), ("0", 0.0)])
    def test_delta_seconds(self, value: str, expected: float) -> None:
        assert parse_retry_after(value) == expected

    def test_http_date_in_the_future(self) -> None:
        value = format_datetime(self.NOW + timedelta(seconds=90), usegmt=True)
        assert value == "Tue, 01 Jan 2030 12:01:30 GMT"
        assert parse_retry_after(value, now=self.NOW) == 90.0

    def test_http_date_in_the_past_means_now(self) -> None:
        assert parse_retry_after("Tue, 01 Jan 2030 11:00:00 GMT", now=self.NOW) == 0.0

    def test_http_date_without_zone_is_utc(self) -> None:
        assert parse_retry_after("Tue, 01 Jan 2030 12:00:30", now=self.NOW) == 30.0

    @pytest.mark.parametrize("value", [None, "", "   ", "soon", "-5", "1.5", "Tue, 99 Foo 2030"])
    def test_garbage_is_none(self, value: str | None) -> None:
        assert parse_retry_after(value) is None

    def test_non_ascii_digit_is_none(self) -> None:
        assert parse_retry_after("\u00b2") is None


# --- the hook ------------------------------------------------------------------------------------------


class TestRateWindow:
    HEADERS = {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "40", "X-RateLimit-Reset": "17"}

    def test_is_read_from_the_headers(self):
        assert RateWindow.from_headers(self.HEADERS) == RateWindow(300, 40, 17.0)

    @pytest.mark.parametrize(
        "change",
        [
            {"X-RateLimit-Limit": None},
            {"X-RateLimit-Remaining": "many"},
            {"X-RateLimit-Reset": "-1"},
            {"X-RateLimit-Reset": "1e14"},
            {"X-RateLimit-Limit": "0"},
            {"X-RateLimit-Remaining": "-3"},
        ],
    )
    def test_missing_or_senseless_headers_give_nothing_to_pace_by(self, change):
        headers = {k: v for k, v in {**self.HEADERS, **change}.items() if v is not None}

        assert RateWindow.from_headers(headers) is None

    @pytest.mark.parametrize(
        ("remaining", "reserve", "hold"),
        [(31, None, 0.0), (30, None, 0.0), (29, None, 17.0), (0, None, 17.0), (8, 8, 0.0), (7, 8, 17.0)],
    )
    def test_holds_the_slot_for_the_rest_of_the_window_once_fewer_than_the_reserve_remain(
        self, remaining, reserve, hold
    ):
        # The default reserve is a tenth of the limit: 30 of 300.
        assert RateWindow(300, remaining, 17.0).hold_seconds(reserve) == hold

    def test_a_small_limit_still_keeps_one_in_reserve(self):
        assert RateWindow(5, 0, 4.0).hold_seconds() == 4.0
        assert RateWindow(5, 1, 4.0).hold_seconds() == 0.0

    def test_a_send_reports_the_sandboxs_window(self, clean_sandbox):
        clean_sandbox.update_settings(requests_per_minute=10)

        first = MigoSmtpClient().send_bulk(make_payload(batch_number=1), idempotency_key("rw", 1))
        second = MigoSmtpClient().send_bulk(make_payload(batch_number=2), idempotency_key("rw", 2))

        assert (first.rate_window.limit, first.rate_window.remaining) == (10, 9)
        assert second.rate_window.remaining == 8
        assert 0 < second.rate_window.reset_seconds <= 60

    def test_a_reserve_above_half_the_window_is_capped_there(self):
        assert RateWindow(10, 5, 9.0).hold_seconds(8) == 0.0
        assert RateWindow(10, 4, 9.0).hold_seconds(8) == 9.0


class TestPauseAfterSend:
    def test_no_headers_no_pause(self):
        assert pause_after_send(None) == 0.0

    def test_the_first_half_of_a_window_never_pauses_nor_reads_the_variable(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW_VAR_MIGOSMTP_RATE_LIMIT_RESERVE", "300")

        assert pause_after_send(RateWindow(300, 150, 20.0)) == 0.0

    def test_the_variable_sets_the_reserve(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW_VAR_MIGOSMTP_RATE_LIMIT_RESERVE", "64")

        assert pause_after_send(RateWindow(300, 63, 20.0)) == 20.0
        assert pause_after_send(RateWindow(300, 64, 20.0)) == 0.0

    def test_without_the_variable_a_tenth_of_the_limit_is_kept(self, monkeypatch):
        monkeypatch.delenv("AIRFLOW_VAR_MIGOSMTP_RATE_LIMIT_RESERVE", raising=False)

        assert pause_after_send(RateWindow(300, 29, 20.0)) == 20.0
        assert pause_after_send(RateWindow(300, 30, 20.0)) == 0.0

    @pytest.mark.parametrize("value", ["0", "-1", "many", "2.5"])
    def test_an_invalid_variable_is_named_in_a_warning_and_the_default_used(self, monkeypatch, caplog, value):
        monkeypatch.setenv("AIRFLOW_VAR_MIGOSMTP_RATE_LIMIT_RESERVE", value)

        with caplog.at_level(logging.WARNING, logger="include.migosmtp.client"):
            assert pause_after_send(RateWindow(300, 29, 20.0)) == 20.0
            assert pause_after_send(RateWindow(300, 30, 20.0)) == 0.0

        assert "migosmtp_rate_limit_reserve" in caplog.text


class TestMigoSmtpHook:
    def test_auth_is_bearer_with_the_connection_password(self, sandbox) -> None:
        session = MigoSmtpHook().get_conn()
        prepared = session.prepare_request(requests.Request("POST", f"{sandbox.url}/v1/email/send/bulk"))
        assert prepared.headers["Authorization"] == f"Bearer {API_KEY}"

    def test_login_does_not_turn_it_into_basic_auth(self, sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, sandbox, login="someone", password=API_KEY)
        session = MigoSmtpHook().get_conn()
        prepared = session.prepare_request(requests.Request("GET", f"{sandbox.url}/v1/account/quota"))
        assert prepared.headers["Authorization"] == f"Bearer {API_KEY}"

    def test_missing_password_raises_before_any_request(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox)  # no password
        with pytest.raises(InvalidApiKey, match="'migosmtp_default' has no password") as excinfo:
            MigoSmtpHook().get_conn()
        assert excinfo.value.code == "missing_api_key"
        assert clean_sandbox.requests() == []


# --- the client ----------------------------------------------------------------------------------------


class TestSendBulk:
    def test_success_returns_receipt_and_sandbox_stores_body_as_sent(self, clean_sandbox) -> None:
        payload = make_payload(3)
        key = idempotency_key("spring-sale", 1)
        receipt = MigoSmtpClient().send_bulk(payload, key)

        assert isinstance(receipt, SendReceipt)
        assert receipt.batch_id.startswith("bat_")
        assert receipt.status == "scheduled"
        assert receipt.replayed is False
        [batch] = clean_sandbox.record()["batches"]
        assert batch["batch_id"] == receipt.batch_id
        assert batch["idempotency_key"] == key
        assert batch["from"] == "news@example.com"
        assert batch["subject"] == "Hello {{first_name}}"
        assert batch["html"] == "<p>Hi {{first_name}}, your code is {{code}}</p>"
        assert batch["text"] == "Hi {{first_name}}, your code is {{code}}"
        assert batch["recipients"] == payload["recipients"]
        assert batch["recipients"][0]["variables"] == {
            "first_name": "Zoë0",
            "code": 0,
            "tier": {"name": "gold"},
        }
        assert batch["send_at"] == "2030-05-01T09:00:00Z"
        assert batch["tags"] == ["campaign:spring-sale", "batch:spring-sale:1"]
        assert batch["recipient_count"] == 3
        [logged] = clean_sandbox.requests()
        assert (logged["method"], logged["path"], logged["status_code"], logged["idempotency_key"]) == (
            "POST",
            "/v1/email/send/bulk",
            202,
            key,
        )

    def test_login_on_the_connection_still_sends_bearer(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, login="someone", password=API_KEY)
        receipt = MigoSmtpClient().send_bulk(make_payload(1), "k-login")
        assert [b["batch_id"] for b in clean_sandbox.record()["batches"]] == [receipt.batch_id]

    def test_wrong_key_raises_invalid_api_key_naming_the_connection(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, password="not-the-key")
        with pytest.raises(InvalidApiKey) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-401")
        err = excinfo.value
        assert (err.status, err.code) == (401, "invalid_api_key")
        assert "'migosmtp_default'" in str(err)
        assert "missing or invalid API key" in str(err)
        assert "not-the-key" not in str(err)
        assert [r["status_code"] for r in clean_sandbox.requests()] == [401]
        assert clean_sandbox.record()["batches"] == []

    def test_wrong_key_on_another_connection_names_that_connection(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, conn_id="migosmtp_eu", password="not-the-key")
        with pytest.raises(InvalidApiKey) as excinfo:
            MigoSmtpClient(conn_id="migosmtp_eu").send_bulk(make_payload(1), "k-401-eu")
        assert "'migosmtp_eu'" in str(excinfo.value)

    def test_missing_password_raises_before_any_request(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, password="")
        with pytest.raises(InvalidApiKey, match="'migosmtp_default' has no password"):
            MigoSmtpClient().send_bulk(make_payload(1), "k-nopass")
        assert clean_sandbox.requests() == []
        assert clean_sandbox.record()["batches"] == []

    def test_same_key_same_body_replays_the_first_batch(self, clean_sandbox) -> None:
        client, payload = MigoSmtpClient(), make_payload(2)
        first = client.send_bulk(payload, "k-replay")
        second = client.send_bulk(payload, "k-replay")
        assert first.replayed is False
        assert second.replayed is True
        assert second.batch_id == first.batch_id
        assert second.status == "scheduled"
        assert [b["batch_id"] for b in clean_sandbox.record()["batches"]] == [first.batch_id]
        assert [r["replayed"] for r in clean_sandbox.requests()] == [False, True]

    def test_same_key_different_body_is_rejected_as_conflict(self, clean_sandbox) -> None:
        client = MigoSmtpClient()
        first = client.send_bulk(make_payload(2), "k-conflict")
        with pytest.raises(IdempotencyConflict) as excinfo:
            client.send_bulk(make_payload(3), "k-conflict")
        err = excinfo.value
        assert (err.status, err.code) == (409, "idempotency_conflict")
        assert "the batch changed since its first attempt" in str(err)
        assert "already used with a different request body" in str(err)
        assert MigoSmtpRetryPolicy().evaluate(err, 1, 13).retry_delay is None  # never retried
        assert [b["batch_id"] for b in clean_sandbox.record()["batches"]] == [first.batch_id]

    def test_429_raises_rate_limited_with_retry_after_seconds(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 429, "retry_after": "7"}])
        with pytest.raises(RateLimited) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-429")
        err = excinfo.value
        assert err.retry_after == 7.0
        assert (err.status, err.code) == (429, "rate_limited")
        assert "retrying after 7 s" in str(err)
        assert clean_sandbox.record()["batches"] == []

    def test_429_with_http_date_retry_after(self, clean_sandbox) -> None:
        when = datetime.now(UTC) + timedelta(seconds=120)
        clean_sandbox.set_faults(
            [{"action": "status", "status": 429, "retry_after": format_datetime(when, usegmt=True)}]
        )
        with pytest.raises(RateLimited) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-429-date")
        # The header has whole seconds and the request takes a moment.
        assert 110 <= excinfo.value.retry_after <= 120

    def test_429_with_http_date_in_the_past_retries_at_once(self, clean_sandbox) -> None:
        clean_sandbox.set_faults(
            [{"action": "status", "status": 429, "retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}]
        )
        with pytest.raises(RateLimited) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-429-past")
        assert excinfo.value.retry_after == 0.0

    def test_429_without_retry_after_falls_back_to_rate_limit_reset(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 429, "retry_after": ""}])
        with pytest.raises(RateLimited) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-429-reset")
        # X-RateLimit-Reset: whole seconds left in the sandbox's 60 s window (not the 60 s default).
        assert 1 <= excinfo.value.retry_after <= 60
        assert excinfo.value.retry_after == int(excinfo.value.retry_after)

    def test_429_with_non_ascii_digit_retry_after_is_still_rate_limited(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 429, "retry_after": "\u00b2"}])
        with pytest.raises(RateLimited):
            MigoSmtpClient().send_bulk(make_payload(1), "k-429-sup2")

    def test_real_rate_limit(self, clean_sandbox) -> None:
        clean_sandbox.update_settings(requests_per_minute=1)
        client = MigoSmtpClient()
        client.send_bulk(make_payload(1), "k-rl-1")
        with pytest.raises(RateLimited) as excinfo:
            client.send_bulk(make_payload(1), "k-rl-2")
        assert 1 <= excinfo.value.retry_after <= 60
        assert len(clean_sandbox.record()["batches"]) == 1

    def test_402_fault_raises_quota_exceeded_and_is_not_retried(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 402, "message": "plan exhausted"}])
        with pytest.raises(QuotaExceeded) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-402")
        err = excinfo.value
        assert (err.status, err.code) == (402, "quota_exceeded")
        message = str(err)
        assert "plan exhausted" in message
        assert "Upgrade the plan or wait for the monthly reset" in message
        assert "not retried" in message
        assert [r["status_code"] for r in clean_sandbox.requests()] == [402]

    def test_real_monthly_quota_raises_quota_exceeded(self, clean_sandbox) -> None:
        clean_sandbox.update_settings(monthly_limit=10, monthly_used=9)
        with pytest.raises(QuotaExceeded) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(2), "k-quota")
        message = str(excinfo.value)
        assert "sending 2 would exceed the monthly limit of 10 (9 used)" in message
        assert "Upgrade the plan or wait for the monthly reset" in message
        assert [r["status_code"] for r in clean_sandbox.requests()] == [402]
        assert clean_sandbox.record()["batches"] == []

    @pytest.mark.parametrize("status", [500, 503])
    def test_5xx_raises_server_error(self, clean_sandbox, status: int) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": status}])
        with pytest.raises(ServerError) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), f"k-{status}")
        err = excinfo.value
        assert (err.status, err.code) == (status, "internal_error")
        assert f"({status} internal_error)" in str(err)
        assert [r["status_code"] for r in clean_sandbox.requests()] == [status]
        assert clean_sandbox.record()["batches"] == []

    def test_error_is_not_stored_so_the_same_key_can_be_retried(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 500}])
        client, payload = MigoSmtpClient(), make_payload(1)
        with pytest.raises(ServerError):
            client.send_bulk(payload, "k-after-500")
        receipt = client.send_bulk(payload, "k-after-500")
        assert receipt.replayed is False
        assert [b["batch_id"] for b in clean_sandbox.record()["batches"]] == [receipt.batch_id]

    def test_too_many_recipients_is_rejected_with_the_apis_message(self, clean_sandbox) -> None:
        with pytest.raises(RequestRejected) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1001), "k-1001")
        err = excinfo.value
        assert (err.status, err.code) == (400, "too_many_recipients")
        assert "at most 1000 recipients per request, got 1001" in str(err)
        assert clean_sandbox.record()["batches"] == []

    def test_invalid_body_is_rejected_with_the_apis_message(self, clean_sandbox) -> None:
        payload = {**make_payload(1), "send_at": "2030-05-01 09:00"}
        with pytest.raises(RequestRejected) as excinfo:
            MigoSmtpClient().send_bulk(payload, "k-400")
        assert (excinfo.value.status, excinfo.value.code) == (400, "invalid_request")
        assert "send_at must be a UTC time formatted YYYY-MM-DDTHH:MM:SSZ" in str(excinfo.value)

    def test_timeout_raises_outcome_unknown_and_the_batch_can_be_found(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "latency", "seconds": 5}])
        client = MigoSmtpClient(timeout=0.5)
        with pytest.raises(OutcomeUnknown) as excinfo:
            client.send_bulk(make_payload(1), "k-slow")
        # The client gave up while the sandbox was still working on it: a timeout, not the answer.
        assert clean_sandbox.health()["in_flight"] == 1
        assert excinfo.value.status is None
        assert "(no complete answer within 0.5 s); the request may or may not" in str(excinfo.value)
        # The sandbox finishes the slow request after the client gave up.
        [batch] = wait_for_batches(clean_sandbox, 1)
        assert client.find_batch("k-slow")["batch_id"] == batch["batch_id"]

    def test_timeout_from_the_connection_extra(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, password=API_KEY, extra={"timeout": 0.5})
        clean_sandbox.set_faults([{"action": "latency", "seconds": 5}])
        with pytest.raises(OutcomeUnknown):
            MigoSmtpClient().send_bulk(make_payload(1), "k-slow-extra")
        assert clean_sandbox.health()["in_flight"] == 1  # gave up before the answer, at the extra's 0.5 s
        assert len(wait_for_batches(clean_sandbox, 1)) == 1

    def test_drop_after_accept_raises_outcome_unknown_and_find_batch_finds_it(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "drop_after_accept"}])
        client = MigoSmtpClient()
        with pytest.raises(OutcomeUnknown) as excinfo:
            client.send_bulk(make_payload(2), "k-dropped")
        assert isinstance(excinfo.value.__cause__, requests.ConnectionError)
        [accepted] = clean_sandbox.record()["batches"]
        found = client.find_batch("k-dropped")
        assert found is not None
        assert found["batch_id"] == accepted["batch_id"]
        assert found["idempotency_key"] == "k-dropped"
        assert found["recipient_count"] == 2
        # Resending under the same key replays instead of sending twice.
        receipt = client.send_bulk(make_payload(2), "k-dropped")
        assert (receipt.batch_id, receipt.replayed) == (accepted["batch_id"], True)
        assert len(clean_sandbox.record()["batches"]) == 1

    def test_drop_before_handling_raises_outcome_unknown_and_nothing_is_found(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "drop"}])
        client = MigoSmtpClient()
        with pytest.raises(OutcomeUnknown):
            client.send_bulk(make_payload(1), "k-lost")
        assert client.find_batch("k-lost") is None
        assert clean_sandbox.record()["batches"] == []

    def test_a_2xx_without_batch_id_is_looked_up_by_key_and_found(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "malformed", "accept": True}])

        receipt = MigoSmtpClient().send_bulk(make_payload(1), "k-garbled")

        [batch] = clean_sandbox.record()["batches"]
        assert receipt.batch_id == batch["batch_id"]
        calls = [(r["method"], r["path"]) for r in clean_sandbox.requests()]
        assert calls == [("POST", "/v1/email/send/bulk"), ("GET", "/v1/email/batches")]

    def test_a_2xx_without_batch_id_and_nothing_under_the_key_is_an_unknown_outcome(
        self, clean_sandbox
    ) -> None:
        clean_sandbox.set_faults([{"action": "malformed", "accept": False}])

        with pytest.raises(OutcomeUnknown) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-garbled")

        err = excinfo.value
        assert err.status == 202
        assert "without a batch_id" in str(err) and "'not json {'" in str(err) and "'k-garbled'" in str(err)
        assert MigoSmtpRetryPolicy().evaluate(err, 1, 13).retry_delay is not None  # retried

    def test_a_body_broken_mid_stream_is_an_unknown_outcome_and_the_batch_can_be_found(
        self, clean_sandbox
    ) -> None:
        clean_sandbox.set_faults([{"action": "break_body"}])
        client = MigoSmtpClient()

        with pytest.raises(OutcomeUnknown, match="ChunkedEncodingError"):
            client.send_bulk(make_payload(1), "k-broken")

        [batch] = clean_sandbox.record()["batches"]
        assert client.find_batch("k-broken")["batch_id"] == batch["batch_id"]

    def test_errors_are_migosmtp_errors(self) -> None:
        for cls in (
            IdempotencyConflict,
            InsecureConnection,
            InvalidApiKey,
            MalformedResponse,
            OutcomeUnknown,
            QuotaExceeded,
            RequestRejected,
            ServerError,
            TooLate,
        ):
            assert issubclass(cls, MigoSmtpError)
        assert issubclass(RateLimited, MigoSmtpError)

    def test_api_key_never_appears_in_logs(self, clean_sandbox, caplog, capfd) -> None:
        caplog.set_level(logging.DEBUG)
        clean_sandbox.set_faults([{"action": "drop"}, {"action": "status", "status": 500}])
        client, payload = MigoSmtpClient(), make_payload(1)
        with pytest.raises(OutcomeUnknown):
            client.send_bulk(payload, "k-logs")
        with pytest.raises(ServerError):
            client.send_bulk(payload, "k-logs")
        client.send_bulk(payload, "k-logs")
        client.find_batch("k-logs")
        out, err = capfd.readouterr()
        captured = caplog.text + out + err
        # The capture is live: urllib3's debug lines and the hook's warning about the drop are in it.
        assert '"POST /v1/email/send/bulk HTTP/1.1" 202' in caplog.text
        assert "Remote end closed connection" in captured
        assert API_KEY in os.environ["AIRFLOW_CONN_MIGOSMTP_DEFAULT"]
        assert API_KEY not in captured


class TestFindBatch:
    def test_unknown_key_is_none(self, clean_sandbox) -> None:
        MigoSmtpClient().send_bulk(make_payload(1), "k-known")
        assert MigoSmtpClient().find_batch("k-unknown") is None
        [logged] = [r for r in clean_sandbox.requests() if r["method"] == "GET"]
        assert (logged["path"], logged["status_code"]) == ("/v1/email/batches", 200)

    def test_finds_the_batch_sent_under_the_key(self, clean_sandbox) -> None:
        client = MigoSmtpClient()
        first = client.send_bulk(make_payload(1, batch_number=1), idempotency_key("spring-sale", 1))
        second = client.send_bulk(make_payload(2, batch_number=2), idempotency_key("spring-sale", 2))
        found = client.find_batch(idempotency_key("spring-sale", 2))
        assert found["batch_id"] == second.batch_id != first.batch_id
        assert found["tags"] == ["campaign:spring-sale", "batch:spring-sale:2"]
        assert found["status"] == "scheduled"

    def test_lookup_server_error_raises_server_error(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 503, "endpoint": "lookup"}])
        with pytest.raises(ServerError) as excinfo:
            MigoSmtpClient().find_batch("k-any")
        assert excinfo.value.status == 503

    def test_lookup_malformed_answer_raises_malformed_response(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "malformed", "endpoint": "lookup"}])
        with pytest.raises(MalformedResponse, match="without a batches list"):
            MigoSmtpClient().find_batch("k-any")

    def test_lookup_with_wrong_key_raises_invalid_api_key(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, password="not-the-key")
        with pytest.raises(InvalidApiKey) as excinfo:
            MigoSmtpClient().find_batch("k-any")
        assert excinfo.value.status == 401


class TestCancelBatch:
    def test_cancels_a_scheduled_batch_and_a_second_cancel_answers_the_same(self, clean_sandbox) -> None:
        client = MigoSmtpClient()
        receipt = client.send_bulk(make_payload(3), "k-cancel")

        first = client.cancel_batch(receipt.batch_id)
        again = client.cancel_batch(receipt.batch_id)

        assert first == again == {**client.get_batch(receipt.batch_id), "status": "cancelled"}
        assert first["batch_id"] == receipt.batch_id and first["recipient_count"] == 3
        assert client.get_quota().monthly_used == 0  # its recipients are back in the quota
        posts = [(r["path"], r["status_code"]) for r in clean_sandbox.requests() if r["method"] == "POST"]
        assert posts[1:] == [(f"/v1/email/batches/{receipt.batch_id}/cancel", 200)] * 2

    def test_less_than_10_minutes_before_send_at_raises_too_late_not_retried(self, clean_sandbox) -> None:
        client = MigoSmtpClient()
        soon = datetime.now(UTC) + timedelta(minutes=5)
        payload = build_payload(
            from_email="news@example.com",
            subject="s",
            html="h",
            text="t",
            recipients=recipients(1),
            send_at=soon,
            tags=[],
        )
        batch_id = client.send_bulk(payload, "k-soon").batch_id

        with pytest.raises(TooLate) as excinfo:
            client.cancel_batch(batch_id)

        err = excinfo.value
        assert (err.status, err.code) == (409, "too_late")
        assert not isinstance(err, RequestRejected)  # not the request's fault, nor a key conflict
        assert "could not cancel" in str(err) and "less than 10 minutes away" in str(err)
        assert rejected_at_once(err)
        assert client.get_batch(batch_id)["status"] == "scheduled"

    def test_an_unknown_batch_is_rejected_as_not_found(self, clean_sandbox) -> None:
        with pytest.raises(RequestRejected) as excinfo:
            MigoSmtpClient().cancel_batch("bat_missing")
        assert (excinfo.value.status, excinfo.value.code) == (404, "not_found")

    def test_wrong_key_raises_invalid_api_key(self, clean_sandbox, monkeypatch) -> None:
        batch_id = MigoSmtpClient().send_bulk(make_payload(1), "k-cancel-401").batch_id
        set_connection(monkeypatch, clean_sandbox, password="not-the-key")
        with pytest.raises(InvalidApiKey):
            MigoSmtpClient().cancel_batch(batch_id)
        assert clean_sandbox.record()["batches"][0]["status"] == "scheduled"

    @pytest.mark.parametrize(
        ("fault", "error"),
        [
            ({"action": "status", "status": 503}, ServerError),
            ({"action": "drop"}, OutcomeUnknown),
            ({"action": "malformed", "accept": True, "body": '{"status": "scheduled"}'}, MalformedResponse),
        ],
        ids=["5xx", "no answer", "2xx not cancelled"],
    )
    def test_a_failed_answer_raises_what_it_means(self, clean_sandbox, fault, error) -> None:
        batch_id = MigoSmtpClient().send_bulk(make_payload(1), "k-cancel-fault").batch_id
        clean_sandbox.set_faults([{**fault, "endpoint": "cancel"}])
        with pytest.raises(error):
            MigoSmtpClient().cancel_batch(batch_id)


class TestGetQuota:
    def test_reads_the_limit_and_what_the_sends_used(self, clean_sandbox) -> None:
        clean_sandbox.update_settings(monthly_limit=1234)
        MigoSmtpClient().send_bulk(make_payload(3), "k-quota")
        assert MigoSmtpClient().get_quota() == Quota(monthly_limit=1234, monthly_used=3)
        [logged] = [r for r in clean_sandbox.requests() if r["method"] == "GET"]
        assert (logged["path"], logged["status_code"]) == ("/v1/account/quota", 200)

    def test_server_error_raises_server_error(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 502, "endpoint": "quota"}])
        with pytest.raises(ServerError) as excinfo:
            MigoSmtpClient().get_quota()
        assert excinfo.value.status == 502

    def test_malformed_answer_raises_malformed_response(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "malformed", "endpoint": "quota"}])
        with pytest.raises(MalformedResponse, match="without whole monthly_limit and monthly_used"):
            MigoSmtpClient().get_quota()

    def test_wrong_key_raises_invalid_api_key(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, password="not-the-key")
        with pytest.raises(InvalidApiKey):
            MigoSmtpClient().get_quota()

    def test_no_answer_raises_outcome_unknown(self, clean_sandbox) -> None:
        clean_sandbox.set_faults([{"action": "drop", "endpoint": "quota"}])
        with pytest.raises(OutcomeUnknown):
            MigoSmtpClient().get_quota()


class TestRetryAfterBound:
    @pytest.mark.parametrize(
        "retry_after",
        ["100000000000000", format_datetime(datetime(9999, 1, 1, tzinfo=UTC), usegmt=True)],
        ids=["1e14 seconds", "the year 9999"],
    )
    def test_a_huge_retry_after_is_capped_and_said_so(self, clean_sandbox, retry_after) -> None:
        clean_sandbox.set_faults([{"action": "status", "status": 429, "retry_after": retry_after}])

        with pytest.raises(RateLimited) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-forever")

        err = excinfo.value
        assert err.retry_after == MAX_RETRY_AFTER_SECONDS
        assert "capped" in str(err)
        decision = MigoSmtpRetryPolicy().evaluate(err, 1, 13)
        assert decision.retry_delay == timedelta(seconds=MAX_RETRY_AFTER_SECONDS)

    def test_the_policy_bounds_a_wait_from_anywhere(self) -> None:
        decision = MigoSmtpRetryPolicy().evaluate(RateLimited("slow down", 1e14), 1, 13)

        assert decision.retry_delay == timedelta(days=1)


class TestApiKeyHygiene:
    def test_whitespace_around_the_key_is_stripped(self, clean_sandbox, monkeypatch) -> None:
        set_connection(monkeypatch, clean_sandbox, password=f"  {API_KEY}\n")

        assert MigoSmtpClient().send_bulk(make_payload(1), "k-padded").batch_id

    @pytest.mark.parametrize("broken", [f"{API_KEY[:4]}\r\n{API_KEY[4:]}", f"{API_KEY[:4]} {API_KEY[4:]}"])
    def test_a_key_with_a_line_break_or_space_inside_is_refused_without_showing_it(
        self, clean_sandbox, monkeypatch, caplog, broken
    ) -> None:
        caplog.set_level(logging.DEBUG)
        set_connection(monkeypatch, clean_sandbox, password=broken)

        with pytest.raises(InvalidApiKey) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-broken-key")

        message = str(excinfo.value)
        assert "'migosmtp_default'" in message and "not a usable MigoSMTP API key" in message
        for shown in (message, caplog.text, repr(excinfo.value)):
            assert API_KEY[:4] not in shown and API_KEY[4:] not in shown
        assert clean_sandbox.requests() == []


class TestHttpsOnly:
    @pytest.mark.parametrize(
        "fields",
        [
            {"host": "api.migosmtp.com", "schema": "http"},
            {"host": "http://api.migosmtp.com"},
            {"host": "10.0.0.5"},
        ],
        ids=["schema http", "http in the host", "no schema means http"],
    )
    def test_plain_http_to_a_remote_host_is_refused_before_any_request(self, monkeypatch, fields) -> None:
        conn = {"conn_type": "http", "password": API_KEY, **fields}
        monkeypatch.setenv("AIRFLOW_CONN_MIGOSMTP_DEFAULT", json.dumps(conn))

        with pytest.raises(InsecureConnection, match=r"connection 'migosmtp_default' .* unencrypted.*https"):
            MigoSmtpClient(timeout=1).send_bulk(make_payload(1), "k-plain")

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
    def test_plain_http_on_loopback_is_allowed(self, clean_sandbox, monkeypatch, host) -> None:
        set_connection(monkeypatch, clean_sandbox, host=host, password=API_KEY)

        assert MigoSmtpClient().find_batch("k-none") is None


class TestProviderText:
    def test_credentials_are_redacted_and_the_text_capped(self) -> None:
        text = (
            "failed for Authorization: Bearer sk_live_abcdef with api_key=hunter2 "
            f"password: 'pw123' token {'A' * 40} and the key {API_KEY}\n" + "more words " * 100
        )

        safe = provider_text(text, [API_KEY])

        for secret in ("sk_live_abcdef", "hunter2", "pw123", "A" * 40, API_KEY, "\n"):
            assert secret not in safe
        assert len(safe) == MAX_PROVIDER_TEXT and safe.endswith("...")
        assert safe.startswith("failed for Authorization: Bearer [redacted] with api_key=[redacted]")

    def test_a_provider_message_with_the_key_in_it_never_reaches_the_error(self, clean_sandbox) -> None:
        leak = f"upstream said Bearer {API_KEY} was fine; " + "y" * 2000
        clean_sandbox.set_faults([{"action": "status", "status": 500, "message": leak}])

        with pytest.raises(ServerError) as excinfo:
            MigoSmtpClient().send_bulk(make_payload(1), "k-leak")

        assert API_KEY not in str(excinfo.value)
        assert len(str(excinfo.value)) < MAX_PROVIDER_TEXT + 100


def rejected_at_once(error: BaseException) -> bool:
    return MigoSmtpRetryPolicy().evaluate(error, 1, 13).retry_delay is None


class TestRequestDeadline:
    """One deadline per request, connect to the body's last byte (the sandbox's ``trickle`` fault
    sends a few bytes every quarter second: never quiet long enough for a read timeout)."""

    @pytest.mark.parametrize("endpoint", ["send", "lookup", "quota"])
    def test_a_trickled_answer_ends_at_the_deadline_as_an_unknown_outcome(
        self, clean_sandbox, monkeypatch, endpoint
    ) -> None:
        set_connection(monkeypatch, clean_sandbox, password=API_KEY, extra={"timeout": 1})
        clean_sandbox.set_faults([{"action": "trickle", "seconds": 8, "endpoint": endpoint}])
        client = MigoSmtpClient()
        call = {
            "send": lambda: client.send_bulk(make_payload(1), "k-trickle"),
            "lookup": lambda: client.find_batch("k-trickle"),
            "quota": client.get_quota,
        }[endpoint]

        started = time.monotonic()
        with pytest.raises(
            OutcomeUnknown, match=r"\(no complete answer within 1 s\); the request may"
        ) as excinfo:
            call()
        elapsed = time.monotonic() - started

        assert 1 <= elapsed < 1.5  # not the 8 s the answer takes
        assert not rejected_at_once(excinfo.value)  # a timeout: retried, asking by key first
        if endpoint == "send":
            [batch] = clean_sandbox.record()["batches"]
            assert client.find_batch("k-trickle")["batch_id"] == batch["batch_id"]

    @pytest.mark.parametrize(
        ("extra", "seconds"),
        [({}, 30), ({"timeout": None}, 30), ({"timeout": 5}, 5), ({"timeout": " 45 "}, 45)]
        + [({"timeout": 600}, 120), ({"timeout": 1e300}, 120), ({"timeout": "Infinity"}, 120)],
        ids=["absent", "null", "5", "string", "600", "1e300", "Infinity"],
    )
    def test_the_deadline_is_the_extras_within_the_ceiling(self, clean_sandbox, monkeypatch, extra, seconds):
        set_connection(monkeypatch, clean_sandbox, password=API_KEY, extra=extra)

        assert MigoSmtpClient().timeout == seconds

    @pytest.mark.parametrize("value", [0, -5, "soon", [5, 30], True, "NaN"])
    def test_an_unusable_timeout_is_refused_naming_the_connection_before_any_request(
        self, clean_sandbox, monkeypatch, value
    ) -> None:
        set_connection(monkeypatch, clean_sandbox, password=API_KEY, extra={"timeout": value})

        with pytest.raises(
            MigoSmtpError, match=r"connection 'migosmtp_default' has timeout .* positive"
        ) as e:
            MigoSmtpClient().send_bulk(make_payload(1), "k-bad-timeout")

        assert e.value.code == "invalid_timeout"
        assert rejected_at_once(e.value)
        assert clean_sandbox.requests() == []


class TestStrictJson:
    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_a_non_finite_variable_is_refused_when_the_payload_is_built(self, value) -> None:
        people = recipients(3)
        people[1].variables["score"] = value

        with pytest.raises(RequestRejected) as excinfo:
            build_payload(
                from_email="news@example.com",
                subject="s",
                html="h",
                text="t",
                recipients=people,
                send_at=SEND_AT,
                tags=batch_tags("spring-sale", 7),
            )

        message = str(excinfo.value)
        assert excinfo.value.code == "invalid_payload"
        assert "batch 'batch:spring-sale:7'" in message and "recipient 2's variable 'score'" in message
        assert "user1@example.org" not in message
        assert rejected_at_once(excinfo.value)

    def test_send_bulk_refuses_a_non_finite_value_before_any_request(self, clean_sandbox) -> None:
        payload = make_payload(1)
        payload["recipients"][0]["variables"]["score"] = math.inf

        with pytest.raises(RequestRejected, match="cannot be sent as JSON"):
            MigoSmtpClient().send_bulk(payload, "k-inf")

        assert clean_sandbox.requests() == []

    def test_the_body_is_byte_for_byte_what_requests_json_made(self) -> None:
        # A batch first sent before the client encoded its own body must be resent identically.
        payload = make_payload(2)

        made = requests.Request("POST", "https://api.example.com", json=payload).prepare().body
        assert client_module.encode_payload(payload) == made


ECHOED_KEY = "sk-echoed-0123456789"


class TestEchoedKey:
    """A provider that echoes the connection's key anywhere in an answer: in no error, no log."""

    @pytest.fixture
    def echoing(self, clean_sandbox, monkeypatch):
        clean_sandbox.update_settings(api_key=ECHOED_KEY)
        set_connection(monkeypatch, clean_sandbox, password=ECHOED_KEY)
        return clean_sandbox

    @pytest.mark.parametrize(
        ("fault", "error"),
        [
            ({"action": "malformed", "body": f"accepted for {ECHOED_KEY}"}, OutcomeUnknown),
            ({"action": "malformed", "body": "x " * 33 + ECHOED_KEY}, OutcomeUnknown),
            (
                {
                    "action": "malformed",
                    "endpoint": "quota",
                    "body": json.dumps({"monthly_limit": ECHOED_KEY}),
                },
                MalformedResponse,
            ),
            ({"action": "status", "status": 503, "message": f"upstream refused {ECHOED_KEY}"}, ServerError),
            ({"action": "status", "status": 400, "error": ECHOED_KEY}, RequestRejected),
        ],
        ids=["2xx without batch_id", "cut at the quoted start", "malformed quota", "5xx", "4xx code"],
    )
    def test_is_in_no_error_and_no_log(self, echoing, caplog, capfd, fault, error) -> None:
        caplog.set_level(logging.DEBUG)
        echoing.set_faults([fault])
        client = MigoSmtpClient()

        with pytest.raises(error) as excinfo:
            client.get_quota() if fault.get("endpoint") == "quota" else client.send_bulk(make_payload(1), "k")

        out, err = capfd.readouterr()
        assert "[reda" in str(excinfo.value)
        for text in (str(excinfo.value), repr(excinfo.value), caplog.text, out, err):
            assert ECHOED_KEY[:8] not in text
