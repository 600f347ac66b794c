"""Facts of the MigoSMTP API contract that both sides of it use: the webhook event types, the
signature headers and how a body is signed.

Stdlib only, so the sandbox (the provider's side, a development tool) and the receiver (ours)
share one definition without the sandbox importing Airflow.
"""

from __future__ import annotations

import hashlib
import hmac

# Every type the contract defines, in the order counts are shown; a soft bounce is a "bounced"
# event with bounce_type "soft".
EVENT_TYPES = ("delivered", "bounced", "deferred", "complained", "unsubscribed")
# The types after which a recipient's state no longer changes.
FINAL_TYPES = ("delivered", "bounced", "complained", "unsubscribed")
BOUNCE_TYPES = ("hard", "soft")
TIMESTAMP_HEADER = "X-MigoSMTP-Timestamp"
SIGNATURE_HEADER = "X-MigoSMTP-Signature"
# A batch can be cancelled only while its send_at is more than this far ahead (the contract's
# "less than 10 minutes away" answers 409 too_late).
CANCEL_MIN_LEAD_SECONDS = 600


def idempotency_key(campaign_id: str, batch_number: int) -> str:
    """The Idempotency-Key a batch is sent with (the contract lets the sender choose it): the same
    on every retry and rerun of a batch. Here, not in the client, so a plan that writes a key per
    batch does not import the HTTP stack (about a second)."""
    return f"bulk-email:{campaign_id}:batch-{batch_number}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"
