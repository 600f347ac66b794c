"""The gateway from campaign code to the provider, against the real sandbox over HTTP: its calls,
and what each row of the article's error table means for a campaign."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.campaign import provider
from include.campaign.audience import Recipient
from include.migosmtp import client
from include.migosmtp.client import MigoSmtpClient

CONTENT = {"from_email": "news@example.com", "subject": "Hi {{n}}", "html_body": "<p>x</p>", "text_body": "x"}
SEND_AT = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
RECIPIENTS = [Recipient("r1", "a@example.com", {"n": 1}), Recipient("r2", "b@example.com", {"n": 2})]


class TestCalls:
    def test_a_batch_is_submitted_once_and_found_by_its_key(self, clean_sandbox):
        gateway = provider.Provider()
        key = provider.batch_key("c1", 1)
        body = provider.payload(CONTENT, RECIPIENTS, SEND_AT, "c1", 1)

        first = gateway.submit(body, key)
        again = gateway.submit(body, key)

        assert (first.replayed, again.replayed) == (False, True) and again.batch_id == first.batch_id
        assert gateway.find_submitted(key) == first.batch_id
        assert gateway.find_submitted(provider.batch_key("c1", 2)) is None
        [stored] = clean_sandbox.record()["batches"]
        assert stored["recipient_count"] == 2 and stored["idempotency_key"] == key

    def test_the_payload_is_the_recorded_content_tagged_with_campaign_and_batch(self):
        body = provider.payload(CONTENT, RECIPIENTS, SEND_AT, "c1", 7)

        assert (body["from"], body["subject"], body["html"], body["text"]) == (
            "news@example.com",
            "Hi {{n}}",
            "<p>x</p>",
            "x",
        )
        assert body["tags"] == ["campaign:c1", "batch:c1:7"]
        assert body["send_at"] == SEND_AT.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert body["recipients"] == [
            {"to": "a@example.com", "variables": {"n": 1}},
            {"to": "b@example.com", "variables": {"n": 2}},
        ]

    def test_a_payload_that_cannot_be_json_is_refused_before_any_request(self, clean_sandbox):
        with pytest.raises(client.InvalidPayload):
            provider.payload(
                CONTENT, [Recipient("r1", "a@example.com", {"x": float("nan")})], SEND_AT, "c1", 1
            )
        assert clean_sandbox.requests() == []

    def test_the_monthly_quota_and_a_batchs_counts(self, clean_sandbox):
        clean_sandbox.update_settings(monthly_limit=5000, monthly_used=1200)
        gateway = provider.Provider()
        accepted = gateway.submit(
            provider.payload(CONTENT, RECIPIENTS, SEND_AT, "c1", 1), provider.batch_key("c1", 1)
        )

        assert gateway.monthly_quota() == provider.MonthlyQuota(limit=5000, used=1202)
        counts = gateway.batch_counts(accepted.batch_id)
        assert set(counts) == set(provider.EVENT_TYPES) and all(isinstance(n, int) for n in counts.values())

    def test_a_batch_is_cancelled_while_its_send_at_is_the_lead_ahead_and_else_goes_out(self, clean_sandbox):
        gateway = provider.Provider()

        def submit(batch_number, lead):
            body = provider.payload(CONTENT, RECIPIENTS, datetime.now(UTC) + lead, "c1", batch_number)
            return gateway.submit(body, provider.batch_key("c1", batch_number))

        ahead = submit(1, provider.CANCEL_MIN_LEAD + timedelta(minutes=1))
        near = submit(2, provider.CANCEL_MIN_LEAD - timedelta(minutes=1))

        assert gateway.cancel(ahead.batch_id) is True
        assert gateway.cancel(ahead.batch_id) is True  # already cancelled: it still will not go out
        assert gateway.cancel(near.batch_id) is False  # too late: it goes out as scheduled

        statuses = {b["batch_id"]: b["status"] for b in clean_sandbox.record()["batches"]}
        assert statuses == {ahead.batch_id: "cancelled", near.batch_id: "scheduled"}
        assert gateway.monthly_quota().used == 2  # the cancelled batch's two are given back

    def test_a_cancel_that_fails_otherwise_raises(self, clean_sandbox):
        with pytest.raises(client.RequestRejected) as raised:
            provider.Provider().cancel("bat_missing")
        assert provider.is_provider_error(raised.value) and raised.value.status == 404

    def test_the_key_is_the_clients(self):
        assert provider.batch_key("c1", 3) == client.idempotency_key("c1", 3)


ERRORS = {
    "429": client.RateLimited("rate limited", retry_after=5),
    "402": client.QuotaExceeded("quota", 402),
    "401": client.InvalidApiKey("key", 401),
    "http": client.InsecureConnection("plain http", None),
    "5xx": client.ServerError("503", 503),
    "timeout": client.OutcomeUnknown("no answer", None),
    "422": client.RequestRejected("bad from", 422),
    "payload": client.InvalidPayload("NaN", None),
    "malformed": client.MalformedResponse("not JSON", 200),
}


class TestWhatAnErrorMeans:
    @pytest.mark.parametrize(
        ("error", "halts", "alerts", "retry_helps"),
        [
            ("429", False, False, True),
            ("402", True, False, True),
            ("401", True, False, False),
            ("http", True, False, False),  # an insecure URL is the key's problem too: never sent
            ("5xx", False, True, True),
            ("timeout", False, True, True),
            ("422", False, False, True),
            ("payload", False, False, True),
            ("malformed", False, False, True),
        ],
    )
    def test_each_row_of_the_error_table(self, error, halts, alerts, retry_helps):
        err = ERRORS[error]
        assert provider.is_provider_error(err)
        assert provider.halts_run(err) is halts
        assert provider.alerts_once_when_given_up(err) is alerts
        assert provider.retry_may_help(err) is retry_helps

    @pytest.mark.parametrize("error", [RuntimeError("warehouse down"), ValueError("x"), None])
    def test_errors_that_are_not_the_providers(self, error):
        assert not provider.is_provider_error(error)
        assert not provider.halts_run(error) and not provider.alerts_once_when_given_up(error)

    def test_a_real_402_from_the_sandbox_halts(self, clean_sandbox):
        clean_sandbox.set_faults([{"action": "status", "status": 402}])
        with pytest.raises(client.MigoSmtpError) as raised:
            MigoSmtpClient().send_bulk(provider.payload(CONTENT, RECIPIENTS, SEND_AT, "c1", 1), "k-402")
        assert provider.halts_run(raised.value) and provider.retry_may_help(raised.value)
