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

    @pytest.mark.parametrize(
        "timestamp, signature",
        [
            (str(NOW), "v1=\u00e9" * 20),
            (str(NOW), "v1=\u20ac"),
            ("9" * 5000, "v1=00"),
            ("1" * 13, "v1=00"),
            ("\u0661\u0662\u0663", "v1=00"),
            (" 1800000000", "v1=00"),
        ],
        ids=[
            "latin-1 signature",
            "euro sign signature",
            "5000 digits",
            "13 digits",
            "arabic digits",
            "space",
        ],
    )
    def test_headers_that_are_not_ascii_or_not_short_digits_get_401(self, timestamp, signature):
        # Before the fix: a TypeError from compare_digest and a ValueError from int(), both a 500.
        with pytest.raises(WebhookRejected) as rejected:
            verify(SECRET, timestamp, signature, body_of(event()), now=NOW)
        assert rejected.value.status == 401


def raw_body(*events: str) -> bytes:
    """A post whose events are given as JSON text, for what json.dumps will not write."""
    return ('{"events": [' + ", ".join(events) + "]}").encode("utf-8", "surrogatepass")


def with_raw(name: str, text: str, **overrides) -> str:
    """An event (ev_bad) as JSON text with one field's value written as ``text`` (a repeated key:
    the last one counts)."""
    return json.dumps(event("ev_bad", **overrides))[:-1] + f', "{name}": {text}}}'


VALID = json.dumps(event("ev_ok", "complained"))

# One pathological event each, and what its quarantine reason says.
BAD_EVENTS = {
    "timestamp Infinity": (with_raw("timestamp", "Infinity"), "timestamp is not unix seconds"),
    "timestamp NaN": (with_raw("timestamp", "NaN"), "timestamp is not unix seconds"),
    "timestamp 1e20": (json.dumps(event("ev_bad", timestamp=1e20)), "timestamp is not unix seconds"),
    "timestamp negative": (json.dumps(event("ev_bad", timestamp=-1)), "timestamp is not unix seconds"),
    "timestamp of 5000 digits": (with_raw("timestamp", "9" * 5000), "timestamp is not unix seconds"),
    "timestamp true": (json.dumps(event("ev_bad", timestamp=True)), "timestamp is not unix seconds"),
    "lone surrogate": (
        with_raw("recipient", '"a\\ud800@example.com"'),
        "recipient contains a lone surrogate",
    ),
    "surrogate as raw bytes": (with_raw("recipient", '"a\ud800@example.com"'), "lone surrogate"),
    "NUL escaped": (with_raw("reason", '"x\\u0000y"'), "reason contains a NUL character"),
    "NUL raw": (with_raw("reason", '"x\x00y"'), "reason contains a NUL character"),
    "10 kB recipient": (json.dumps(event("ev_bad", recipient="a" * 10_000)), "recipient is longer than 320"),
    "10 kB event_id": (json.dumps(event("e" * 10_000)), "event_id is longer than 200"),
    "nested 500 deep": (with_raw("reason", "[" * 500 + "]" * 500), "reason is not a string"),
    "nested 200,000 deep": (with_raw("reason", "[" * 200_000 + "]" * 200_000), "reason is not a string"),
    "id of 5000 digits": (with_raw("event_id", "1" * 5000), "event_id is not a string"),
    "tags a string": (json.dumps(event("ev_bad", tags="campaign:c1")), "tags is not a list"),
    "tag not a string": (json.dumps(event("ev_bad", tags=[None])), "tags[0] is not a string"),
    "type empty": (json.dumps(event("ev_bad", type_="")), "type is empty"),
    "not an object": ('"ev_bad"', "is not an object"),
    "missing fields": ('{"event_id": "ev_bad"}', "lacks type"),
}


class TestParse:
    def test_events_are_read_with_their_campaign(self):
        [parsed] = parse(body_of(event(reason=None))).events
        assert (parsed.key, parsed.type, parsed.campaign_id, parsed.timestamp) == (
            ("bat_1", "ev_1"),
            "delivered",
            "c1",
            NOW,
        )

    @pytest.mark.parametrize(
        "timestamp, expected",
        [(NOW, NOW), (str(NOW), NOW), (NOW + 0.75, NOW), (float(NOW), NOW), (0, 0)],
        ids=["int", "digits", "fraction", "float", "epoch"],
    )
    def test_a_timestamp_is_unix_seconds_as_a_number_or_digits(self, timestamp, expected):
        [parsed] = parse(body_of(event(timestamp=timestamp))).events
        assert parsed.timestamp == expected

    @pytest.mark.parametrize("name", list(BAD_EVENTS))
    def test_a_bad_event_is_quarantined_and_the_valid_one_beside_it_kept(self, name):
        # Before the fix: a 400 (the valid event refused with it) or an exception (a 500).
        bad, reason = BAD_EVENTS[name]

        post = parse(raw_body(bad, VALID))

        assert [e.event_id for e in post.events] == ["ev_ok"]
        [quarantined] = post.quarantined
        assert quarantined.reason.startswith("events[0] ") and reason in quarantined.reason
        assert len(quarantined.raw_event) <= 4096 and quarantined.raw_event.isascii()
        assert quarantined.event_id in (None, "ev_bad", "e" * 200)

    @pytest.mark.parametrize(
        "body, status, reason",
        [
            (b"not json", 400, "not JSON"),
            (b"\xff\xfe{}", 400, "not JSON"),
            (b'{"event": []}', 400, "events"),
            (b'{"events": {}}', 400, "events"),
            (b'{"events": [' + b"[" * 100_000, 400, "not JSON"),
            (b"[" * 100_000 + b"]" * 100_000, 400, "events"),
            (body_of(*[event(f"ev_{i}") for i in range(1001)]), 413, "at most 1000"),
        ],
        ids=[
            "not json",
            "not utf-8",
            "no events list",
            "events not a list",
            "left open",
            "deep list",
            "1001",
        ],
    )
    def test_a_body_that_is_not_a_list_of_events_is_refused_whole(self, body, status, reason):
        with pytest.raises(WebhookRejected, match=reason) as rejected:
            parse(body)
        assert rejected.value.status == status


def stored_events(warehouse):
    sql = "SELECT batch_id, event_id, type FROM email_events ORDER BY batch_id, event_id"
    return [tuple(r) for r in warehouse.get_records(sql)]


class TestStore:
    def test_redelivered_and_reordered_events_are_stored_once(self, warehouse):
        ensure_schema(warehouse)
        first, second = parse(
            body_of(event("ev_1"), event("ev_2", "bounced", recipient="b@example.com"))
        ).events

        assert store(warehouse, [second, first]) == 2
        assert store(warehouse, [first, first]) == 0

        rows = warehouse.get_records("SELECT event_id, type, campaign_id FROM email_events ORDER BY event_id")
        assert [tuple(r) for r in rows] == [("ev_1", "delivered", "c1"), ("ev_2", "bounced", "c1")]

    def test_of_one_event_twice_in_a_post_the_first_is_kept_as_across_posts(self, warehouse):
        # Before the fix the last of a post was kept, while across posts the first was.
        ensure_schema(warehouse)
        first, second = parse(body_of(event("ev_1"), event("ev_1", "bounced"))).events

        assert store(warehouse, [first, second]) == 1
        assert store(warehouse, [second]) == 0

        assert stored_events(warehouse) == [("bat_1", "ev_1", "delivered")]

    def test_two_campaigns_events_with_one_event_id_are_both_stored(self, warehouse):
        # Before the fix the second was dropped as a duplicate of the first.
        ensure_schema(warehouse)
        ours = event("ev_1", "complained", tags=["campaign:c1"])
        theirs = event("ev_1", "delivered", batch_id="bat_2", tags=["campaign:c2"])

        store(warehouse, parse(body_of(ours)).events)
        store(warehouse, parse(body_of(theirs)).events)

        assert stored_events(warehouse) == [("bat_1", "ev_1", "complained"), ("bat_2", "ev_1", "delivered")]

    def test_quarantined_events_are_kept_with_their_reason(self, warehouse):
        ensure_schema(warehouse)
        post = parse(raw_body(with_raw("recipient", '"a\\u0000b"'), VALID))

        store(warehouse, post.events, post.quarantined)

        rows = warehouse.get_records(
            "SELECT event_id, batch_id, reason, raw_event FROM email_events_quarantine"
        )
        [(event_id, batch_id, reason, raw_event)] = [tuple(r) for r in rows]
        assert (event_id, batch_id, reason) == (
            "ev_bad",
            "bat_1",
            "events[0] recipient contains a NUL character",
        )
        assert json.loads(raw_event)["recipient"] == "a\x00b"
        assert stored_events(warehouse) == [("bat_1", "ev_ok", "complained")]


# email_events as the versions before the (batch_id, event_id) key made it: keyed by event_id alone.
OLD_EVENTS_TABLE = """CREATE TABLE email_events (
    event_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    campaign_id TEXT,
    recipient TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT,
    occurred_at BIGINT NOT NULL,
    received_at TEXT NOT NULL)"""


class TestEventKeyUpgrade:
    def test_an_old_events_table_is_rekeyed_keeping_its_rows(self, warehouse):
        warehouse.run(
            [
                OLD_EVENTS_TABLE,
                "CREATE INDEX email_events_by_batch ON email_events (batch_id, recipient)",
                "INSERT INTO email_events VALUES ('ev_1', 'bat_1', 'c1', 'a@example.com', 'complained', NULL,"
                " 1, '2026-01-01T00:00:00Z')",
            ]
        )

        ensure_schema(warehouse)
        ensure_schema(warehouse)  # a second time changes nothing
        store(warehouse, parse(body_of(event("ev_1", batch_id="bat_2"), event("ev_1"))).events)

        assert stored_events(warehouse) == [("bat_1", "ev_1", "complained"), ("bat_2", "ev_1", "delivered")]
        rows = warehouse.get_records("SELECT bounce_type, occurred_at FROM email_events ORDER BY batch_id")
        assert [tuple(r) for r in rows] == [(None, 1), (None, NOW)]
        assert key_columns(warehouse) == ["batch_id", "event_id"]
        assert {"email_events_by_batch", "email_events_by_type"} <= index_names(warehouse)

    def test_processes_upgrading_at_once_all_succeed(self, warehouse):
        from concurrent.futures import ThreadPoolExecutor

        from include.warehouse import get_warehouse_hook

        warehouse.run(OLD_EVENTS_TABLE)
        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(lambda _: ensure_schema(get_warehouse_hook()), range(6))) == [None] * 6
        assert key_columns(warehouse) == ["batch_id", "event_id"]

    def test_a_new_table_has_the_same_key(self, warehouse):
        ensure_schema(warehouse)
        assert key_columns(warehouse) == ["batch_id", "event_id"]


def key_columns(warehouse) -> list[str]:
    if warehouse.dialect_name == "sqlite":
        rows = warehouse.get_records("PRAGMA table_info(email_events)")
        return [r[1] for r in sorted(rows, key=lambda r: r[5]) if r[5]]
    rows = warehouse.get_records(
        "SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
        " JOIN pg_attribute a ON a.attnum = k.attnum"
        " WHERE i.indrelid = 'email_events'::regclass AND i.indisprimary AND a.attrelid = i.indrelid"
        " ORDER BY k.n"
    )
    return [r[0] for r in rows]


def index_names(warehouse) -> set[str]:
    if warehouse.dialect_name == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'email_events'"
    else:
        sql = "SELECT indexname FROM pg_indexes WHERE tablename = 'email_events'"
    return {r[0] for r in warehouse.get_records(sql)}
