"""The one door from campaign code to the email provider, today MigoSMTP (``include.migosmtp``).

Campaign modules ask this module, never the client: to submit a batch, look one up by its
key, cancel one, read the month's quota or a batch's counts, and what an error means for the campaign
(does it halt the run? alert once when retries give up? can a retry help?). Another provider
is a package beside ``include/migosmtp/`` and a change here. The client is imported on first
use: it brings HttpHook, which a DAG file's parse must not pay for (nor a plan, whose batch keys
come from the contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from include.migosmtp.contract import CANCEL_MIN_LEAD_SECONDS, EVENT_TYPES, FINAL_TYPES, idempotency_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from include.campaign.audience import Recipient

__all__ = [
    "CANCEL_MIN_LEAD",
    "EVENT_TYPES",
    "FINAL_TYPES",
    "Accepted",
    "MonthlyQuota",
    "Provider",
    "alerts_once_when_given_up",
    "batch_key",
    "halts_run",
    "is_provider_error",
    "payload",
    "retry_may_help",
]


CANCEL_MIN_LEAD = timedelta(seconds=CANCEL_MIN_LEAD_SECONDS)


@dataclass(frozen=True)
class Accepted:
    """A batch the provider took: its id, whether the answer replayed an earlier request's, and how
    long to keep the API pool slot before the next request (the rate window's pacing)."""

    batch_id: str
    replayed: bool
    hold_seconds: float


@dataclass(frozen=True)
class MonthlyQuota:
    limit: int
    used: int


def batch_key(campaign_id: str, batch_number: int) -> str:
    """The batch's idempotency key: the same on every retry and rerun, so it is sent once."""
    return idempotency_key(campaign_id, batch_number)


def payload(
    content: dict[str, Any],
    recipients: Sequence[Recipient],
    send_at: datetime,
    campaign_id: str,
    batch_number: int,
) -> dict[str, Any]:
    """The request body for one batch of the campaign's recorded ``content`` (from_email, subject,
    html_body, text_body), tagged with its campaign and batch. Raises if it cannot be sent as
    JSON, so a batch that never could be is refused before an attempt is counted."""
    from include.migosmtp.client import batch_tags, build_payload

    return build_payload(
        from_email=content["from_email"],
        subject=content["subject"],
        html=content["html_body"],
        text=content["text_body"],
        recipients=recipients,
        send_at=send_at,
        tags=batch_tags(campaign_id, batch_number),
    )


class Provider:
    """One task's connection to the provider (the ``migosmtp_default`` Connection)."""

    def __init__(self) -> None:
        from include.migosmtp.client import MigoSmtpClient

        self._client = MigoSmtpClient()

    def find_submitted(self, key: str) -> str | None:
        """The id of the batch the provider already accepted under ``key``, or None."""
        found = self._client.find_batch(key)
        return None if found is None else found["batch_id"]

    def submit(self, payload: dict[str, Any], key: str) -> Accepted:
        """Submit one batch's ``payload`` (see ``payload``) under its idempotency key."""
        from include.migosmtp.client import pause_after_send

        receipt = self._client.send_bulk(payload, key)
        return Accepted(receipt.batch_id, receipt.replayed, pause_after_send(receipt.rate_window))

    def cancel(self, batch_id: str) -> bool:
        """Cancel a batch the provider holds: True when it will not go out (cancelled now or before),
        False when it is too late (less than ``CANCEL_MIN_LEAD`` before its send_at, or already
        sending): it goes out as scheduled. Any other error is raised."""
        from include.migosmtp.client import TooLate

        try:
            self._client.cancel_batch(batch_id)
        except TooLate:
            return False
        return True

    def monthly_quota(self) -> MonthlyQuota:
        quota = self._client.get_quota()
        return MonthlyQuota(quota.monthly_limit, quota.monthly_used)

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        """The provider's own per-outcome counts for a batch (for when webhooks cannot arrive)."""
        return {t: int(n) for t, n in self._client.get_batch(batch_id)["counts"].items()}


# -- what an error means for a campaign -------------------------------------------------------


def is_provider_error(error: BaseException | None) -> bool:
    """An error the provider's answer (or its absence) caused, as opposed to ours or the warehouse's."""
    from include.migosmtp.client import MigoSmtpError

    return isinstance(error, MigoSmtpError)


def halts_run(error: BaseException | None) -> bool:
    """Whether no other batch of the run should call the provider: quota exhausted (402) or the key
    refused (401); every further request would fail the same way."""
    from include.migosmtp.client import InvalidApiKey, QuotaExceeded

    return isinstance(error, (QuotaExceeded, InvalidApiKey))


def alerts_once_when_given_up(error: BaseException | None) -> bool:
    """Whether a batch that failed on this error raises the run's one "gave up" alert: server errors
    and unknown outcomes, which fail a batch only once the retry policy has given up on them."""
    from include.migosmtp.client import OutcomeUnknown, ServerError

    return isinstance(error, (ServerError, OutcomeUnknown))


def retry_may_help(error: BaseException | None) -> bool:
    """Whether asking again later may succeed (not when the key itself is refused)."""
    from include.migosmtp.client import InvalidApiKey

    return not isinstance(error, InvalidApiKey)
