"""Sandbox delivery: turns due batches into signed webhook events.

A background thread wakes every ``TICK_SECONDS``. It "sends" every batch
whose ``send_at`` has passed on the sandbox clock (real UTC plus the
``clock_offset_seconds`` setting). Each recipient gets a short sequence of
events, chosen deterministically from the batch id and recipient
(:func:`outcome`), because that is how a real provider reports a message
over time and what clients must learn to fold: a soft bounce
(``bounced``/``soft``) later turns into ``delivered`` or a hard bounce, a
deferral into ``delivered``, and a complaint or unsubscribe follows its
``delivered``. The first event happens at send time; the second
``followup_delay_seconds`` later on the sandbox clock and is emitted only once
the clock gets there (``POST /_sandbox/advance`` fast-forwards it), so tests
can look at a batch between the two. Emitted events are stored in the
``events`` table; scheduled ones wait in ``scheduled_events``.

Emitted events are POSTed to ``webhook_url`` as ``{"events": [...]}`` in
chunks of ``webhook_batch_size``, signed as :func:`sign` describes. A chunk
answered with a non-2xx status, or not within ``WEBHOOK_TIMEOUT_SECONDS``, is
retried on its own with exponential backoff (``webhook_retry_base_seconds``
doubling up to ``webhook_retry_max_seconds``, kept per event) while other
events keep flowing: one event a receiver chokes on must not hold back the
rest. Each retry halves the chunk (:func:`chunk_limit`), so such an event ends
up alone and its neighbours get through. An event older than
``webhook_retry_horizon_seconds`` is given up (``skipped``). Every attempt is
recorded in ``webhook_attempts``.

A batch goes ``scheduled`` -> ``sending`` when it is sent and ``sending`` ->
``delivered`` once the receiver accepted all its events, follow-ups included.
With no ``webhook_url`` the events are still emitted and recorded (so clients
can poll the batch status and counts) and the batch is ``delivered`` once its
last follow-up was emitted; nothing is POSTed. Accepted events are re-sent
once with probability ``webhook_duplicate_rate``, and ``webhook_shuffle``
sends them in random order, as real providers do both.

The webhook secret is never logged.
"""

from __future__ import annotations

import hashlib
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
from typing import Any, NamedTuple, Protocol

from include.migosmtp.contract import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

TICK_SECONDS = 0.2
WEBHOOK_TIMEOUT_SECONDS = 10.0
MAX_CHUNKS_PER_TICK = 50
# The ``skipped`` column: 0 to be POSTed; GIVEN_UP past the retry horizon; NOT_POSTED when
# emitted with no webhook_url (the batch need not wait for those to be accepted).
GIVEN_UP = 1
NOT_POSTED = 2


# The settings that pick a recipient's sequence, as keyword arguments of outcome().
OUTCOME_RATES = ("bounce_rate", "defer_rate", "complaint_rate", "soft_bounce_rate", "unsubscribe_rate")


class Step(NamedTuple):
    """One event of a recipient's sequence; ``bounce_type`` is set on ``bounced`` only."""

    type: str
    bounce_type: str | None = None

    @property
    def reason(self) -> str | None:
        if self.type == "deferred":
            return "421 4.7.0 temporary failure, try again later"
        if self.type == "bounced" and self.bounce_type == "soft":
            return "452 4.2.2 mailbox full"
        if self.type == "bounced":
            return "550 5.1.1 mailbox does not exist"
        return None


DELIVERED = Step("delivered")
HARD_BOUNCE = Step("bounced", "hard")
SOFT_BOUNCE = Step("bounced", "soft")


def outcome(
    batch_id: str,
    recipient: str,
    bounce_rate: float = 0.0,
    defer_rate: float = 0.0,
    complaint_rate: float = 0.0,
    soft_bounce_rate: float = 0.0,
    unsubscribe_rate: float = 0.0,
) -> tuple[Step, ...]:
    """One recipient's events, in order: deterministic in (batch_id, recipient).

    The first happens at send time, the second (if any) ``followup_delay_seconds``
    later. A uniform number u in [0, 1) is derived from the first 8 bytes of
    SHA-256 of ``"<batch_id>:<recipient>"``: u < bounce_rate hard-bounces, the next
    defer_rate defers then delivers, the next complaint_rate delivers then complains,
    the next soft_bounce_rate soft-bounces, the next unsubscribe_rate delivers then
    unsubscribes, the rest deliver. (The order keeps the recipients picked by the
    three original rates where they were.) Bytes 8-15 decide, about half each,
    whether a soft bounce ends delivered or hard-bounced.
    """
    digest = hashlib.sha256(f"{batch_id}:{recipient}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    later = DELIVERED if int.from_bytes(digest[8:16], "big") < 2**63 else HARD_BOUNCE
    sequences = (
        (bounce_rate, (HARD_BOUNCE,)),
        (defer_rate, (Step("deferred"), DELIVERED)),
        (complaint_rate, (DELIVERED, Step("complained"))),
        (soft_bounce_rate, (SOFT_BOUNCE, later)),
        (unsubscribe_rate, (DELIVERED, Step("unsubscribed"))),
    )
    for rate, sequence in sequences:
        if u < rate:
            return sequence
        u -= rate
    return (DELIVERED,)


def chunk_limit(size: int, failures: int) -> int:
    """How many events a chunk may hold when they were refused ``failures`` times: halved each time.

    A receiver that keeps refusing one event (a payload it cannot parse, a bug in its
    handler) would otherwise keep refusing everything posted with it.
    """
    return max(1, -(-size // 2 ** min(failures, 30)))


def retry_delay(failures: int, base: float, ceiling: float) -> float:
    """Seconds before a chunk refused ``failures`` times (at least once) is posted again."""
    return min(base * 2.0 ** min(failures - 1, 60), ceiling)


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
    if row["type"] == "bounced":
        event["bounce_type"] = row["bounce_type"] or "hard"  # rows from before bounce types
    return event


class EventStore(Protocol):
    """What delivery needs from the sandbox's record (``server.Store`` provides it)."""

    def due_batches(self, now: str) -> Sequence[Mapping[str, Any]]: ...
    def recipient_emails(self, batch_id: str) -> list[str]: ...
    def send_batch(
        self, batch_id: str, events: list[dict[str, Any]], followups: list[dict[str, Any]]
    ) -> None: ...
    def emit_followups(self, now: float, emitted_at: float, skipped: int) -> int: ...
    def postable_events(self, limit: int, now: float, shuffle: bool = False) -> list[Mapping[str, Any]]: ...
    def accept_events(self, accepted: list[tuple[str, int]], duplicates: list[str]) -> None: ...
    def refuse_events(self, event_ids: list[str], next_attempt: float) -> None: ...
    def expire_events(self, emitted_before: float) -> int: ...
    def record_attempt(self, event_count: int, status: int | None, err: str | None) -> None: ...


class DeliveryWorker:
    """The background thread; every tick runs under ``lock``.

    It is handed what it uses (the record, the live settings, the sandbox clock, the
    lock the server's reset also takes) rather than the server, so this module does
    not depend on ``server``, which depends on it. Retry state lives in the record
    (per event), so a reset or a restart needs nothing from the worker.
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
            # A refused chunk ends the tick: a receiver that is down or hanging then costs at most
            # one timeout per tick (the reset waits for the lock), and the next tick goes on with
            # the events that are not backing off.
            for _ in range(MAX_CHUNKS_PER_TICK):
                if self._stop.is_set() or not self._post_chunk(settings):
                    return

    def _emit_due(self, settings: Any) -> None:
        store = self._store
        now = self._clock()
        rates = {name: getattr(settings, name) for name in OUTCOME_RATES}
        skipped = 0 if settings.webhook_url else NOT_POSTED
        for batch in store.due_batches(send_at_string(now)):
            batch_id = batch["batch_id"]
            events, followups = [], []
            for position, recipient in enumerate(store.recipient_emails(batch_id)):
                for seq, step in enumerate(outcome(batch_id, recipient, **rates)):
                    occurs_at = now + seq * settings.followup_delay_seconds
                    row = {
                        "event_id": f"evt_{secrets.token_hex(12)}",
                        "batch_id": batch_id,
                        "position": position,
                        "recipient": recipient,
                        "seq": seq,
                        "type": step.type,
                        "bounce_type": step.bounce_type,
                        "reason": step.reason,
                        "timestamp": int(occurs_at),
                        "tags_json": batch["tags_json"],
                    }
                    if seq == 0:
                        events.append({**row, "emitted_at": time.time(), "skipped": skipped})
                    else:
                        followups.append({**row, "occurs_at": occurs_at})
            store.send_batch(batch_id, events, followups)
        store.emit_followups(now, time.time(), skipped)

    def _post_chunk(self, settings: Any) -> bool:
        """POST one chunk of due events (new, retried or duplicates); True if there may be more."""
        store = self._store
        size = settings.webhook_batch_size
        now = time.time()
        rows = store.postable_events(size, now, shuffle=settings.webhook_shuffle)
        if not rows:
            return False
        failures = rows[0]["failures"]  # the store returns events refused equally often
        rows = rows[: chunk_limit(size, failures)]
        events = [event_json(r) for r in rows]
        if settings.webhook_shuffle:
            self._random.shuffle(events)
        body = json.dumps({"events": events}, separators=(",", ":")).encode()
        timestamp = str(int(now))
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
            delay = retry_delay(
                failures + 1, settings.webhook_retry_base_seconds, settings.webhook_retry_max_seconds
            )
            store.refuse_events([r["event_id"] for r in rows], time.time() + delay)
            return False
        rate = settings.webhook_duplicate_rate
        store.accept_events(
            [(r["event_id"], int(self._random.random() < rate)) for r in rows if not r["delivered"]],
            [r["event_id"] for r in rows if r["delivered"]],
        )
        return True
