"""MigoSMTP sandbox: a stdlib HTTP server implementing the provider API contract.

Implements the API contract (`../shared/reference/migosmtp-api.md`, beside the repository): bulk send with
validation, idempotency keys, monthly quota, per-minute rate limit, batch
lookups, cancels and signed webhooks (see `delivery.py`), with a durable SQLite record. Admin endpoints under
`/_sandbox/` (no auth) reset state, change settings and queue faults
(error statuses, latency, dropped connections, malformed bodies) so that
clients can be tested against the failure modes they must survive.

A cancelled batch stays in the record (and in look-ups) with status ``cancelled``: it sends
nothing, emits no event and is not counted in ``monthly_used``.

A batch's ``counts`` are per recipient, from its latest event emitted so far (a
recipient's events change its state over time; counting events would count it
twice): ``deferred`` holds the soft bounces too, both being temporary, and
``bounced`` only the hard ones, so the counts never add up to more than the
recipients and a client that polls instead of taking webhooks sees the same
state a webhook receiver folds.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import re
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from include.migosmtp.contract import CANCEL_MIN_LEAD_SECONDS, EVENT_TYPES
from sandbox.delivery import NOT_POSTED, OUTCOME_RATES, DeliveryWorker, send_at_string

SEND_PATH = "/v1/email/send/bulk"
BATCHES_PATH = "/v1/email/batches"
QUOTA_PATH = "/v1/account/quota"
CANCEL_RE = re.compile(re.escape(BATCHES_PATH) + r"/([^/]+)/cancel")
MAX_RECIPIENTS = 1000
IDEMPOTENCY_TTL = timedelta(hours=24)
RESET_DRAIN_SECONDS = 30.0
# A trickled answer gets a few bytes this often: never silent long enough for a read timeout.
TRICKLE_TICK_SECONDS = 0.25
SEND_AT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")
SEND_FIELDS = {"from", "subject", "html", "text", "recipients", "send_at", "tags"}
DEFAULT_ERRORS = {
    400: "invalid_request",
    401: "invalid_api_key",
    402: "quota_exceeded",
    404: "not_found",
    409: "idempotency_conflict",
    429: "rate_limited",
}


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Settings:
    """Live account settings; PATCH /_sandbox/settings changes them in place."""

    api_key: str
    requests_per_minute: int = 300
    # The rate window's length: the real API's is a minute; tests shorten it to watch pacing.
    rate_window_seconds: float = 60.0
    monthly_limit: int = 30000
    monthly_used: int = 0
    hourly_limit: int = 150
    daily_limit: int = 1500
    # Delivery and webhooks (see delivery.py).
    webhook_url: str | None = None
    webhook_secret: str = "whsec_sandbox"
    # Shares of recipients per event sequence (delivery.outcome); the rest are just delivered.
    bounce_rate: float = 0.0  # hard bounces
    soft_bounce_rate: float = 0.0
    defer_rate: float = 0.0
    complaint_rate: float = 0.0
    unsubscribe_rate: float = 0.0
    # Sandbox-clock seconds from a recipient's first event to its second.
    followup_delay_seconds: float = 900.0
    webhook_batch_size: int = 100
    webhook_retry_base_seconds: float = 1.0
    webhook_retry_max_seconds: float = 600.0
    webhook_retry_horizon_seconds: float = 24 * 3600.0
    webhook_duplicate_rate: float = 0.0
    webhook_shuffle: bool = False
    # Sandbox clock: real UTC plus this offset (POST /_sandbox/advance adds to it).
    clock_offset_seconds: float = 0.0

    RATES = (*OUTCOME_RATES, "webhook_duplicate_rate")
    POSITIVE = (
        "webhook_retry_base_seconds",
        "webhook_retry_max_seconds",
        "rate_window_seconds",
        "followup_delay_seconds",
    )

    @classmethod
    def check(cls, name: str, value: Any) -> None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name == "api_key":
            if not isinstance(value, str) or not value:
                raise ValueError("api_key must be a non-empty string")
        elif name == "webhook_url":
            if value is not None and (
                not isinstance(value, str) or not value.startswith(("http://", "https://"))
            ):
                raise ValueError("webhook_url must be null or an http(s) URL")
        elif name == "webhook_secret":
            if not isinstance(value, str):
                raise ValueError("webhook_secret must be a string")
        elif name == "webhook_shuffle":
            if not isinstance(value, bool):
                raise ValueError("webhook_shuffle must be a boolean")
        elif name in cls.RATES:
            if not number or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number from 0 to 1")
        elif name in cls.POSITIVE:
            if not number or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number")
        elif name == "webhook_retry_horizon_seconds":
            if not number or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
        elif name == "clock_offset_seconds":
            if not number or not math.isfinite(value):
                raise ValueError(f"{name} must be a number")
        elif name == "webhook_batch_size":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise ValueError(f"{name} must be an integer from 1 to 1000")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")

    def update(self, changes: dict[str, Any]) -> None:
        """Validate all changes before applying any, so a bad PATCH changes nothing."""
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown setting: {name}")
            self.check(name, value)
        merged = {**asdict(self), **changes}
        total = sum(merged[name] for name in OUTCOME_RATES)
        if total > 1 + 1e-9:  # 0.2 + 0.4 + 0.3 + 0.1 is a little over 1 in floating point
            raise ValueError(f"{' + '.join(OUTCOME_RATES)} must not exceed 1 (they add up to {total:g})")
        for name, value in changes.items():
            setattr(self, name, value)

    def public(self) -> dict[str, Any]:
        """The settings as shown by GET /_sandbox/settings: the webhook secret is masked."""
        shown = asdict(self)
        shown["webhook_secret"] = "***" if self.webhook_secret else ""
        return shown


@dataclass
class Response:
    status: int
    body: Any  # JSON-serialisable, or raw bytes sent as-is
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


def error(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response(status, {"error": code, "message": message, **extra})


def invalid(field_name: str, message: str) -> Response:
    return error(400, "invalid_request", message, field=field_name)


MALFORMED = Response(202, b"not json {")


@dataclass
class Request:
    path: str
    query: dict[str, str]
    body: bytes


def json_object(body: bytes) -> dict[str, Any]:
    data = json.loads(body or b"{}")
    if not isinstance(data, dict):
        raise TypeError("body must be a JSON object")
    return data


class Store:
    """The durable record: one SQLite connection shared by all threads behind a lock."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS batches (
        batch_id TEXT PRIMARY KEY, idempotency_key TEXT, status TEXT NOT NULL,
        send_at TEXT NOT NULL, recipient_count INTEGER NOT NULL, tags_json TEXT NOT NULL,
        from_email TEXT NOT NULL, subject TEXT NOT NULL, html TEXT NOT NULL,
        text TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS batches_idempotency_key ON batches (idempotency_key);
    CREATE TABLE IF NOT EXISTS batch_recipients (
        batch_id TEXT NOT NULL, position INTEGER NOT NULL, email TEXT NOT NULL,
        variables_json TEXT NOT NULL, PRIMARY KEY (batch_id, position));
    CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, status_code INTEGER NOT NULL,
        response_json TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, method TEXT NOT NULL,
        path TEXT NOT NULL, status_code INTEGER, idempotency_key TEXT,
        replayed INTEGER NOT NULL DEFAULT 0, fault TEXT);
    CREATE TABLE IF NOT EXISTS events (
        event_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, recipient TEXT NOT NULL,
        type TEXT NOT NULL, reason TEXT, timestamp INTEGER NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0, tags_json TEXT NOT NULL,
        emitted_at REAL NOT NULL, skipped INTEGER NOT NULL DEFAULT 0,
        dup_pending INTEGER NOT NULL DEFAULT 0, bounce_type TEXT,
        position INTEGER NOT NULL DEFAULT -1, seq INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0);
    CREATE INDEX IF NOT EXISTS events_batch ON events (batch_id);
    CREATE TABLE IF NOT EXISTS scheduled_events (
        event_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, position INTEGER NOT NULL,
        recipient TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, reason TEXT,
        bounce_type TEXT, timestamp INTEGER NOT NULL, occurs_at REAL NOT NULL,
        tags_json TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS scheduled_events_batch ON scheduled_events (batch_id);
    CREATE TABLE IF NOT EXISTS webhook_attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,
        event_count INTEGER NOT NULL, status_code INTEGER, error TEXT);
    """
    # Columns added to ``events`` since the first version, for database files made by it.
    EVENT_COLUMNS_ADDED = {
        "bounce_type": "TEXT",
        "position": "INTEGER NOT NULL DEFAULT -1",
        "seq": "INTEGER NOT NULL DEFAULT 0",
        "failures": "INTEGER NOT NULL DEFAULT 0",
        "next_attempt": "REAL NOT NULL DEFAULT 0",
    }
    # Per batch and recipient its latest emitted event (by sandbox time, then by place in the
    # sequence), as a count key: a soft bounce is temporary like a deferral.
    COUNTS_SQL = """
        SELECT batch_id, kind, COUNT(*) AS n FROM (
            SELECT batch_id,
                CASE WHEN type = 'bounced' AND bounce_type = 'soft' THEN 'deferred' ELSE type END AS kind,
                ROW_NUMBER() OVER (
                    PARTITION BY batch_id, position ORDER BY timestamp DESC, seq DESC
                ) AS newest
            FROM events WHERE batch_id IN (SELECT batch_id FROM batches {where})
        ) WHERE newest = 1 GROUP BY batch_id, kind
    """
    # Sending is over once no follow-up is waiting and every event was accepted or was not
    # to be posted (no webhook_url); one given up past the horizon keeps the batch sending.
    FINISH_SQL = f"""
        UPDATE batches SET status = 'delivered' WHERE status = 'sending'
        AND NOT EXISTS (SELECT 1 FROM scheduled_events s WHERE s.batch_id = batches.batch_id)
        AND NOT EXISTS (SELECT 1 FROM events e WHERE e.batch_id = batches.batch_id
            AND e.delivered = 0 AND e.skipped != {NOT_POSTED})
    """

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(self.SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a database file from an earlier sandbox lacks."""
        with self._lock, self._conn:
            have = {row["name"] for row in self._conn.execute("PRAGMA table_info(events)")}
            missing = {k: v for k, v in self.EVENT_COLUMNS_ADDED.items() if k not in have}
            for name, declaration in missing.items():
                self._conn.execute(f"ALTER TABLE events ADD COLUMN {name} {declaration}")
            if "position" in missing:
                # Those events were one per recipient: give each its own place.
                self._conn.execute("UPDATE events SET position = -rowid")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def accept(self, batch: dict[str, Any], idempotency: tuple[str, str, Response] | None) -> None:
        """Store a batch, its recipients and the idempotent response in one transaction."""
        row = {
            **batch,
            "recipient_count": len(batch["recipients"]),
            "tags_json": json.dumps(batch["tags"]),
            "created_at": utc_now(),
        }
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO batches VALUES (:batch_id, :idempotency_key, 'scheduled',"
                " :send_at, :recipient_count, :tags_json, :from, :subject, :html, :text,"
                " :created_at)",
                row,
            )
            self._conn.executemany(
                "INSERT INTO batch_recipients VALUES (?, ?, ?, ?)",
                [
                    (batch["batch_id"], i, r["to"], json.dumps(r.get("variables", {})))
                    for i, r in enumerate(batch["recipients"])
                ],
            )
            if idempotency:
                key, body_hash, resp = idempotency
                self._conn.execute(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                    (
                        key,
                        body_hash,
                        resp.status,
                        json.dumps(resp.body),
                        row["created_at"],
                    ),
                )

    def idempotent_response(self, key: str) -> tuple[str, Response] | None:
        """The stored (body_hash, response) for a key, or None if absent or expired."""
        rows = self._query("SELECT * FROM idempotency WHERE key = ?", (key,))
        if not rows:
            return None
        row = rows[0]
        age = datetime.now(UTC) - datetime.fromisoformat(row["created_at"])
        if age > IDEMPOTENCY_TTL:
            return None
        return row["body_hash"], Response(row["status_code"], json.loads(row["response_json"]))

    def batches(self, where: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        rows, counts = self._batch_rows(where, params)
        return [self._batch(row, counts) for row in rows]

    def _batch_rows(
        self, where: str = "", params: tuple[Any, ...] = ()
    ) -> tuple[list[sqlite3.Row], dict[str, dict[str, int]]]:
        """The batches matching ``where`` and their counts, read together under the lock."""
        with self._lock, self._conn:
            rows = self._conn.execute(f"SELECT * FROM batches {where} ORDER BY rowid", params).fetchall()
            counted = self._conn.execute(self.COUNTS_SQL.format(where=where), params).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for r in counted:
            if r["kind"] in EVENT_TYPES:
                counts.setdefault(r["batch_id"], {})[r["kind"]] = r["n"]
        return rows, counts

    @staticmethod
    def _batch(row: sqlite3.Row, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        counted = counts.get(row["batch_id"], {})
        return {
            "batch_id": row["batch_id"],
            "status": row["status"],
            "send_at": row["send_at"],
            "recipient_count": row["recipient_count"],
            "tags": json.loads(row["tags_json"]),
            "idempotency_key": row["idempotency_key"],
            "counts": {t: counted.get(t, 0) for t in EVENT_TYPES},
        }

    def record(self) -> dict[str, Any]:
        """Everything stored, including message content, for assertions in tests."""
        rows, counts = self._batch_rows()
        recipients = self._query("SELECT * FROM batch_recipients ORDER BY batch_id, position")
        by_batch: dict[str, list[dict[str, Any]]] = {}
        for r in recipients:
            by_batch.setdefault(r["batch_id"], []).append(
                {"to": r["email"], "variables": json.loads(r["variables_json"])}
            )
        batches = [
            {
                **self._batch(row, counts),
                "from": row["from_email"],
                "subject": row["subject"],
                "html": row["html"],
                "text": row["text"],
                "created_at": row["created_at"],
                "recipients": by_batch.get(row["batch_id"], []),
            }
            for row in rows
        ]
        total = self._query("SELECT COUNT(*) FROM requests")[0][0]
        return {"batches": batches, "requests_total": total}

    def monthly_used(self) -> int:
        # A cancelled batch gave its recipients back to the quota.
        [row] = self._query(
            "SELECT COALESCE(SUM(recipient_count), 0) FROM batches WHERE status != 'cancelled'"
        )
        return row[0]

    def cancel(self, batch_id: str, not_before: str) -> tuple[dict[str, Any] | None, bool]:
        """Cancel the batch if it is scheduled for ``not_before`` or later: the batch as it then is
        (None if unknown), and whether this call cancelled it. ``send_batch`` takes the same lock,
        so a batch is either cancelled or sent, never both."""
        with self._lock, self._conn:
            cancelled = self._conn.execute(
                "UPDATE batches SET status = 'cancelled'"
                " WHERE batch_id = ? AND status = 'scheduled' AND send_at >= ?",
                (batch_id, not_before),
            ).rowcount
        found = self.batches("WHERE batch_id = ?", (batch_id,))
        return (found[0] if found else None), bool(cancelled)

    def log_request(
        self,
        method: str,
        path: str,
        status: int | None,
        idempotency_key: str | None,
        replayed: bool,
        fault: str | None,
    ) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO requests (at, method, path, status_code,"
                " idempotency_key, replayed, fault) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    utc_now(),
                    method,
                    path,
                    status,
                    idempotency_key,
                    int(replayed),
                    fault,
                ),
            )

    def requests(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM requests ORDER BY id")
        return [{**dict(row), "replayed": bool(row["replayed"])} for row in rows]

    # --- delivery (used by delivery.DeliveryWorker) -------------------------

    def due_batches(self, now: str) -> list[sqlite3.Row]:
        """Scheduled batches whose send_at (YYYY-MM-DDTHH:MM:SSZ, sorts as text) <= now."""
        return self._query(
            "SELECT batch_id, tags_json FROM batches WHERE status = 'scheduled' AND send_at <= ?"
            " ORDER BY send_at, rowid",
            (now,),
        )

    def recipient_emails(self, batch_id: str) -> list[str]:
        rows = self._query(
            "SELECT email FROM batch_recipients WHERE batch_id = ? ORDER BY position", (batch_id,)
        )
        return [r["email"] for r in rows]

    def send_batch(
        self, batch_id: str, events: list[dict[str, Any]], followups: list[dict[str, Any]]
    ) -> None:
        """Store a batch's first events (emitted now) and its follow-ups (emitted when due), unless it
        was cancelled since ``due_batches`` read it."""
        with self._lock, self._conn:
            started = self._conn.execute(
                "UPDATE batches SET status = 'sending' WHERE batch_id = ? AND status = 'scheduled'",
                (batch_id,),
            ).rowcount
            if not started:
                return
            self._conn.executemany(
                "INSERT INTO events (event_id, batch_id, position, recipient, seq, type, reason,"
                " bounce_type, timestamp, tags_json, emitted_at, skipped) VALUES (:event_id,"
                " :batch_id, :position, :recipient, :seq, :type, :reason, :bounce_type, :timestamp,"
                " :tags_json, :emitted_at, :skipped)",
                events,
            )
            self._conn.executemany(
                "INSERT INTO scheduled_events (event_id, batch_id, position, recipient, seq, type,"
                " reason, bounce_type, timestamp, occurs_at, tags_json) VALUES (:event_id, :batch_id,"
                " :position, :recipient, :seq, :type, :reason, :bounce_type, :timestamp, :occurs_at,"
                " :tags_json)",
                followups,
            )
            self._conn.execute(self.FINISH_SQL)

    def emit_followups(self, now: float, emitted_at: float, skipped: int) -> int:
        """Move the follow-ups due by sandbox time ``now`` into ``events``; how many moved."""
        columns = (
            "event_id, batch_id, position, recipient, seq, type, reason, bounce_type, timestamp, tags_json"
        )
        with self._lock, self._conn:
            moved = self._conn.execute(
                f"INSERT INTO events ({columns}, emitted_at, skipped) SELECT {columns}, ?, ?"
                " FROM scheduled_events WHERE occurs_at <= ? ORDER BY occurs_at, rowid",
                (emitted_at, skipped, now),
            ).rowcount
            if moved:
                self._conn.execute("DELETE FROM scheduled_events WHERE occurs_at <= ?", (now,))
                self._conn.execute(self.FINISH_SQL)
            return moved

    def postable_events(self, limit: int, now: float, shuffle: bool = False) -> list[sqlite3.Row]:
        """Up to ``limit`` events to POST now: not yet accepted, or accepted and to be re-sent once,
        and not backing off. All were refused equally often (the first's count), so a refused
        chunk is retried apart from fresh events; new events come before duplicates."""
        due = "skipped = 0 AND next_attempt <= ? AND (delivered = 0 OR dup_pending = 1)"
        order = "delivered, " + ("RANDOM()" if shuffle else "rowid")
        with self._lock:
            head = self._conn.execute(
                f"SELECT failures FROM events WHERE {due} ORDER BY {order} LIMIT 1", (now,)
            ).fetchone()
            if head is None:
                return []
            return self._conn.execute(
                f"SELECT * FROM events WHERE {due} AND failures = ? ORDER BY {order} LIMIT ?",
                (now, head["failures"], limit),
            ).fetchall()

    def accept_events(self, accepted: list[tuple[str, int]], duplicates: list[str]) -> None:
        """Mark events accepted (flagging some to be re-sent once) and finish their batches."""
        with self._lock, self._conn:
            self._conn.executemany(
                "UPDATE events SET delivered = 1, dup_pending = ?, failures = 0, next_attempt = 0"
                " WHERE event_id = ?",
                [(dup, event_id) for event_id, dup in accepted],
            )
            self._conn.executemany(
                "UPDATE events SET dup_pending = 0, failures = 0, next_attempt = 0 WHERE event_id = ?",
                [(event_id,) for event_id in duplicates],
            )
            self._conn.execute(self.FINISH_SQL)

    def refuse_events(self, event_ids: list[str], next_attempt: float) -> None:
        """Count a refusal against each event and hold it back until ``next_attempt`` (unix time)."""
        with self._lock, self._conn:
            self._conn.executemany(
                "UPDATE events SET failures = failures + 1, next_attempt = ? WHERE event_id = ?",
                [(next_attempt, event_id) for event_id in event_ids],
            )

    def expire_events(self, emitted_before: float) -> int:
        with self._lock, self._conn:
            return self._conn.execute(
                "UPDATE events SET skipped = 1, dup_pending = 0 WHERE skipped = 0"
                " AND (delivered = 0 OR dup_pending = 1) AND emitted_at < ?",
                (emitted_before,),
            ).rowcount

    def record_attempt(self, event_count: int, status: int | None, err: str | None) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO webhook_attempts (at, event_count, status_code, error) VALUES (?, ?, ?, ?)",
                (utc_now(), event_count, status, err),
            )

    def events(self) -> dict[str, Any]:
        events = self._query("SELECT * FROM events ORDER BY rowid")
        attempts = self._query("SELECT * FROM webhook_attempts ORDER BY id")
        return {
            "events": [
                {
                    "event_id": r["event_id"],
                    "batch_id": r["batch_id"],
                    "recipient": r["recipient"],
                    "type": r["type"],
                    "bounce_type": r["bounce_type"] or ("hard" if r["type"] == "bounced" else None),
                    "reason": r["reason"],
                    "timestamp": r["timestamp"],
                    "tags": json.loads(r["tags_json"]),
                    "delivered": r["delivered"],
                    "skipped": int(r["skipped"] != 0),
                    # Accepted, and still to be POSTed once more as a duplicate.
                    "redelivery_pending": r["dup_pending"],
                }
                for r in events
            ],
            "webhook_attempts": [dict(r) for r in attempts],
        }

    def clear(self) -> None:
        with self._lock, self._conn:
            tables = (
                "batches",
                "batch_recipients",
                "idempotency",
                "requests",
                "events",
                "scheduled_events",
                "webhook_attempts",
            )
            for table in tables:
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute("DELETE FROM sqlite_sequence WHERE name IN ('requests', 'webhook_attempts')")


@dataclass
class Fault:
    """One queued fault, as posted to /_sandbox/faults (actions: see the package docstring)."""

    action: str
    endpoint: str = "send"
    times: int = 1
    status: int = 500
    error: str | None = None
    message: str | None = None
    retry_after: str = "1"
    seconds: float = 0.0
    accept: bool = False
    body: str | None = None  # a malformed answer's body, instead of MALFORMED's

    ACTIONS = ("status", "latency", "drop_after_accept", "drop", "malformed", "break_body", "trickle")
    ENDPOINTS = ("send", "lookup", "quota", "cancel", "any")

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise TypeError("each fault must be an object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        fault = cls(**data)
        if fault.action not in cls.ACTIONS:
            raise ValueError(f"action must be one of {cls.ACTIONS}")
        if fault.endpoint not in cls.ENDPOINTS:
            raise ValueError(f"endpoint must be one of {cls.ENDPOINTS}")
        if not isinstance(fault.times, int) or fault.times < 1:
            raise ValueError("times must be a positive integer")
        if not isinstance(fault.status, int) or not 100 <= fault.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if not isinstance(fault.seconds, (int, float)) or fault.seconds < 0:
            raise ValueError("seconds must be a non-negative number")
        if fault.body is not None and not isinstance(fault.body, str):
            raise ValueError("body must be a string")
        fault.retry_after = str(fault.retry_after)
        return fault

    def response(self) -> Response:
        code = self.error or DEFAULT_ERRORS.get(
            self.status, "internal_error" if self.status >= 500 else "invalid_request"
        )
        resp = error(self.status, code, self.message or f"injected fault: {code}")
        if self.status == 429:
            resp.headers["Retry-After"] = self.retry_after
        return resp


class FaultQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def replace(self, faults: list[Fault]) -> None:
        with self._lock:
            self._faults = faults

    def take(self, endpoints: set[str]) -> Fault | None:
        """Consume one use of the first queued fault matching any of `endpoints`."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint in endpoints:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]


class RateLimiter:
    """Fixed windows (a minute unless set shorter), started by the first request after the previous
    one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._start = time.monotonic()
            self._count = 0

    def _roll(self, now: float, window: float) -> None:
        if now - self._start >= window:
            self._start, self._count = now, 0

    def hit(self, limit: int, window: float) -> bool:
        with self._lock:
            self._roll(time.monotonic(), window)
            if self._count >= limit:
                return False
            self._count += 1
            return True

    def retry_after(self, window: float) -> int:
        """Whole seconds until the current window ends (at least 1)."""
        with self._lock:
            now = time.monotonic()
            self._roll(now, window)
            return max(1, math.ceil(self._start + window - now))

    def headers(self, limit: int, window: float) -> dict[str, str]:
        reset = self.retry_after(window)
        with self._lock:
            remaining = max(0, limit - self._count)
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }


def validate_send(payload: Any) -> Response | None:
    """Return a 400 response for the first problem in a bulk-send body, or None."""
    if not isinstance(payload, dict):
        return invalid("body", "request body must be a JSON object")
    for name in payload:
        if name not in SEND_FIELDS:
            return invalid(name, f"unknown field: {name}")
    sender = payload.get("from")
    if not isinstance(sender, str) or not EMAIL_RE.fullmatch(sender):
        return invalid("from", "from must be an email address")
    if not isinstance(payload.get("subject"), str) or not payload["subject"]:
        return invalid("subject", "subject must be a non-empty string")
    for name in ("html", "text"):
        if not isinstance(payload.get(name, ""), str):
            return invalid(name, f"{name} must be a string")
    if not payload.get("html") and not payload.get("text"):
        return invalid("html", "at least one of html and text must be non-empty")
    recipients = payload.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        return invalid("recipients", "recipients must be a non-empty list")
    if len(recipients) > MAX_RECIPIENTS:
        return error(
            400,
            "too_many_recipients",
            f"at most {MAX_RECIPIENTS} recipients per request, got {len(recipients)}",
        )
    for i, r in enumerate(recipients):
        where = f"recipients[{i}]"
        if not isinstance(r, dict) or set(r) - {"to", "variables"}:
            return invalid(
                "recipients",
                f"{where} must be an object with 'to' and optional 'variables'",
            )
        if not isinstance(r.get("to"), str) or not EMAIL_RE.fullmatch(r["to"]):
            return invalid("recipients", f"{where}.to must be an email address")
        if not isinstance(r.get("variables", {}), dict):
            return invalid("recipients", f"{where}.variables must be an object")
    send_at = payload.get("send_at")
    try:
        if not isinstance(send_at, str) or not SEND_AT_RE.fullmatch(send_at):
            raise ValueError
        datetime.strptime(send_at, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return invalid("send_at", "send_at must be a UTC time formatted YYYY-MM-DDTHH:MM:SSZ")
    tags = payload.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return invalid("tags", "tags must be a list of strings")
    return None


class SandboxServer(ThreadingHTTPServer):
    """Holds the sandbox state shared by the request-handler threads."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], db_path: str, settings: Settings) -> None:
        self.initial_settings = settings
        self.store = Store(db_path)
        # Quota usage is derived from the durable record so it survives restarts.
        self.settings = Settings(**{**asdict(settings), "monthly_used": self.store.monthly_used()})
        self.faults = FaultQueue()
        self.limiter = RateLimiter()
        # Serialises idempotency lookup, quota check and insert across threads.
        self.state_lock = threading.Lock()
        self._api_calls = 0
        self._api_idle = threading.Condition()
        # Held by each delivery tick (a webhook POST included) and by reset.
        self.delivery_lock = threading.Lock()
        # The settings are read live: PATCH and reset replace them.
        self.delivery = DeliveryWorker(self.store, lambda: self.settings, self.now, self.delivery_lock)
        super().__init__(address, SandboxHandler)

    def now(self) -> float:
        """The sandbox clock, unix seconds: real time plus clock_offset_seconds."""
        return time.time() + self.settings.clock_offset_seconds

    def advance(self, seconds: float) -> float:
        with self.state_lock:
            self.settings.clock_offset_seconds += seconds
            return self.settings.clock_offset_seconds

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.delivery.start()
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        self.delivery.stop()
        super().shutdown()

    @contextmanager
    def api_call(self) -> Iterator[None]:
        """Track API requests still being handled (a latency fault can outlive its client)."""
        with self._api_idle:
            self._api_calls += 1
        try:
            yield
        finally:
            with self._api_idle:
                self._api_calls -= 1
                self._api_idle.notify_all()

    @property
    def in_flight(self) -> int:
        with self._api_idle:
            return self._api_calls

    def reset(self) -> None:
        # Let requests still in flight land first, so none writes into the fresh state.
        with self._api_idle:
            self._api_idle.wait_for(lambda: self._api_calls == 0, timeout=RESET_DRAIN_SECONDS)
        with self.delivery_lock, self.state_lock:
            self.store.clear()
            self.settings = Settings(**asdict(self.initial_settings))
            self.faults.replace([])
            self.limiter.reset()
            # Delivery keeps its retry state per event in the store, so clearing it resets that too.

    def server_close(self) -> None:
        super().server_close()
        self.store.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up are expected here; stay quiet about them.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SandboxHandler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"
    server_version = "MigoSMTPSandbox/1.0"

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        # Always read the body so a kept-alive connection stays in sync.
        req = Request(
            url.path,
            query,
            self.rfile.read(int(self.headers.get("Content-Length") or 0)),
        )
        if req.path.startswith("/_sandbox/"):
            self._respond(self._handle(ADMIN_ROUTES, req, auth=False))
            return
        fault = self.server.faults.take(self._fault_endpoints(req.path))
        with self.server.api_call():
            resp = self._serve(req, fault)
            self._log(req, resp, fault.action if fault else None)
        if resp is None or (fault and fault.action == "drop_after_accept"):
            self._drop()
        elif fault and fault.action == "break_body":
            self._break_body(resp)
        elif fault and fault.action == "trickle":
            self._trickle(resp, fault.seconds)
        else:
            self._respond(resp)

    def _serve(self, req: Request, fault: Fault | None) -> Response | None:
        """Handle an API request under an injected fault; None means not handled at all."""
        if fault is None:
            return self._handle(API_ROUTES, req, auth=True)
        match fault.action:
            case "drop":
                return None
            case "status":
                time.sleep(fault.seconds)  # a slow error, so concurrent requests meet it too
                return fault.response()
            case "latency":
                time.sleep(fault.seconds)
                return self._handle(API_ROUTES, req, auth=True)
            case "malformed":
                if fault.accept:
                    self._handle(API_ROUTES, req, auth=True)
                return MALFORMED if fault.body is None else Response(MALFORMED.status, fault.body.encode())
            case _:  # drop_after_accept, break_body, trickle: handled, the answer withheld, cut or slow
                return self._handle(API_ROUTES, req, auth=True)

    def _fault_endpoints(self, path: str) -> set[str]:
        if not path.startswith("/v1/"):
            return set()
        endpoints = {"any"}
        if self.command == "POST" and path == SEND_PATH:
            endpoints.add("send")
        elif self.command == "GET" and (path == BATCHES_PATH or path.startswith(BATCHES_PATH + "/")):
            endpoints.add("lookup")
        elif self.command == "GET" and path == QUOTA_PATH:
            endpoints.add("quota")
        elif self.command == "POST" and CANCEL_RE.fullmatch(path):
            endpoints.add("cancel")
        return endpoints

    def _handle(self, routes: list[Route], req: Request, auth: bool) -> Response:
        matching = [(method, handler) for pattern, method, handler in routes if pattern.fullmatch(req.path)]
        if not matching:
            return error(404, "not_found", f"no such endpoint: {req.path}")
        handler = next((h for method, h in matching if method == self.command), None)
        if handler is None:
            resp = error(405, "method_not_allowed", f"{self.command} not allowed on {req.path}")
            resp.headers["Allow"] = ", ".join(method for method, _ in matching)
            return resp
        if auth and not self._authorized():
            return error(401, "invalid_api_key", "missing or invalid API key")
        try:
            return handler(self, req)
        except Exception as exc:  # noqa: BLE001 - a sandbox bug must still answer as JSON
            self.log_error("unhandled error: %r", exc)
            return error(500, "internal_error", "unexpected sandbox error")

    def _authorized(self) -> bool:
        scheme, _, key = (self.headers.get("Authorization") or "").partition(" ")
        expected = self.server.settings.api_key.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), expected)

    def _log(self, req: Request, resp: Response | None, fault: str | None) -> None:
        # A look-up by key is logged with the key it asked for, so tests can see it precede a resend.
        self.server.store.log_request(
            self.command,
            req.path,
            resp.status if resp else None,
            self.headers.get("Idempotency-Key") or req.query.get("idempotency_key"),
            bool(resp and resp.replayed),
            fault,
        )

    def _drop(self) -> None:
        """Close the connection without sending a single response byte."""
        self.log_message('"%s" dropped by fault', self.requestline)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _break_body(self, resp: Response) -> None:
        """Send the status line and the first part of a chunked body, then close mid-stream."""
        data = resp.body if isinstance(resp.body, bytes) else json.dumps(resp.body).encode()
        self.log_message('"%s" body broken by fault', self.requestline)
        self.send_response(resp.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        half = data[: max(1, len(data) // 2)]
        self.wfile.write(f"{len(data):x}\r\n".encode() + half)  # promises more than it sends
        self.wfile.flush()
        self._drop()

    def _trickle(self, resp: Response, seconds: float) -> None:
        """Send the whole answer, status line first, a few bytes every tick for ``seconds``: never
        quiet long enough to trip a client's read timeout, yet done only at the end."""
        socket_writer, self.wfile = self.wfile, io.BytesIO()
        try:
            self._respond(resp)
            data = self.wfile.getvalue()
        finally:
            self.wfile = socket_writer
        self.log_message('"%s" answer trickled by fault over %g s', self.requestline, seconds)
        step = max(1, math.ceil(len(data) * TRICKLE_TICK_SECONDS / max(seconds, TRICKLE_TICK_SECONDS)))
        try:
            for start in range(0, len(data), step):
                time.sleep(TRICKLE_TICK_SECONDS)
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
        except OSError:  # the client gave up: the point of the fault
            self.close_connection = True

    def _respond(self, resp: Response) -> None:
        data = resp.body if isinstance(resp.body, bytes) else json.dumps(resp.body).encode()
        settings = self.server.settings
        self.send_response(resp.status)
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            **self.server.limiter.headers(settings.requests_per_minute, settings.rate_window_seconds),
            **resp.headers,
        }
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # --- provider API -------------------------------------------------------

    def _send_bulk(self, req: Request) -> Response:
        server = self.server
        window = server.settings.rate_window_seconds
        if not server.limiter.hit(server.settings.requests_per_minute, window):
            resp = error(429, "rate_limited", "too many requests to the send endpoint")
            resp.headers["Retry-After"] = str(server.limiter.retry_after(window))
            return resp
        key = self.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            return invalid("idempotency_key", "Idempotency-Key must be 1 to 255 characters")
        try:
            payload = json.loads(req.body)
        except ValueError:
            return invalid("body", "request body must be valid JSON")
        problem = validate_send(payload)
        if problem:
            return problem
        body_hash = hashlib.sha256(
            json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        with server.state_lock:
            stored = server.store.idempotent_response(key) if key else None
            if stored:
                stored_hash, resp = stored
                if stored_hash != body_hash:
                    return error(
                        409,
                        "idempotency_conflict",
                        "Idempotency-Key was already used with a different request body",
                    )
                resp.headers["Idempotent-Replayed"] = "true"
                resp.replayed = True
                return resp
            count = len(payload["recipients"])
            settings = server.settings
            if settings.monthly_used + count > settings.monthly_limit:
                return error(
                    402,
                    "quota_exceeded",
                    f"sending {count} would exceed the monthly limit of {settings.monthly_limit}"
                    f" ({settings.monthly_used} used)",
                )
            batch_id = f"bat_{secrets.token_hex(12)}"
            resp = Response(
                202,
                {
                    "batch_id": batch_id,
                    "status": "scheduled",
                    "send_at": payload["send_at"],
                    "recipient_count": count,
                },
            )
            batch = {
                "html": "",
                "text": "",
                "tags": [],
                **payload,
                "batch_id": batch_id,
                "idempotency_key": key,
            }
            server.store.accept(batch, (key, body_hash, resp) if key else None)
            settings.monthly_used += count
            return resp

    def _list_batches(self, req: Request) -> Response:
        conditions, params = [], []
        for name in ("idempotency_key", "status"):
            if name in req.query:
                conditions.append(f"{name} = ?")
                params.append(req.query[name])
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        batches = self.server.store.batches(where, tuple(params))
        if "tag" in req.query:
            batches = [b for b in batches if req.query["tag"] in b["tags"]]
        return Response(200, {"batches": batches})

    def _get_batch(self, req: Request) -> Response:
        batch_id = req.path.rsplit("/", 1)[1]
        found = self.server.store.batches("WHERE batch_id = ?", (batch_id,))
        return Response(200, found[0]) if found else error(404, "not_found", f"no batch {batch_id}")

    def _cancel_batch(self, req: Request) -> Response:
        server = self.server
        batch_id = req.path.split("/")[-2]
        # On the sandbox clock, as delivery sends by it; rounded up so "less than 10 minutes" is exact.
        not_before = send_at_string(math.ceil(server.now() + CANCEL_MIN_LEAD_SECONDS))
        with server.state_lock:  # against the quota check of a concurrent send
            batch, cancelled = server.store.cancel(batch_id, not_before)
            if cancelled:
                settings = server.settings
                settings.monthly_used = max(0, settings.monthly_used - batch["recipient_count"])
        if batch is None:
            return error(404, "not_found", f"no batch {batch_id}")
        if batch["status"] == "cancelled":  # now or before: the same answer
            return Response(200, batch)
        why = (
            f"its send_at {batch['send_at']} is less than {CANCEL_MIN_LEAD_SECONDS // 60} minutes away"
            if batch["status"] == "scheduled"
            else f"it is already {batch['status']}"
        )
        return error(
            409, "too_late", f"batch {batch_id} cannot be cancelled: {why}; it goes out as scheduled"
        )

    def _quota(self, req: Request) -> Response:
        s = self.server.settings
        return Response(
            200,
            {
                "monthly_limit": s.monthly_limit,
                "monthly_used": s.monthly_used,
                "hourly_limit": s.hourly_limit,
                "daily_limit": s.daily_limit,
            },
        )

    # --- admin (/_sandbox/, no auth) ---------------------------------------

    def _health(self, req: Request) -> Response:
        # in_flight: API requests being handled now, so tests can wait for one instead of sleeping.
        return Response(200, {"ok": True, "in_flight": self.server.in_flight})

    def _reset(self, req: Request) -> Response:
        self.server.reset()
        return Response(200, {"ok": True})

    def _get_faults(self, req: Request) -> Response:
        return Response(200, {"faults": self.server.faults.snapshot()})

    def _set_faults(self, req: Request) -> Response:
        try:
            faults = json_object(req.body).get("faults", [])
            if not isinstance(faults, list):
                raise TypeError("faults must be a list")
            self.server.faults.replace([Fault.from_dict(f) for f in faults])
        except (ValueError, TypeError) as exc:
            return error(400, "invalid_request", str(exc))
        return self._get_faults(req)

    def _get_settings(self, req: Request) -> Response:
        return Response(200, self.server.settings.public())

    def _patch_settings(self, req: Request) -> Response:
        try:
            with self.server.state_lock:
                self.server.settings.update(json_object(req.body))
        except (ValueError, TypeError) as exc:
            return error(400, "invalid_request", str(exc))
        return self._get_settings(req)

    def _record(self, req: Request) -> Response:
        return Response(200, self.server.store.record())

    def _requests(self, req: Request) -> Response:
        return Response(200, self.server.store.requests())

    def _events(self, req: Request) -> Response:
        return Response(200, self.server.store.events())

    def _advance(self, req: Request) -> Response:
        try:
            seconds = json_object(req.body).get("seconds")
            if (
                not isinstance(seconds, (int, float))
                or isinstance(seconds, bool)
                or not math.isfinite(seconds)
            ):
                raise ValueError("seconds must be a number")
        except (ValueError, TypeError) as exc:
            return error(400, "invalid_request", str(exc))
        offset = self.server.advance(seconds)
        now = self.server.now()
        return Response(200, {"clock_offset_seconds": offset, "now": now, "now_utc": send_at_string(now)})


Route = tuple[re.Pattern[str], str, Callable[[SandboxHandler, Request], Response]]


def _routes(
    *specs: tuple[str, str, Callable[[SandboxHandler, Request], Response]],
) -> list[Route]:
    return [(re.compile(pattern), method, handler) for pattern, method, handler in specs]


H = SandboxHandler
API_ROUTES = _routes(
    (re.escape(SEND_PATH), "POST", H._send_bulk),
    (re.escape(BATCHES_PATH), "GET", H._list_batches),
    (re.escape(BATCHES_PATH) + r"/[^/]+", "GET", H._get_batch),
    (CANCEL_RE.pattern, "POST", H._cancel_batch),
    (re.escape(QUOTA_PATH), "GET", H._quota),
)
ADMIN_ROUTES = _routes(
    ("/_sandbox/health", "GET", H._health),
    ("/_sandbox/reset", "POST", H._reset),
    ("/_sandbox/faults", "GET", H._get_faults),
    ("/_sandbox/faults", "POST", H._set_faults),
    ("/_sandbox/settings", "GET", H._get_settings),
    ("/_sandbox/settings", "PATCH", H._patch_settings),
    ("/_sandbox/record", "GET", H._record),
    ("/_sandbox/requests", "GET", H._requests),
    ("/_sandbox/events", "GET", H._events),
    ("/_sandbox/advance", "POST", H._advance),
)
