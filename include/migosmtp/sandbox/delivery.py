"""Sandbox delivery: turns due batches into signed webhook events.

A background thread wakes every ``TICK_SECONDS``. It "sends" every batch
whose ``send_at`` has passed on the sandbox clock (real UTC plus the
``clock_offset_seconds`` setting): one event per recipient, its type chosen
deterministically from the batch id and recipient (:func:`outcome`), stored
in the ``events`` table. Pending events are POSTed to ``webhook_url`` as
``{"events": [...]}`` in chunks of ``webhook_batch_size``, signed as
:func:`sign` describes. A non-2xx answer, or none within
``WEBHOOK_TIMEOUT_SECONDS``, is retried with exponential backoff
(``webhook_retry_base_seconds`` doubling up to ``webhook_retry_max_seconds``)
until the event is older than ``webhook_retry_horizon_seconds``; then it is
given up (``skipped``). Every attempt is recorded in ``webhook_attempts``.

A batch goes ``scheduled`` -> ``sending`` when its events are emitted and
``sending`` -> ``delivered`` once the receiver accepted all of them. With no
``webhook_url`` the events are still emitted and recorded (so clients can
poll the batch status and counts) and the batch goes straight to
``delivered``; nothing is POSTed. Accepted events are re-sent once with
probability ``webhook_duplicate_rate``, and ``webhook_shuffle`` sends pending
events in random order, as real providers do both.

The webhook secret is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

TICK_SECONDS = 0.2
WEBHOOK_TIMEOUT_SECONDS = 10.0
MAX_CHUNKS_PER_TICK = 50
TIMESTAMP_HEADER = "X-MigoSMTP-Timestamp"
SIGNATURE_HEADER = "X-MigoSMTP-Signature"
EVENT_TYPES = ("delivered", "bounced", "deferred", "complained")
REASONS = {
    "bounced": "550 5.1.1 mailbox does not exist",
    "deferred": "421 4.7.0 temporary failure, try again later",
}


def outcome(
    batch_id: str,
    recipient: str,
    bounce_rate: float,
    defer_rate: float,
    complaint_rate: float,
) -> str:
    """The event type for one recipient: deterministic in (batch_id, recipient).

    A uniform number u in [0, 1) is derived from SHA-256 of
    ``"<batch_id>:<recipient>"``; u < bounce_rate bounces, the next
    defer_rate defers, the next complaint_rate complains, the rest deliver.
    """
    digest = hashlib.sha256(f"{batch_id}:{recipient}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    for kind, rate in (("bounced", bounce_rate), ("deferred", defer_rate), ("complained", complaint_rate)):
        if u < rate:
            return kind
        u -= rate
    return "delivered"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`` keyed with the webhook secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


def send_at_string(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_json(row: Any) -> dict[str, Any]:
    event = {
        "event_id": row["event_id"],
        "type": row["type"],
        "batch_id": row["batch_id"],
        "recipient": row["recipient"],
        "tags": json.loads(row["tags_json"]),
        "timestamp": row["timestamp"],
    }
    if row["reason"] is not None:
        event["reason"] = row["reason"]
    return event


class EventStore(Protocol):
    """What delivery needs from the sandbox's record (``server.Store`` provides it)."""

    def due_batches(self, now: str) -> Sequence[Mapping[str, Any]]: ...
    def recipient_emails(self, batch_id: str) -> list[str]: ...
    def emit_events(self, batch_id: str, events: list[dict[str, Any]], status: str) -> None: ...
    def pending_events(self, limit: int, shuffle: bool = False) -> list[Mapping[str, Any]]: ...
    def duplicate_events(self, limit: int) -> list[Mapping[str, Any]]: ...
    def accept_events(self, accepted: list[tuple[str, int]], duplicates: list[str]) -> None: ...
    def expire_events(self, emitted_before: float) -> int: ...
    def record_attempt(self, event_count: int, status: int | None, err: str | None) -> None: ...


class DeliveryWorker:
    """The background thread; every tick runs under ``lock``.

    It is handed what it uses (the record, the live settings, the sandbox clock, the
    lock the server's reset also takes) rather than the server, so this module does
    not depend on ``server``, which depends on it.
    """

    def __init__(
        self,
        store: EventStore,
        settings: Callable[[], Any],
        clock: Callable[[], float],
        lock: threading.Lock,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._lock = lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()
        self.reset_backoff()

    def reset_backoff(self) -> None:
        self._failures = 0
        self._next_attempt = 0.0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sandbox-delivery", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WEBHOOK_TIMEOUT_SECONDS + 2)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep delivering after a sandbox bug
                sys.stderr.write(f"delivery tick failed: {exc!r}\n")

    def tick(self) -> None:
        with self._lock:
            settings = self._settings()
            self._emit_due(settings)
            if not settings.webhook_url:
                return
            expired = self._store.expire_events(time.time() - settings.webhook_retry_horizon_seconds)
            if expired:
                sys.stderr.write(f"webhook: gave up on {expired} events past the retry horizon\n")
            for _ in range(MAX_CHUNKS_PER_TICK):
                if self._stop.is_set() or time.monotonic() < self._next_attempt:
                    return
                if not self._post_chunk(settings):
                    return

    def _emit_due(self, settings: Any) -> None:
        store = self._store
        now = self._clock()
        for batch in store.due_batches(send_at_string(now)):
            events = []
            for recipient in store.recipient_emails(batch["batch_id"]):
                kind = outcome(
                    batch["batch_id"],
                    recipient,
                    settings.bounce_rate,
                    settings.defer_rate,
                    settings.complaint_rate,
                )
                events.append(
                    {
                        "event_id": f"evt_{secrets.token_hex(12)}",
                        "batch_id": batch["batch_id"],
                        "recipient": recipient,
                        "type": kind,
                        "reason": REASONS.get(kind),
                        "timestamp": int(now),
                        "tags_json": batch["tags_json"],
                        "emitted_at": time.time(),
                        "skipped": 0 if settings.webhook_url else 1,
                    }
                )
            status = "sending" if settings.webhook_url else "delivered"
            store.emit_events(batch["batch_id"], events, status)

    def _post_chunk(self, settings: Any) -> bool:
        """POST one chunk of pending events (and due duplicates); True if there may be more."""
        store = self._store
        size = settings.webhook_batch_size
        pending = store.pending_events(size, shuffle=settings.webhook_shuffle)
        duplicates = store.duplicate_events(max(0, size - len(pending)))
        rows = pending + duplicates
        if not rows:
            return False
        events = [event_json(r) for r in rows]
        if settings.webhook_shuffle:
            self._random.shuffle(events)
        body = json.dumps({"events": events}, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            settings.webhook_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "MigoSMTPSandbox-Webhooks/1.0",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(settings.webhook_secret, timestamp, body),
            },
        )
        status: int | None = None
        err: str | None = None
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad URL
            err = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        store.record_attempt(len(events), status, err)
        ok = status is not None and 200 <= status < 300
        sys.stderr.write(f"webhook POST {len(events)} events -> {status if status is not None else err}\n")
        if not ok:
            self._failures += 1
            delay = min(
                settings.webhook_retry_base_seconds * 2 ** (self._failures - 1),
                settings.webhook_retry_max_seconds,
            )
            self._next_attempt = time.monotonic() + delay
            return False
        self.reset_backoff()
        rate = settings.webhook_duplicate_rate
        store.accept_events(
            [(r["event_id"], int(self._random.random() < rate)) for r in pending],
            [r["event_id"] for r in duplicates],
        )
        return True
