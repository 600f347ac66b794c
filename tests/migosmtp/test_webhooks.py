"""Webhook verification, parsing and idempotent storage (the receiver's logic, without HTTP)."""

from __future__ import annotations

import json

import pytest

from include.migosmtp.webhooks import (
    MAX_BODY_BYTES,
    REPLAY_WINDOW_SECONDS,
    WebhookRejected,
    parse,
    sign,
    store,
    verify,
)
from include.warehouse import ensure_schema

SECRET = "whsec_test"
NOW = 1_800_000_000


def event(event_id="ev_1", type_="delivered", **overrides):
    return {
        "event_id": event_id,
        "type": type_,
        "batch_id": "bat_1",
        "recipient": "user1@example.com",
        "tags": ["campaign:c1", "batch:c1:1"],
        "timestamp": NOW,
        **overrides,
    }


def body_of(*events) -> bytes:
    return json.dumps({"events": list(events)}).encode()


# A fixed vector, computed outside this code base:
#   printf '%s' '1767225600.{"events":[...]}' | openssl dgst -sha256 -hmac 'whsec_test_vector'
VECTOR_SECRET = "whsec_test_vector"
VECTOR_TIMESTAMP = "1767225600"
VECTOR_BODY = b'{"events":[{"event_id":"evt_1","type":"delivered"}]}'
VECTOR_SIGNATURE = "v1=f89b38c3f1dc5e4d6e61759e9a249cc46cf8a9646ec5840704266d8326d06c46"


class TestVerify:
    def test_the_fixed_test_vector_verifies(self):
        verify(VECTOR_SECRET, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY, now=int(VECTOR_TIMESTAMP))
        assert sign(VECTOR_SECRET, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE

    @pytest.mark.parametrize(
        "change",
        [
            {"secret": VECTOR_SECRET + "x"},
            {"timestamp": str(int(VECTOR_TIMESTAMP) + 1)},
            {"body": VECTOR_BODY.replace(b"delivered", b"bounced")},
            {"signature": VECTOR_SIGNATURE.replace("v1=", "v2=")},
        ],
        ids=["secret", "timestamp", "body", "scheme"],
    )
    def test_the_vector_with_any_part_changed_is_refused(self, change):
        args = {
            "secret": VECTOR_SECRET,
            "timestamp": VECTOR_TIMESTAMP,
            "signature": VECTOR_SIGNATURE,
            "body": VECTOR_BODY,
        } | change
        with pytest.raises(WebhookRejected, match="does not match"):
            verify(
                args["secret"], args["timestamp"], args["signature"], args["body"], now=int(VECTOR_TIMESTAMP)
            )

    @pytest.mark.parametrize(
        ("age", "accepted"), [(300, True), (301, False), (-300, True), (-301, False)], ids=str
    )
    def test_the_replay_window_is_300_seconds_either_way(self, age, accepted):
        now = int(VECTOR_TIMESTAMP) + age
        if accepted:
            verify(VECTOR_SECRET, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY, now=now)
        else:
            with pytest.raises(WebhookRejected, match="replay window"):
                verify(VECTOR_SECRET, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY, now=now)

    def test_a_correctly_signed_fresh_body_passes(self):
        body = body_of(event())
        verify(SECRET, str(NOW), sign(SECRET, str(NOW), body), body, now=NOW + 10)

    @pytest.mark.parametrize(
        "timestamp, signature, reason",
        [
            (None, "v1=00", "missing"),
            (str(NOW), None, "missing"),
            ("yesterday", "v1=00", "unix seconds"),
            (str(NOW), "v1=" + "0" * 64, "does not match"),
            (str(NOW - REPLAY_WINDOW_SECONDS - 1), "sign", "replay window"),
            (str(NOW + REPLAY_WINDOW_SECONDS + 1), "sign", "replay window"),
        ],
        ids=["no timestamp", "no signature", "bad timestamp", "wrong signature", "stale", "future"],
    )
    def test_unsigned_forged_or_stale_requests_get_401(self, timestamp, signature, reason):
        body = body_of(event())
        if signature == "sign":
            signature = sign(SECRET, timestamp, body)
        with pytest.raises(WebhookRejected, match=reason) as rejected:
            verify(SECRET, timestamp, signature, body, now=NOW)
        assert rejected.value.status == 401

    def test_a_body_signed_with_another_secret_or_altered_is_refused(self):
        body = body_of(event())
        for signature, sent in (
            (sign("other", str(NOW), body), body),
            (sign(SECRET, str(NOW), body), body + b" "),
        ):
            with pytest.raises(WebhookRejected, match="does not match"):
                verify(SECRET, str(NOW), signature, sent, now=NOW)

    def test_an_oversized_body_gets_413(self):
        body = b"x" * (MAX_BODY_BYTES + 1)
        with pytest.raises(WebhookRejected) as rejected:
            verify(SECRET, str(NOW), sign(SECRET, str(NOW), body), body, now=NOW)
        assert rejected.value.status == 413


class TestParse:
    def test_events_are_read_with_their_campaign(self):
        [parsed] = parse(body_of(event(reason=None)))
        assert (parsed.event_id, parsed.type, parsed.campaign_id, parsed.timestamp) == (
            "ev_1",
            "delivered",
            "c1",
            NOW,
        )

    @pytest.mark.parametrize(
        "body, reason",
        [
            (b"not json", "not JSON"),
            (b'{"event": []}', "events"),
            (body_of("x"), "not an object"),
            (body_of({k: v for k, v in event().items() if k != "batch_id"}), "lacks batch_id"),
            (body_of(event(type_=7)), "type is not a non-empty string"),
            (body_of(event(timestamp="soon")), "wrong type"),
        ],
        ids=[
            "not json",
            "no events list",
            "event not object",
            "missing field",
            "type not a string",
            "bad timestamp",
        ],
    )
    def test_malformed_bodies_get_400_naming_the_problem(self, body, reason):
        with pytest.raises(WebhookRejected, match=reason) as rejected:
            parse(body)
        assert rejected.value.status == 400


class TestStore:
    def test_redelivered_and_reordered_events_are_stored_once(self, warehouse):
        ensure_schema(warehouse)
        first, second = parse(body_of(event("ev_1"), event("ev_2", "bounced", recipient="b@example.com")))

        store(warehouse, [second, first])
        store(warehouse, [first, first])

        rows = warehouse.get_records("SELECT event_id, type, campaign_id FROM email_events ORDER BY event_id")
        assert [tuple(r) for r in rows] == [("ev_1", "delivered", "c1"), ("ev_2", "bounced", "c1")]
