"""The sandbox delivers due batches as signed webhook events (delivery.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
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

from include.migosmtp.sandbox import SandboxError, SandboxProcess
from include.migosmtp.sandbox.delivery import outcome

API_KEY = "hook-test-key"
SECRET = "whsec_test_5f2a"
RATES = {"bounce_rate": 0.2, "defer_rate": 0.1, "complaint_rate": 0.1}


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint: verifies signatures, records bodies, fails the first N posts."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.lock = threading.Lock()
        self.clear()

    def clear(self, fail_first: int = 0) -> None:
        with self.lock:
            self.fail_first = fail_first
            self.posts: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/migosmtp"

    def accepted_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for p in self.posts if p["status"] == 200 for e in p["body"]["events"]]


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
        with self.server.lock:
            failing = self.server.fail_first > 0
            if failing:
                self.server.fail_first -= 1
            status = 401 if not valid else 500 if failing else 200
            self.server.posts.append(
                {"status": status, "valid": valid, "timestamp": timestamp, "body": json.loads(raw)}
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
        **RATES,
    ) as process:
        yield process


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.reset()
    receiver.clear()


def send_at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def send(sandbox: SandboxProcess, n: int, when: str, tag: str = "t") -> str:
    body = {
        "from": "news@example.com",
        "subject": "Hi",
        "text": "Hello",
        "recipients": [{"to": f"user{i}@example.org"} for i in range(n)],
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


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def wait_delivered(sandbox: SandboxProcess, batch_id: str) -> dict[str, Any]:
    return wait_for(lambda: (b := batch(sandbox, batch_id))["status"] == "delivered" and b)


def expected_types(batch_id: str, n: int) -> dict[str, str]:
    return {f"user{i}@example.org": outcome(batch_id, f"user{i}@example.org", **RATES) for i in range(n)}


def unique(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["event_id"]: e for e in events}


def test_outcome_is_deterministic_and_follows_the_rates() -> None:
    kinds = Counter(outcome("bat_x", f"u{i}@example.org", 0.2, 0.1, 0.1) for i in range(10000))
    assert outcome("bat_x", "a@example.org", 0.2, 0.1, 0.1) == outcome(
        "bat_x", "a@example.org", 0.2, 0.1, 0.1
    )
    assert abs(kinds["bounced"] / 10000 - 0.2) < 0.02
    assert abs(kinds["deferred"] / 10000 - 0.1) < 0.02
    assert abs(kinds["complained"] / 10000 - 0.1) < 0.02
    assert outcome("bat_x", "a@example.org", 0, 0, 0) == "delivered"


def test_due_batch_delivers_one_signed_event_per_recipient(
    sandbox: SandboxProcess, receiver: Receiver
) -> None:
    n = 40
    batch_id = send(sandbox, n, send_at(timedelta(hours=1)))
    time.sleep(0.6)  # three delivery ticks: not due yet
    assert sandbox.events() == [] and receiver.posts == []
    assert batch(sandbox, batch_id)["status"] == "scheduled"

    sandbox.advance(3601)
    got = wait_delivered(sandbox, batch_id)

    assert receiver.posts and all(p["valid"] and p["timestamp"].isdigit() for p in receiver.posts)
    events = list(unique(receiver.accepted_events()).values())
    assert len(events) == n == len(receiver.accepted_events())
    by_recipient = {e["recipient"]: e for e in events}
    assert {r: e["type"] for r, e in by_recipient.items()} == expected_types(batch_id, n)
    for e in events:
        assert set(e) <= {"event_id", "type", "batch_id", "recipient", "tags", "timestamp", "reason"}
        assert e["batch_id"] == batch_id and e["tags"] == ["t"]
        assert isinstance(e["timestamp"], int)
        assert ("reason" in e) == (e["type"] in ("bounced", "deferred"))
    counts = Counter(e["type"] for e in events)
    assert got["counts"] == {t: counts.get(t, 0) for t in ("delivered", "bounced", "deferred", "complained")}
    assert sum(got["counts"].values()) == n

    stored = sandbox.events()
    assert {e["event_id"] for e in stored} == {e["event_id"] for e in events}
    assert all(e["delivered"] == 1 for e in stored)
    assert all(a["status_code"] == 200 for a in sandbox.webhook_attempts())
    looked_up = requests.get(
        f"{sandbox.url}/v1/email/batches",
        params={"tag": "t", "status": "delivered"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    ).json()["batches"]
    assert [b["batch_id"] for b in looked_up] == [batch_id]
    assert looked_up[0]["counts"] == got["counts"]


def test_events_are_posted_in_chunks(sandbox: SandboxProcess, receiver: Receiver) -> None:
    sandbox.update_settings(webhook_batch_size=7)
    batch_id = send(sandbox, 30, send_at(timedelta(seconds=-5)))  # past send_at: at once
    wait_delivered(sandbox, batch_id)
    sizes = [len(p["body"]["events"]) for p in receiver.posts]
    assert sizes == [7, 7, 7, 7, 2]
    assert [a["event_count"] for a in sandbox.webhook_attempts()] == sizes


def test_batch_due_later_emits_nothing(sandbox: SandboxProcess, receiver: Receiver) -> None:
    due = send(sandbox, 5, send_at(timedelta(minutes=30)), tag="due")
    later = send(sandbox, 5, send_at(timedelta(hours=2)), tag="later")
    sandbox.advance(3600)
    wait_delivered(sandbox, due)
    time.sleep(0.5)
    assert {e["batch_id"] for e in receiver.accepted_events()} == {due}
    assert {e["batch_id"] for e in sandbox.events()} == {due}
    assert batch(sandbox, later)["status"] == "scheduled"
    assert batch(sandbox, later)["counts"] == {"delivered": 0, "bounced": 0, "deferred": 0, "complained": 0}


def test_receiver_errors_are_retried_with_backoff(sandbox: SandboxProcess, receiver: Receiver) -> None:
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


def test_unreachable_receiver_is_recorded_then_recovers(sandbox: SandboxProcess, receiver: Receiver) -> None:
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


def test_duplicates_and_out_of_order_dedupe_to_one_event_per_recipient(
    sandbox: SandboxProcess, receiver: Receiver
) -> None:
    sandbox.update_settings(webhook_duplicate_rate=1.0, webhook_shuffle=True, webhook_batch_size=5)
    n = 20
    batch_id = send(sandbox, n, send_at(timedelta(seconds=-1)))
    wait_delivered(sandbox, batch_id)
    # Every accepted event is re-sent exactly once with duplicate_rate 1.0.
    wait_for(lambda: len(receiver.accepted_events()) == 2 * n)
    received = receiver.accepted_events()
    assert Counter(Counter(e["event_id"] for e in received).values()) == {2: n}
    events = unique(received)
    assert sorted(e["recipient"] for e in events.values()) == sorted(expected_types(batch_id, n))
    assert {e["recipient"]: e["type"] for e in events.values()} == expected_types(batch_id, n)
    assert all(p["valid"] for p in receiver.posts)


def test_without_webhook_url_batches_still_deliver_for_polling(
    sandbox: SandboxProcess, receiver: Receiver
) -> None:
    sandbox.update_settings(webhook_url=None)
    batch_id = send(sandbox, 8, send_at(timedelta(seconds=-1)))
    got = wait_delivered(sandbox, batch_id)
    expected = Counter(expected_types(batch_id, 8).values())
    assert got["counts"] == {
        t: expected.get(t, 0) for t in ("delivered", "bounced", "deferred", "complained")
    }
    time.sleep(0.3)
    assert receiver.posts == [] and sandbox.webhook_attempts() == []


def test_settings_are_validated_and_the_secret_is_never_shown(sandbox: SandboxProcess) -> None:
    shown = sandbox.update_settings(bounce_rate=0.5)
    assert shown["webhook_secret"] == "***" and shown["bounce_rate"] == 0.5
    for bad in (
        {"bounce_rate": 1.5},
        {"defer_rate": 0.6},  # 0.5 + 0.6 > 1
        {"webhook_url": "ftp://x"},
        {"webhook_batch_size": 0},
        {"webhook_retry_base_seconds": 0},
        {"webhook_shuffle": "yes"},
    ):
        with pytest.raises(SandboxError):
            sandbox.update_settings(**bad)
    with pytest.raises(SandboxError, match="seconds"):
        sandbox._admin("POST", "advance", {"seconds": "soon"})
    assert sandbox.update_settings()["defer_rate"] == 0.1
    advanced = sandbox.advance(120)
    assert advanced["clock_offset_seconds"] == 120
    assert SECRET not in Path(sandbox.log_path).read_text()


def test_pending_events_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    process = SandboxProcess(
        tmp_path / "restart.db",
        api_key=API_KEY,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_retry_base_seconds=0.2,
        **RATES,
    )
    receiver.clear(fail_first=1000)
    with process:
        batch_id = send(process, 4, send_at(timedelta(seconds=-1)))
        wait_for(lambda: len(process.webhook_attempts()) >= 1)
    receiver.clear()
    with process:
        wait_delivered(process, batch_id)
        assert len(unique(receiver.accepted_events())) == 4
        assert process.webhook_attempts()[0]["status_code"] == 500
