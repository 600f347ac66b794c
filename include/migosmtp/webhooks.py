"""MigoSMTP delivery webhooks: verify, parse and store events, idempotently.

The contract (``shared/reference/migosmtp-api.md``, "Webhooks", assumed): the
provider POSTs ``{"events": [...]}`` with ``X-MigoSMTP-Timestamp`` and
``X-MigoSMTP-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">``,
retries anything but a 2xx for up to 24 hours, and so may deliver an event
more than once and out of order. The receiver therefore only checks and
stores (keyed by ``event_id``); turning events into ledger counts is a
separate, repeatable reconcile step that reads the whole event set, which is
what makes duplicates and ordering harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.warehouse import EVENTS_TABLE, transaction, utc_now_text

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

# The types this version acts on. Others are stored and acknowledged all the same: refusing a post
# for one new type would have the provider retry it for a day and then drop it, valid events and all.
EVENT_TYPES = ("delivered", "bounced", "deferred", "complained", "unsubscribed")
BOUNCE_TYPES = ("hard", "soft")
REPLAY_WINDOW_SECONDS = 300
MAX_BODY_BYTES = 1_000_000
MAX_EVENTS_PER_POST = 1000


class WebhookRejected(Exception):
    """A request the receiver refuses, with the HTTP status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class DeliveryEvent:
    event_id: str
    type: str
    batch_id: str
    recipient: str
    tags: tuple[str, ...]
    timestamp: int
    reason: str | None
    bounce_type: str | None = None

    @property
    def campaign_id(self) -> str | None:
        return next((t.removeprefix("campaign:") for t in self.tags if t.startswith("campaign:")), None)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for a body, as the provider computes it."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float) -> None:
    """Raise WebhookRejected unless the body is signed with ``secret`` within the replay window."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if not timestamp or not signature:
        raise WebhookRejected(401, "missing X-MigoSMTP-Timestamp or X-MigoSMTP-Signature")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise WebhookRejected(401, "X-MigoSMTP-Timestamp is not unix seconds")
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        raise WebhookRejected(401, f"timestamp outside the {REPLAY_WINDOW_SECONDS} s replay window")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        raise WebhookRejected(401, "signature does not match")


def _event(raw: Any, index: int) -> DeliveryEvent:
    if not isinstance(raw, dict):
        raise WebhookRejected(400, f"events[{index}] is not an object")
    try:
        event = DeliveryEvent(
            event_id=str(raw["event_id"]),
            type=raw["type"],
            batch_id=str(raw["batch_id"]),
            recipient=str(raw["recipient"]),
            tags=tuple(str(t) for t in raw.get("tags") or ()),
            timestamp=int(raw["timestamp"]),
            reason=None if raw.get("reason") is None else str(raw["reason"]),
            bounce_type=None if raw.get("bounce_type") is None else str(raw["bounce_type"]).lower(),
        )
    except KeyError as missing:
        raise WebhookRejected(400, f"events[{index}] lacks {missing.args[0]}") from None
    except (TypeError, ValueError):
        raise WebhookRejected(400, f"events[{index}] has a field of the wrong type") from None
    if not isinstance(event.type, str) or not event.type:
        raise WebhookRejected(400, f"events[{index}].type is not a non-empty string")
    if not event.event_id or not event.batch_id:
        raise WebhookRejected(400, f"events[{index}] has an empty event_id or batch_id")
    return event


def parse(body: bytes) -> list[DeliveryEvent]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected(400, "body is not JSON") from None
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list):
        raise WebhookRejected(400, 'body is not {"events": [...]}')
    if len(events) > MAX_EVENTS_PER_POST:
        raise WebhookRejected(413, f"{len(events)} events in one request; at most {MAX_EVENTS_PER_POST}")
    return [_event(raw, i) for i, raw in enumerate(events)]


_FIELDS = (
    "event_id",
    "batch_id",
    "campaign_id",
    "recipient",
    "type",
    "reason",
    "bounce_type",
    "occurred_at",
    "received_at",
)


def store(hook: DbApiHook, events: list[DeliveryEvent]) -> None:
    """Insert events keyed by event_id, in one transaction; a redelivered event changes nothing
    (not even its received_at), on any warehouse that has ``ON CONFLICT DO NOTHING``."""
    if not events:
        return
    received_at = utc_now_text()
    p = hook.placeholder
    sql = (
        f"INSERT INTO {EVENTS_TABLE} ({', '.join(_FIELDS)}) VALUES ({', '.join([p] * len(_FIELDS))}) "
        "ON CONFLICT (event_id) DO NOTHING"
    )
    rows = [
        (
            e.event_id,
            e.batch_id,
            e.campaign_id,
            e.recipient,
            e.type,
            e.reason,
            e.bounce_type,
            e.timestamp,
            received_at,
        )
        for e in {e.event_id: e for e in events}.values()
    ]
    with transaction(hook) as cur:
        cur.executemany(sql, rows)
