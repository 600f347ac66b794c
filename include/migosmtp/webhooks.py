"""MigoSMTP delivery webhooks: verify, parse and store events, idempotently.

The contract (``shared/reference/migosmtp-api.md``, "Webhooks", assumed): the
provider POSTs ``{"events": [...]}`` with ``X-MigoSMTP-Timestamp`` and
``X-MigoSMTP-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">``,
retries anything but a 2xx for up to 24 hours, and so may deliver an event
more than once and out of order. The receiver therefore only checks and
stores (keyed by ``(batch_id, event_id)``); turning events into ledger counts
is a separate, repeatable reconcile step that reads the whole event set, which
is what makes duplicates and ordering harmless.

Each event is validated on its own: one that cannot be stored is quarantined
and the rest of its post is stored and acknowledged, since a refused post is
retried for a day and then dropped with every valid event in it.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.migosmtp.contract import sign
from include.warehouse import EVENTS_QUARANTINE_TABLE, EVENTS_TABLE, transaction, utc_now_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.sql.hooks.sql import DbApiHook

# The types this version acts on. Others are stored and acknowledged all the same: refusing a post
# for one new type would have the provider retry it for a day and then drop it, valid events and all.
REPLAY_WINDOW_SECONDS = 300
MAX_BODY_BYTES = 1_000_000
MAX_EVENTS_PER_POST = 1000
MAX_TIMESTAMP_HEADER_DIGITS = 12
# Bounds on one event's fields, so that a row always fits PostgreSQL's btree row limit (2704 bytes)
# even at 4 bytes a character: the key (batch_id, event_id) is at most 1600 bytes, the index
# (batch_id, recipient) 2080.
MAX_ID_CHARS = 200  # event_id, batch_id, type, bounce_type, each tag
MAX_RECIPIENT_CHARS = 320
MAX_REASON_CHARS = 2000
MAX_TAGS = 100
# occurred_at (unix seconds) must fit the BIGINT column and mean a time: 1970 up to the year 2286.
MAX_TIMESTAMP = 9_999_999_999
# An event is 4 levels deep ({"events": [{"tags": [...]}]}); far deeper is never an event, and
# parsing it would recurse (json raises RecursionError): what lies deeper is cut before parsing.
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 40  # Python refuses to parse an int of over 4300 digits; none of ours needs 40
MAX_QUARANTINED_CHARS = 4096

log = logging.getLogger(__name__)


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
    def key(self) -> tuple[str, str]:
        """What identifies an event: the provider numbers events within a batch, no wider."""
        return (self.batch_id, self.event_id)

    @property
    def campaign_id(self) -> str | None:
        return next((t.removeprefix("campaign:") for t in self.tags if t.startswith("campaign:")), None)


@dataclass(frozen=True)
class QuarantinedEvent:
    """An event that failed validation, as it is kept: every field safe to log and to store."""

    event_id: str | None
    batch_id: str | None
    reason: str
    raw_event: str


@dataclass
class ParsedPost:
    events: list[DeliveryEvent] = field(default_factory=list)  # valid, in the post's order
    quarantined: list[QuarantinedEvent] = field(default_factory=list)


class InvalidEvent(ValueError):
    """One event of a post that cannot be stored; the rest of the post can."""


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float) -> None:
    """Raise WebhookRejected unless the body is signed with ``secret`` within the replay window."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    if not timestamp or not signature:
        raise WebhookRejected(401, "missing X-MigoSMTP-Timestamp or X-MigoSMTP-Signature")
    # Checked before int(): Python refuses to convert over 4300 digits (a ValueError).
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > MAX_TIMESTAMP_HEADER_DIGITS:
        raise WebhookRejected(401, "X-MigoSMTP-Timestamp is not unix seconds")
    if not signature.isascii():  # hmac.compare_digest raises TypeError on non-ASCII text
        raise WebhookRejected(401, "X-MigoSMTP-Signature is not v1=<hex>")
    if abs(now - int(timestamp)) > REPLAY_WINDOW_SECONDS:
        raise WebhookRejected(401, f"timestamp outside the {REPLAY_WINDOW_SECONDS} s replay window")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        raise WebhookRejected(401, "signature does not match")


# A JSON string (escapes included) or a bracket: what the nesting guard needs to see.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_CUT = '"<nested too deeply>"'


def _cut_deep_values(text: str) -> str:
    """``text`` with every array or object nested deeper than MAX_JSON_DEPTH replaced by a
    string, so that parsing cannot recurse further and the event holding it is quarantined
    instead of the whole post refused. WebhookRejected (400) for brackets left open."""
    pieces: list[str] = []
    depth, kept_to, cut_from = 0, 0, -1
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth == MAX_JSON_DEPTH + 1:
                cut_from = match.start()
        elif token in ("]", "}"):
            if depth == MAX_JSON_DEPTH + 1:
                pieces += [text[kept_to:cut_from], _CUT]
                kept_to = match.end()
            depth -= 1
    if depth > MAX_JSON_DEPTH:
        raise WebhookRejected(400, "body is not JSON (brackets left open)")
    return "".join([*pieces, text[kept_to:]]) if pieces else text


def _bounded_int(digits: str) -> int | float:
    # Too long for any field: infinity, which no field accepts, instead of refusing the whole body.
    return int(digits) if len(digits) <= MAX_INT_DIGITS else math.inf


def _document(body: bytes) -> list[Any]:
    """The post's list of events; WebhookRejected (400) for a body that is not ``{"events": [...]}``."""
    # Bytes that are not UTF-8 become lone surrogates, which quarantine the one event holding them.
    text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    try:
        # strict=False: a raw control character (a NUL) inside a string quarantines its event only.
        document = json.loads(_cut_deep_values(text), strict=False, parse_int=_bounded_int)
    except ValueError:
        raise WebhookRejected(400, "body is not JSON") from None
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list):
        raise WebhookRejected(400, 'body is not {"events": [...]}')
    if len(events) > MAX_EVENTS_PER_POST:
        raise WebhookRejected(413, f"{len(events)} events in one request; at most {MAX_EVENTS_PER_POST}")
    return events


def _checked_text(name: str, value: Any, limit: int) -> str:
    """A string both warehouses store as it is, and short enough for the indexes."""
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} is not a string")
    if len(value) > limit:
        raise InvalidEvent(f"{name} is longer than {limit} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise InvalidEvent(f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(f"{name} contains a lone surrogate") from None
    return value


def _required_text(raw: dict[str, Any], name: str, limit: int) -> str:
    value = raw.get(name)
    if value is None:
        raise InvalidEvent(f"lacks {name}")
    if name in ("event_id", "batch_id") and type(value) is int:
        value = str(value)  # ids sent as JSON numbers have always been accepted
    if value == "":
        raise InvalidEvent(f"{name} is empty")
    return _checked_text(name, value, limit)


def _optional_text(raw: dict[str, Any], name: str, limit: int) -> str | None:
    value = raw.get(name)
    return None if value is None else _checked_text(name, value, limit)


def _timestamp(raw: dict[str, Any]) -> int:
    """Unix seconds as a number (a fraction is dropped) or a string of digits, in 0..MAX_TIMESTAMP."""
    value = raw.get("timestamp")
    if value is None:
        raise InvalidEvent("lacks timestamp")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_INT_DIGITS:
        value = int(value)  # digits in a string have always been accepted
    if type(value) is float and math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP:
        value = int(value)
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise InvalidEvent(f"timestamp is not unix seconds in 0..{MAX_TIMESTAMP}")
    return value


def _tags(raw: dict[str, Any]) -> tuple[str, ...]:
    tags = raw.get("tags")
    if tags is None:
        return ()
    if not isinstance(tags, list):
        raise InvalidEvent("tags is not a list")
    if len(tags) > MAX_TAGS:
        raise InvalidEvent(f"more than {MAX_TAGS} tags")
    return tuple(_checked_text(f"tags[{i}]", tag, MAX_ID_CHARS) for i, tag in enumerate(tags))


def _event(raw: Any) -> DeliveryEvent:
    """One event, validated on its own; InvalidEvent says what is wrong with it."""
    if not isinstance(raw, dict):
        raise InvalidEvent("is not an object")
    bounce_type = _optional_text(raw, "bounce_type", MAX_ID_CHARS)
    return DeliveryEvent(
        event_id=_required_text(raw, "event_id", MAX_ID_CHARS),
        type=_required_text(raw, "type", MAX_ID_CHARS),
        batch_id=_required_text(raw, "batch_id", MAX_ID_CHARS),
        recipient=_required_text(raw, "recipient", MAX_RECIPIENT_CHARS),
        tags=_tags(raw),
        timestamp=_timestamp(raw),
        reason=_optional_text(raw, "reason", MAX_REASON_CHARS),
        bounce_type=None if bounce_type is None else bounce_type.lower(),
    )


def _safe_id(raw: Any, name: str) -> str | None:
    """An id of a quarantined event as far as it can be kept: cut short, NULs and lone
    surrogates escaped, so that any log or column takes it."""
    value = raw.get(name) if isinstance(raw, dict) else None
    if type(value) is int:
        value = str(value)
    if not isinstance(value, str):
        return None
    escaped = value[:MAX_ID_CHARS].replace("\x00", "\\x00")
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def _quarantined(raw: Any, index: int, problem: str) -> QuarantinedEvent:
    # ASCII-escaped JSON holds no NUL or lone surrogate; nesting is at most MAX_JSON_DEPTH here.
    text = json.dumps(raw, ensure_ascii=True, allow_nan=True)
    return QuarantinedEvent(
        event_id=_safe_id(raw, "event_id"),
        batch_id=_safe_id(raw, "batch_id"),
        reason=f"events[{index}] {problem}",
        raw_event=text[:MAX_QUARANTINED_CHARS],
    )


def parse(body: bytes) -> ParsedPost:
    """The post's events, each validated on its own: the valid ones, and the rest quarantined
    (each logged with its id). WebhookRejected only for a body that is not ``{"events": [...]}``."""
    post = ParsedPost()
    for index, raw in enumerate(_document(body)):
        try:
            post.events.append(_event(raw))
        except InvalidEvent as problem:
            bad = _quarantined(raw, index, str(problem))
            log.warning(
                "webhook event quarantined: event_id=%s batch_id=%s: %s",
                ascii(bad.event_id),
                ascii(bad.batch_id),
                bad.reason,
            )
            post.quarantined.append(bad)
    return post


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
_QUARANTINE_FIELDS = ("event_id", "batch_id", "reason", "raw_event", "received_at")


def store(
    hook: DbApiHook, events: Sequence[DeliveryEvent], quarantined: Sequence[QuarantinedEvent] = ()
) -> int:
    """Insert events keyed by ``(batch_id, event_id)``, and quarantined events, in one
    transaction; returns how many events were new. An event already stored changes nothing
    (not even its received_at): the first one received wins, within a post as across posts."""
    if not events and not quarantined:
        return 0
    received_at = utc_now_text()
    p = hook.placeholder
    first: dict[tuple[str, str], DeliveryEvent] = {}
    for e in events:
        first.setdefault(e.key, e)
    rows = [
        (e.event_id, e.batch_id, e.campaign_id, e.recipient, e.type, e.reason, e.bounce_type, e.timestamp)
        for e in first.values()
    ]
    with transaction(hook) as cur:
        stored = 0
        if rows:
            cur.executemany(
                f"INSERT INTO {EVENTS_TABLE} ({', '.join(_FIELDS)}) VALUES ({', '.join([p] * len(_FIELDS))}) "
                "ON CONFLICT (batch_id, event_id) DO NOTHING",
                [(*row, received_at) for row in rows],
            )
            stored = max(cur.rowcount, 0)  # SQLite and psycopg both sum executemany's rows
        if quarantined:
            cur.executemany(
                f"INSERT INTO {EVENTS_QUARANTINE_TABLE} ({', '.join(_QUARANTINE_FIELDS)}) "
                f"VALUES ({', '.join([p] * len(_QUARANTINE_FIELDS))})",
                [(q.event_id, q.batch_id, q.reason, q.raw_event, received_at) for q in quarantined],
            )
    return stored
