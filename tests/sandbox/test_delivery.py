"""The sandbox delivers due batches as signed webhook events (delivery.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import SandboxError, SandboxProcess
from sandbox.delivery import Step, outcome
from sandbox.server import Store

API_KEY = "hook-test-key"
SECRET = "whsec_test_5f2a"
RATES = {
    "bounce_rate": 0.1,
    "soft_bounce_rate": 0.1,
    "defer_rate": 0.1,
    "complaint_rate": 0.1,
    "unsubscribe_rate": 0.1,
}
NO_RATES = dict.fromkeys(RATES, 0.0)
DELAY = 900  # followup_delay_seconds: the default
COUNT_KEYS = ("delivered", "bounced", "deferred", "complained", "unsubscribed")
EVENT_KEYS = {"event_id", "type", "batch_id", "recipient", "tags", "timestamp", "reason", "bounce_type"}
POISON = "poison@example.org"


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint: verifies signatures, records bodies, fails the first N posts and,
    while ``refuse`` is set, every post with an event for that recipient."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.lock = threading.Lock()
        self.clear()

    def clear(self, fail_first: int = 0, refuse: str | None = None) -> None:
        with self.lock:
            self.fail_first = fail_first
            self.refuse = refuse
            self.posts: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/migosmtp"

    def accepted_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for p in self.posts if p["status"] == 200 for e in p["body"]["events"]]

    def posts_with(self, recipient: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.posts if any(e["recipient"] == recipient for e in p["body"]["events"])]


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        timestamp = self.headers.get("X-MigoSMTP-Timestamp")
        signature = self.headers.get("X-MigoSMTP-Signature", "")
        expected = (
            "v1=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
        )
        valid = timestamp is not None and hmac.compare_digest(signature.encode(), expected.encode())
        body = json.loads(raw)
        with self.server.lock:
            failing = self.server.fail_first > 0
            if failing:
                self.server.fail_first -= 1
            refused = any(e["recipient"] == self.server.refuse for e in body["events"])
            status = 401 if not valid else 500 if failing or refused else 200
            self.server.posts.append(
                {
                    "status": status,
                    "valid": valid,
                    "timestamp": timestamp,
                    "body": body,
                    "at": time.monotonic(),
                }
            )
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[SandboxProcess]:
    with SandboxProcess(
        tmp_path_factory.mktemp("hooks") / "sandbox.db",
        api_key=API_KEY,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_retry_base_seconds=0.2,
        webhook_retry_max_seconds=1,
        monthly_limit=10**6,
        **RATES,
    ) as process:
        yield process


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.reset()
    receiver.clear()


def send_at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def emails(n: int) -> list[str]:
    return [f"user{i}@example.org" for i in range(n)]


def send(sandbox: SandboxProcess, to: int | list[str], when: str, tag: str = "t") -> str:
    body = {
        "from": "news@example.com",
        "subject": "Hi",
        "text": "Hello",
        "recipients": [{"to": r} for r in (emails(to) if isinstance(to, int) else to)],
        "send_at": when,
        "tags": [tag],
    }
    resp = requests.post(
        f"{sandbox.url}/v1/email/send/bulk",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["batch_id"]


def batch(sandbox: SandboxProcess, batch_id: str) -> dict[str, Any]:
    resp = requests.get(
        f"{sandbox.url}/v1/email/batches/{batch_id}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert resp.status_code == 200
    return resp.json()


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def wait_delivered(sandbox: SandboxProcess, batch_id: str) -> dict[str, Any]:
    return wait_for(lambda: (b := batch(sandbox, batch_id))["status"] == "delivered" and b)


def emitted(sandbox: SandboxProcess, batch_id: str) -> list[dict[str, Any]]:
    return [e for e in sandbox.events() if e["batch_id"] == batch_id]


def wait_emitted(sandbox: SandboxProcess, batch_id: str, count: int) -> list[dict[str, Any]]:
    return wait_for(lambda: len(events := emitted(sandbox, batch_id)) == count and events)


def settle(sandbox: SandboxProcess) -> str:
    """Return once a delivery tick has run from now on: send a batch due at once, wait for it."""
    barrier = send(sandbox, ["barrier@example.org"], send_at(timedelta(seconds=-1)), "barrier")
    wait_emitted(sandbox, barrier, 1)
    return barrier


def clock(sandbox: SandboxProcess) -> float:
    return sandbox.advance(0)["now"]


def sequences(batch_id: str, recipients: list[str], **rates: float) -> dict[str, tuple[Step, ...]]:
    return {r: outcome(batch_id, r, **(rates or RATES)) for r in recipients}


def count_key(step: Step) -> str:
    """A recipient's count key when ``step`` is its latest event: soft bounces are temporary."""
    return "deferred" if step.bounce_type == "soft" else step.type


def expected_counts(seqs: dict[str, tuple[Step, ...]], emitted_per_recipient: int) -> dict[str, int]:
    latest = Counter(count_key(s[min(len(s), emitted_per_recipient) - 1]) for s in seqs.values())
    return {t: latest.get(t, 0) for t in COUNT_KEYS}


def by_recipient(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each recipient's events in the order they occurred (dedupes on event_id)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for e in {e["event_id"]: e for e in events}.values():
        grouped.setdefault(e["recipient"], []).append(e)
    return {r: sorted(es, key=lambda e: e["timestamp"]) for r, es in grouped.items()}


def steps_of(events: list[dict[str, Any]]) -> tuple[Step, ...]:
    return tuple(Step(e["type"], e.get("bounce_type")) for e in events)


def unique(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["event_id"]: e for e in events}


# --- the sequences (a pure function) -------------------------------------------------------


def test_outcome_sequences_are_deterministic_and_follow_the_rates() -> None:
    n = 10_000
    seqs = Counter(outcome("bat_x", f"u{i}@example.org", **RATES) for i in range(n))
    hard, soft = Step("bounced", "hard"), Step("bounced", "soft")
    delivered = Step("delivered")
    shares = {
        "hard": seqs[(hard,)],
        "soft": seqs[(soft, delivered)] + seqs[(soft, hard)],
        "defer": seqs[(Step("deferred"), delivered)],
        "complaint": seqs[(delivered, Step("complained"))],
        "unsubscribe": seqs[(delivered, Step("unsubscribed"))],
        "delivered": seqs[(delivered,)],
    }
    assert sum(shares.values()) == n, f"unexpected sequences: {set(seqs)}"
    for name, rate in (
        *((k, 0.1) for k in ("hard", "soft", "defer", "complaint", "unsubscribe")),
        ("delivered", 0.5),
    ):
        assert abs(shares[name] / n - rate) < 0.015, (name, shares[name])
    # A soft bounce ends delivered or hard-bounced, about half each.
    assert abs(seqs[(soft, delivered)] / shares["soft"] - 0.5) < 0.1

    assert outcome("bat_x", "a@example.org", **RATES) == outcome("bat_x", "a@example.org", **RATES)
    assert outcome("bat_x", "a@example.org") == (delivered,)
    assert outcome("bat_x", "a@example.org", bounce_rate=1.0) == (hard,)
    assert outcome("bat_x", "a@example.org", unsubscribe_rate=1.0) == (delivered, Step("unsubscribed"))
    assert outcome("bat_x", "a@example.org", defer_rate=1.0) == (Step("deferred"), delivered)
    assert outcome("bat_x", "a@example.org", complaint_rate=1.0) == (delivered, Step("complained"))
    assert {s[1] for s in (outcome("bat_y", f"u{i}", soft_bounce_rate=1.0) for i in range(50))} == {
        delivered,
        hard,
    }
    # bounce_type only on bounces; the reason says permanent or temporary as SMTP does.
    for seq in seqs:
        for step in seq:
            assert (step.bounce_type is not None) == (step.type == "bounced")
    assert hard.reason.startswith("5") and soft.reason.startswith("4")
    assert Step("deferred").reason.startswith("4") and delivered.reason is None


# --- delivery over HTTP -----------------------------------------------------------------------


def test_due_batch_delivers_each_recipients_signed_sequence(
    sandbox: SandboxProcess, receiver: Receiver
) -> None:
    n = 40
    recipients = emails(n)
    batch_id = send(sandbox, n, send_at(timedelta(hours=1)))
    seqs = sequences(batch_id, recipients)
    assert any(len(s) == 2 for s in seqs.values())
    settle(sandbox)  # a batch due now was sent: this one is not due yet
    assert emitted(sandbox, batch_id) == [] and receiver.posts_with("user0@example.org") == []
    assert batch(sandbox, batch_id)["status"] == "scheduled"

    sent_from = int(sandbox.advance(3601)["now"])
    first = wait_emitted(sandbox, batch_id, n)
    sent_by = clock(sandbox)
    # The first events: one per recipient, at send time; the batch keeps sending while
    # follow-ups are due.
    assert {e["recipient"]: (e["type"], e["bounce_type"]) for e in first} == {
        r: tuple(s[0]) for r, s in seqs.items()
    }
    assert all(sent_from <= e["timestamp"] <= sent_by for e in first)
    wait_for(lambda: all(e["delivered"] for e in emitted(sandbox, batch_id)))
    got = batch(sandbox, batch_id)
    assert got["status"] == "sending"
    assert got["counts"] == expected_counts(seqs, 1)

    sandbox.advance(DELAY)
    got = wait_delivered(sandbox, batch_id)

    assert receiver.posts and all(p["valid"] and p["timestamp"].isdigit() for p in receiver.posts)
    events = [e for e in receiver.accepted_events() if e["batch_id"] == batch_id]
    assert len(events) == len(unique(events)) == sum(len(s) for s in seqs.values())
    received = by_recipient(events)
    assert {r: steps_of(es) for r, es in received.items()} == seqs
    for es in received.values():
        assert [e["timestamp"] - es[0]["timestamp"] for e in es] == [0, DELAY][: len(es)]
    for e in events:
        assert set(e) <= EVENT_KEYS
        assert e["batch_id"] == batch_id and e["tags"] == ["t"]
        assert isinstance(e["timestamp"], int)
        assert ("bounce_type" in e) == (e["type"] == "bounced")
        assert ("reason" in e) == (e["type"] in ("bounced", "deferred"))
        if e.get("bounce_type") == "soft":
            assert e["reason"].startswith("4")
    assert got["counts"] == expected_counts(seqs, 2)
    assert sum(got["counts"].values()) == n

    stored = emitted(sandbox, batch_id)
    assert {e["event_id"] for e in stored} == {e["event_id"] for e in events}
    assert all(e["delivered"] == 1 for e in stored)
    assert all(
        ("bounce_type" in e) and (e["bounce_type"] is not None) == (e["type"] == "bounced") for e in stored
    )
    assert all(a["status_code"] == 200 for a in sandbox.webhook_attempts())
    looked_up = requests.get(
        f"{sandbox.url}/v1/email/batches",
        params={"tag": "t", "status": "delivered"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    ).json()["batches"]
    assert [b["batch_id"] for b in looked_up] == [batch_id]
    assert looked_up[0]["counts"] == got["counts"]


def test_followups_wait_for_the_sandbox_clock(sandbox: SandboxProcess, receiver: Receiver) -> None:
    n = 60
    batch_id = send(sandbox, n, send_at(timedelta(seconds=-1)))
    seqs = sequences(batch_id, emails(n))
    followups = sum(len(s) - 1 for s in seqs.values())
    assert followups
    wait_emitted(sandbox, batch_id, n)

    sandbox.advance(DELAY - 30)  # the test takes far less than 30 s of real time
    settle(sandbox)
    assert len(emitted(sandbox, batch_id)) == n
    assert batch(sandbox, batch_id)["counts"] == expected_counts(seqs, 1)

    sandbox.advance(60)
    events = wait_emitted(sandbox, batch_id, n + followups)
    wait_delivered(sandbox, batch_id)
    later = events[n:]  # oldest first: the follow-ups come after all first events
    assert {(e["recipient"], e["type"], e["bounce_type"]) for e in later} == {
        (r, *s[1]) for r, s in seqs.items() if len(s) == 2
    }
    assert (
        len({e["event_id"] for e in receiver.accepted_events() if e["batch_id"] == batch_id}) == n + followups
    )


def test_counts_follow_each_recipients_latest_event_without_webhooks(
    sandbox: SandboxProcess, receiver: Receiver
) -> None:
    sandbox.update_settings(webhook_url=None)
    n = 200
    batch_id = send(sandbox, n, send_at(timedelta(seconds=-1)))
    seqs = sequences(batch_id, emails(n))
    wait_emitted(sandbox, batch_id, n)
    first = batch(sandbox, batch_id)
    # Before the follow-ups: soft bounces and deferrals are deferred; complaints and
    # unsubscribes are delivered so far. Sending is not over.
    assert first["counts"] == expected_counts(seqs, 1)
    assert first["counts"]["deferred"] and first["counts"]["bounced"]
    assert (first["counts"]["complained"], first["counts"]["unsubscribed"]) == (0, 0)
    assert sum(first["counts"].values()) == n and first["status"] == "sending"

    sandbox.advance(DELAY)
    final = wait_delivered(sandbox, batch_id)
    assert final["counts"] == expected_counts(seqs, 2)
    assert all(final["counts"][t] for t in ("delivered", "bounced", "complained", "unsubscribed"))
    assert final["counts"]["deferred"] == 0  # every temporary state was resolved
    assert sum(final["counts"].values()) == n
    assert len(sandbox.events()) == sum(len(s) for s in seqs.values())
    assert receiver.posts == [] and sandbox.webhook_attempts() == []


def test_counts_at_the_same_second_take_the_later_event(sandbox: SandboxProcess) -> None:
    # A delay of a millisecond puts a follow-up in its first event's second but for one batch
    # in a thousand: try up to three.
    sandbox.update_settings(webhook_url=None, followup_delay_seconds=0.001)
    n = 100
    tied = False
    for _ in range(3):
        batch_id = send(sandbox, n, send_at(timedelta(seconds=-1)))
        seqs = sequences(batch_id, emails(n))
        got = wait_delivered(sandbox, batch_id)
        assert got["counts"] == expected_counts(seqs, 2)
        pairs = [es for es in by_recipient(emitted(sandbox, batch_id)).values() if len(es) == 2]
        assert pairs
        if all(a["timestamp"] == b["timestamp"] for a, b in pairs):
            tied = True
            break
    assert tied


def test_events_are_posted_in_chunks(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.update_settings(webhook_batch_size=7, **NO_RATES)
    batch_id = send(sandbox, 30, send_at(timedelta(seconds=-5)))  # past send_at: at once
    wait_delivered(sandbox, batch_id)
    sizes = [len(p["body"]["events"]) for p in receiver.posts]
    assert sizes == [7, 7, 7, 7, 2]
    assert [a["event_count"] for a in sandbox.webhook_attempts()] == sizes


def test_batch_due_later_emits_nothing(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.update_settings(**NO_RATES)
    due = send(sandbox, 5, send_at(timedelta(minutes=30)), tag="due")
    later = send(sandbox, 5, send_at(timedelta(hours=2)), tag="later")
    sandbox.advance(3600)
    wait_delivered(sandbox, due)
    barrier = settle(sandbox)
    assert due in {e["batch_id"] for e in receiver.accepted_events()}
    assert {e["batch_id"] for e in receiver.accepted_events()} <= {due, barrier}
    assert {e["batch_id"] for e in sandbox.events()} == {due, barrier}
    assert batch(sandbox, later)["status"] == "scheduled"
    assert batch(sandbox, later)["counts"] == dict.fromkeys(COUNT_KEYS, 0)


def test_a_cancelled_batch_emits_nothing_and_posts_nothing(
    sandbox: SandboxProcess, receiver: Receiver
) -> None:
    sandbox.update_settings(**NO_RATES)
    when = send_at(timedelta(hours=1))
    kept = send(sandbox, 20, when, tag="kept")
    cancelled = send(sandbox, 20, when, tag="cancelled")
    resp = requests.post(
        f"{sandbox.url}/v1/email/batches/{cancelled}/cancel",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text

    sandbox.advance(3601)
    wait_delivered(sandbox, kept)  # the tick that sent it saw the cancelled batch due too

    assert emitted(sandbox, cancelled) == []
    assert all(e["batch_id"] != cancelled for p in receiver.posts for e in p["body"]["events"])
    assert {e["batch_id"] for e in receiver.accepted_events()} == {kept}
    got = batch(sandbox, cancelled)
    assert (got["status"], got["counts"]) == ("cancelled", dict.fromkeys(COUNT_KEYS, 0))


def test_a_batch_cancelled_while_it_falls_due_is_not_sent(tmp_path: Path) -> None:
    # A delivery tick reads the due batches, then sends each: a cancel can land in between.
    store = Store(str(tmp_path / "race.db"))
    when = "2030-01-01T00:00:00Z"
    body = {"from": "a@example.com", "subject": "s", "html": "", "text": "t", "tags": [], "send_at": when}
    store.accept(
        {**body, "batch_id": "bat_1", "idempotency_key": None, "recipients": [{"to": "a@b.org"}]}, None
    )
    [due] = store.due_batches(when)
    assert store.cancel("bat_1", not_before="2029-12-31T23:50:00Z")[1]
    step = {"position": 0, "recipient": "a@b.org", "seq": 0, "type": "delivered", "reason": None}
    event = {**step, "event_id": "evt_1", "batch_id": "bat_1", "bounce_type": None, "timestamp": 1}

    store.send_batch(due["batch_id"], [{**event, "tags_json": "[]", "emitted_at": 1.0, "skipped": 0}], [])

    assert store.events()["events"] == []
    assert [b["status"] for b in store.batches()] == ["cancelled"] and store.monthly_used() == 0
    store.close()


def test_receiver_errors_are_retried_with_backoff(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.update_settings(**NO_RATES)
    receiver.clear(fail_first=3)
    batch_id = send(sandbox, 10, send_at(timedelta(hours=1)))
    sandbox.advance(3600)
    assert wait_for(lambda: batch(sandbox, batch_id)["status"] == "sending")
    started = time.monotonic()
    got = wait_delivered(sandbox, batch_id)
    # Backoff 0.2 + 0.4 + 0.8 s between the four attempts.
    assert time.monotonic() - started >= 1.0
    attempts = sandbox.webhook_attempts()
    assert [a["status_code"] for a in attempts] == [500, 500, 500, 200]
    assert all(a["event_count"] == 10 and a["error"] is None for a in attempts)
    assert [p["status"] for p in receiver.posts] == [500, 500, 500, 200]
    # The same events were re-sent each time.
    ids = [sorted(e["event_id"] for e in p["body"]["events"]) for p in receiver.posts]
    assert ids[0] == ids[1] == ids[2] == ids[3]
    assert sum(got["counts"].values()) == 10


def test_a_refused_chunk_does_not_hold_back_other_events(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.update_settings(webhook_batch_size=5, **NO_RATES)
    receiver.clear(refuse=POISON)
    first_recipients = emails(20)
    first_recipients[7] = POISON  # in the second chunk
    first = send(sandbox, first_recipients, send_at(timedelta(seconds=-1)), tag="first")

    def accepted(batch_id: str) -> set[str]:
        return {e["recipient"] for e in receiver.accepted_events() if e["batch_id"] == batch_id}

    # Every other event arrives, the four that shared the poisoned chunk included (that
    # chunk is split as it is retried), while the receiver keeps refusing the one event.
    wait_for(lambda: accepted(first) == set(first_recipients) - {POISON})
    wait_for(lambda: len(receiver.posts_with(POISON)) >= 3)
    # Later batches are not held back either.
    second = send(sandbox, 10, send_at(timedelta(seconds=-1)), tag="second")
    wait_delivered(sandbox, second)
    assert accepted(second) == set(emails(10))
    assert batch(sandbox, first)["status"] == "sending"

    wait_for(lambda: len(receiver.posts_with(POISON)) >= 5)
    with receiver.lock:
        receiver.refuse = None
    got = wait_delivered(sandbox, first)
    assert accepted(first) == set(first_recipients) and sum(got["counts"].values()) == 20

    tries = receiver.posts_with(POISON)
    assert [p["status"] for p in tries[:-1]] == [500] * (len(tries) - 1) and tries[-1]["status"] == 200
    sizes = [len(p["body"]["events"]) for p in tries]
    assert sizes[0] == 5 and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    # Exponential backoff per refused chunk: 0.2, 0.4, 0.8 s, then the 1 s ceiling.
    gaps = [b["at"] - a["at"] for a, b in zip(tries, tries[1:], strict=False)]
    for k, gap in enumerate(gaps):
        assert gap >= min(0.2 * 2**k, 1.0) - 0.02, gaps
    # Each event was accepted once (no duplicates configured).
    received = Counter(e["event_id"] for e in receiver.accepted_events())
    assert set(received.values()) == {1} and len(received) == 30


def test_unreachable_receiver_is_recorded_then_recovers(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.update_settings(**NO_RATES)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    dead_url = f"http://127.0.0.1:{closed.server_address[1]}/hooks"
    closed.server_close()
    sandbox.update_settings(webhook_url=dead_url)
    batch_id = send(sandbox, 3, send_at(timedelta(seconds=-1)))
    wait_for(lambda: len(sandbox.webhook_attempts()) >= 2)
    first = sandbox.webhook_attempts()[0]
    assert first["status_code"] is None and "refused" in first["error"].lower()
    assert batch(sandbox, batch_id)["status"] == "sending"
    sandbox.update_settings(webhook_url=receiver.url)
    wait_delivered(sandbox, batch_id)
    assert len(unique(receiver.accepted_events())) == 3


def test_duplicates_and_out_of_order_dedupe_to_each_recipients_sequence(
    sandbox: SandboxProcess, receiver: Receiver
) -> None:
    sandbox.update_settings(webhook_duplicate_rate=1.0, webhook_shuffle=True, webhook_batch_size=5)
    n = 20
    batch_id = send(sandbox, n, send_at(timedelta(seconds=-1)))
    seqs = sequences(batch_id, emails(n))
    total = sum(len(s) for s in seqs.values())
    wait_emitted(sandbox, batch_id, n)
    sandbox.advance(DELAY)
    wait_delivered(sandbox, batch_id)
    # Every accepted event is re-sent exactly once with duplicate_rate 1.0.
    wait_for(lambda: len(receiver.accepted_events()) == 2 * total)
    wait_for(lambda: not any(e["redelivery_pending"] for e in sandbox.events()))
    received = receiver.accepted_events()
    assert Counter(Counter(e["event_id"] for e in received).values()) == {2: total}
    assert {r: steps_of(es) for r, es in by_recipient(received).items()} == seqs
    assert all(p["valid"] for p in receiver.posts)


def test_settings_are_validated_and_the_secret_is_never_shown(sandbox: SandboxProcess) -> None:
    shown = sandbox.update_settings(bounce_rate=0.5)
    assert shown["webhook_secret"] == "***" and shown["bounce_rate"] == 0.5
    assert shown["followup_delay_seconds"] == DELAY
    for bad in (
        {"bounce_rate": 1.5},
        {"soft_bounce_rate": -0.1},
        {"unsubscribe_rate": "0.1"},
        {"defer_rate": 0.6},  # 0.5 + 0.6 > 1
        {"unsubscribe_rate": 0.2, "soft_bounce_rate": 0.2},  # 0.5 + 0.1 * 3 + 0.4 > 1
        {"followup_delay_seconds": 0},
        {"followup_delay_seconds": -5},
        {"followup_delay_seconds": "soon"},
        {"webhook_url": "ftp://x"},
        {"webhook_batch_size": 0},
        {"webhook_retry_base_seconds": 0},
        {"webhook_shuffle": "yes"},
    ):
        with pytest.raises(SandboxError, match="must"):
            sandbox.update_settings(**bad)
    with pytest.raises(SandboxError, match="must not exceed 1"):
        sandbox.update_settings(unsubscribe_rate=0.3)
    with pytest.raises(SandboxError, match="seconds"):
        sandbox._admin("POST", "advance", {"seconds": "soon"})
    unchanged = sandbox.update_settings()
    assert (unchanged["defer_rate"], unchanged["unsubscribe_rate"], unchanged["soft_bounce_rate"]) == (
        0.1,
    ) * 3
    assert unchanged["followup_delay_seconds"] == DELAY
    # Exactly 1 in all is fine, though 0.2 + 0.4 + 0.3 + 0.1 is a little over 1 in floating point.
    exact = {"bounce_rate": 0.2, "defer_rate": 0.4, "complaint_rate": 0.3, "soft_bounce_rate": 0.1}
    assert sandbox.update_settings(**exact, unsubscribe_rate=0)["defer_rate"] == 0.4
    assert sandbox.update_settings(followup_delay_seconds=1.5)["followup_delay_seconds"] == 1.5
    advanced = sandbox.advance(120)
    assert advanced["clock_offset_seconds"] == 120
    assert SECRET not in Path(sandbox.log_path).read_text()


def test_invalid_rates_on_the_command_line_stop_the_sandbox(tmp_path: Path) -> None:
    for settings, message in (
        ({"bounce_rate": 0.6, "unsubscribe_rate": 0.6}, "must not exceed 1"),
        ({"followup_delay_seconds": 0}, "followup_delay_seconds must be a positive number"),
    ):
        process = SandboxProcess(tmp_path / "bad.db", api_key=API_KEY, **settings)
        with pytest.raises(SandboxError, match="exited with code 2") as raised:
            process.start()
        assert message in str(raised.value)


def test_pending_and_scheduled_events_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    process = SandboxProcess(
        tmp_path / "restart.db",
        api_key=API_KEY,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_retry_base_seconds=0.2,
        **RATES,
    )
    n = 8
    receiver.clear(fail_first=1000)
    with process:
        batch_id = send(process, n, send_at(timedelta(seconds=-1)))
        wait_for(lambda: len(process.webhook_attempts()) >= 1)
    seqs = sequences(batch_id, emails(n))
    receiver.clear()
    with process:
        wait_for(lambda: len(unique(receiver.accepted_events())) == n)
        process.advance(DELAY)
        wait_delivered(process, batch_id)
        assert {r: steps_of(es) for r, es in by_recipient(receiver.accepted_events()).items()} == seqs
        assert process.webhook_attempts()[0]["status_code"] == 500


def test_a_database_from_before_event_sequences_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE batches (
                batch_id TEXT PRIMARY KEY, idempotency_key TEXT, status TEXT NOT NULL,
                send_at TEXT NOT NULL, recipient_count INTEGER NOT NULL, tags_json TEXT NOT NULL,
                from_email TEXT NOT NULL, subject TEXT NOT NULL, html TEXT NOT NULL,
                text TEXT NOT NULL, created_at TEXT NOT NULL);
            CREATE TABLE events (
                event_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, recipient TEXT NOT NULL,
                type TEXT NOT NULL, reason TEXT, timestamp INTEGER NOT NULL,
                delivered INTEGER NOT NULL DEFAULT 0, tags_json TEXT NOT NULL,
                emitted_at REAL NOT NULL, skipped INTEGER NOT NULL DEFAULT 0,
                dup_pending INTEGER NOT NULL DEFAULT 0);
            INSERT INTO batches VALUES ('bat_old', NULL, 'delivered', '2030-01-01T00:00:00Z', 2, '[]',
                'a@example.com', 's', '', 't', '2030-01-01T00:00:00+00:00');
            INSERT INTO events VALUES
                ('evt_1', 'bat_old', 'a@example.org', 'bounced', '550', 1, 1, '[]', 1, 0, 0),
                ('evt_2', 'bat_old', 'b@example.org', 'delivered', NULL, 1, 1, '[]', 1, 0, 0);
            """
        )
    with SandboxProcess(db, api_key=API_KEY) as process:
        assert [(e["type"], e["bounce_type"]) for e in process.events()] == [
            ("bounced", "hard"),
            ("delivered", None),
        ]
        assert batch(process, "bat_old")["counts"] == {
            **dict.fromkeys(COUNT_KEYS, 0),
            "bounced": 1,
            "delivered": 1,
        }
        process.update_settings(webhook_url=None, unsubscribe_rate=1.0)
        batch_id = send(process, 2, send_at(timedelta(seconds=-1)))
        wait_emitted(process, batch_id, 2)
        process.advance(DELAY)
        assert wait_delivered(process, batch_id)["counts"]["unsubscribed"] == 2
