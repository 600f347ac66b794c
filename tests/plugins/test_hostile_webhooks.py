"""Hostile webhook posts to the receiver (issue 20): bad headers are 401, never a 500; a bad event is
quarantined and the valid events of its post are stored and acknowledged. On both warehouses."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from include.migosmtp.webhooks import sign
from include.warehouse import ensure_schema
from tests.migosmtp.test_webhooks import BAD_EVENTS, raw_body
from tests.plugins.test_migosmtp_webhooks import EVENT, SECRET, receiver

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def client(warehouse, monkeypatch):
    ensure_schema(warehouse)
    return receiver(monkeypatch)


def send(client, body: bytes, timestamp: bytes | None = None, signature: bytes | None = None):
    """POST ``body`` signed now, or with the raw header bytes given (any a server may receive)."""
    now = str(int(time.time()))
    headers = [
        (b"x-migosmtp-timestamp", now.encode() if timestamp is None else timestamp),
        (b"x-migosmtp-signature", sign(SECRET, now, body).encode() if signature is None else signature),
    ]
    return client.post("/webhooks/events", content=body, headers=headers)


def complaint(event_id: str = "ev_complaint") -> dict:
    return {**EVENT, "event_id": event_id, "type": "complained", "recipient": "c@example.com"}


def stored(warehouse) -> list[tuple]:
    sql = "SELECT batch_id, event_id, type FROM email_events ORDER BY batch_id, event_id"
    return [tuple(r) for r in warehouse.get_records(sql)]


def quarantined(warehouse) -> list[tuple]:
    sql = "SELECT event_id, reason, raw_event FROM email_events_quarantine ORDER BY reason"
    return [tuple(r) for r in warehouse.get_records(sql)]


class TestHeaders:
    @pytest.mark.parametrize(
        "timestamp, signature",
        [
            (None, "v1=\u00e9\u00e9".encode("latin-1")),
            (None, "v1=\u20ac".encode()),
            (b"9" * 5000, None),
            (b"1" * 20, None),
            ("\u0661\u0662".encode(), None),
            (b"-5", None),
            (b"1e9", None),
        ],
        ids=[
            "latin-1 signature",
            "utf-8 signature",
            "5000 digits",
            "20 digits",
            "arabic",
            "negative",
            "exponent",
        ],
    )
    def test_bad_headers_are_401_not_500(self, client, warehouse, timestamp, signature):
        # Before the fix the first two and the 5000 digits were a 500 with a traceback.
        response = send(client, json.dumps({"events": [complaint()]}).encode(), timestamp, signature)

        assert response.status_code == 401, response.text
        assert response.json()["error"]
        assert stored(warehouse) == []

    @FUZZ
    @given(
        timestamp=st.one_of(
            st.binary(min_size=1, max_size=40),
            st.text("0123456789", min_size=13, max_size=6000).map(str.encode),
            st.integers().map(lambda n: str(n).encode()),
        ),
        signature=st.one_of(
            st.binary(min_size=1, max_size=100),
            st.text(st.characters(max_codepoint=0xFF), min_size=1).map(lambda s: s.encode("latin-1")),
            st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"v1={h}".encode()),
        ),
    )
    def test_any_headers_but_the_right_ones_are_401(self, client, warehouse, timestamp, signature):
        # A header value cannot hold CR, LF or NUL on the wire, nor start or end with blanks.
        timestamp, signature = (v.translate(None, b"\r\n\0").strip() for v in (timestamp, signature))
        assume(timestamp and signature)

        response = send(client, json.dumps({"events": [complaint()]}).encode(), timestamp, signature)

        assert response.status_code == 401, response.text


class TestOneBadEvent:
    @pytest.mark.parametrize("name", list(BAD_EVENTS))
    def test_a_bad_event_is_quarantined_and_the_complaint_beside_it_stored(self, client, warehouse, name):
        # Before the fix: 400 or 500 for the whole post, and the complaint was never stored.
        bad, reason = BAD_EVENTS[name]

        response = send(client, raw_body(bad, json.dumps(complaint())))

        assert response.status_code == 200, response.text
        assert response.json() == {"stored": 1, "duplicates": 0, "quarantined": 1}
        assert stored(warehouse) == [("bat_1", "ev_complaint", "complained")]
        [(event_id, recorded_reason, raw_event)] = quarantined(warehouse)
        assert recorded_reason.startswith("events[0] ") and reason in recorded_reason
        assert len(raw_event) <= 4096 and raw_event.isascii()
        assert event_id is None or len(event_id) <= 200

    def test_brackets_left_open_far_deeper_than_any_parser_goes_are_400_not_500(self, client, warehouse):
        response = send(client, b'{"events": [' + b"[" * 200_000)

        assert response.status_code == 400 and response.json()["error"]
        assert stored(warehouse) == []

    @pytest.mark.parametrize(
        "body",
        [b"[]", b'{"events": {}}', b"\xff\xfe", b'"events"', b"[" * 100_000 + b"]" * 100_000],
        ids=["a list", "events an object", "not utf-8", "a string", "a list 100,000 deep"],
    )
    def test_a_body_of_the_wrong_shape_is_still_400(self, client, warehouse, body):
        assert send(client, body).status_code == 400


class TestDuplicates:
    def test_the_same_event_twice_in_one_post_keeps_the_first_as_across_posts(self, client, warehouse):
        # Before the fix the last of the post was kept.
        first, second = {**EVENT, "type": "delivered"}, {**EVENT, "type": "bounced"}

        response = send(client, json.dumps({"events": [first, second]}).encode())
        send(client, json.dumps({"events": [second]}).encode())

        assert response.json() == {"stored": 1, "duplicates": 1, "quarantined": 0}
        assert stored(warehouse) == [("bat_1", "ev_1", "delivered")]

    def test_two_campaigns_events_that_share_an_event_id_are_both_stored(self, client, warehouse):
        # Before the fix the second campaign's complaint was dropped as a duplicate: never suppressed.
        ours = {**EVENT, "tags": ["campaign:c1"]}
        theirs = {**complaint("ev_1"), "batch_id": "bat_2", "tags": ["campaign:c2"]}

        send(client, json.dumps({"events": [ours]}).encode())
        response = send(client, json.dumps({"events": [theirs]}).encode())

        assert response.json() == {"stored": 1, "duplicates": 0, "quarantined": 0}
        assert stored(warehouse) == [("bat_1", "ev_1", "delivered"), ("bat_2", "ev_1", "complained")]


# A field's value as JSON text: anything json.dumps writes (NaN and Infinity too), strings with
# NULs, control characters and lone surrogates (escaped, or as raw bytes), long strings, numbers
# of thousands of digits, and nesting of any depth.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_odd_text = st.lists(
    st.sampled_from(["\x00", "\ud800", "\udfff", "\x1f", "a", "\u00e9", "\u2028"]), min_size=1
).map("".join)
_field_texts = st.one_of(
    _json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    _odd_text.map(json.dumps),  # \u0000, \ud800 escapes
    _odd_text.map(lambda s: json.dumps(s, ensure_ascii=False)),  # raw bytes, surrogates included
    st.integers(150, 12_000).map(lambda n: json.dumps("a" * n)),
    st.integers(-(10**30), 10**30).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.sampled_from(["1e20", "-1", "1.5e9", '"1800000000"', "Infinity", "-Infinity", "NaN", '""', "[]"]),
    st.integers(1, 100_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 5_000).map(lambda n: '{"a": ' * n + "1" + "}" * n),
)
_FIELDS = ("event_id", "type", "batch_id", "recipient", "tags", "timestamp", "reason", "bounce_type")
_valid = json.loads(json.dumps(EVENT))


def _with_fields(fuzzed: dict[str, str]) -> str:
    """The valid event as JSON text, with the fuzzed fields' values in place of its own."""
    fields = {k: json.dumps(v) for k, v in _valid.items()} | fuzzed
    return "{" + ", ".join(f'"{k}": {text}' for k, text in fields.items()) + "}"


# One or two fields fuzzed at a time, so that each field's checks are reached; one in four not an
# object at all.
_fuzzed_fields = st.dictionaries(st.sampled_from(_FIELDS), _field_texts, min_size=1, max_size=2)
_fuzzed_events = st.integers(0, 3).flatmap(
    lambda n: _field_texts if n == 0 else _fuzzed_fields.map(_with_fields)
)


@FUZZ
@given(fuzzed=_fuzzed_events, complaint_first=st.booleans())
def test_any_event_beside_a_complaint_is_never_a_5xx_and_the_complaint_is_stored(
    client, warehouse, fuzzed, complaint_first
):
    complaint_id = f"ev_c_{uuid.uuid4().hex}"
    valid = json.dumps(complaint(complaint_id))
    body = raw_body(*([valid, fuzzed] if complaint_first else [fuzzed, valid]))

    response = send(client, body)

    assert response.status_code == 200, response.text[:500]
    counts = response.json()
    assert counts["stored"] + counts["duplicates"] + counts["quarantined"] == 2 and counts["stored"] >= 1
    rows = warehouse.get_records(
        f"SELECT type FROM email_events WHERE event_id = {warehouse.placeholder}", [complaint_id]
    )
    assert [tuple(r) for r in rows] == [("complained",)]
