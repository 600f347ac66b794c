"""Everything MigoSMTP-specific: auth, the bulk request, idempotency, look-ups, and its errors.

The contract is ``shared/reference/migosmtp-api.md``. A difference found in
the real API is a change to this module only. HTTP goes through the HTTP
provider's ``HttpHook``, so the base URL, proxies, TLS and the timeout come
from the ``migosmtp_default`` connection like any other Airflow HTTP call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import requests
from airflow.providers.http.hooks.http import HttpHook
from requests.auth import AuthBase

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk import Connection

    from include.campaign.audience import Recipient

MIGOSMTP_CONN_ID = "migosmtp_default"
SEND_ENDPOINT = "/v1/email/send/bulk"
BATCHES_ENDPOINT = "/v1/email/batches"
REQUEST_TIMEOUT_SECONDS = 30.0
DEFAULT_RATE_LIMIT_WAIT_SECONDS = 60.0


class MigoSmtpError(Exception):
    """A request MigoSMTP did not accept. ``status`` is None when no HTTP answer came back."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RateLimited(MigoSmtpError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, 429, "rate_limited")
        self.retry_after = retry_after


class QuotaExceeded(MigoSmtpError):
    """402: the monthly quota is spent. Retrying cannot help."""


class InvalidApiKey(MigoSmtpError):
    """401: the key is wrong. Retrying with the same key cannot help."""


class ServerError(MigoSmtpError):
    """5xx: the provider failed; the request was not accepted."""


class OutcomeUnknown(MigoSmtpError):
    """Timeout or dropped connection: the batch may or may not have been accepted."""


class RequestRejected(MigoSmtpError):
    """Any other 4xx: the request itself is wrong, so resending it unchanged cannot help."""


class MalformedResponse(MigoSmtpError):
    """A 2xx answer without the documented JSON: the batch's fate cannot be read from it."""


@dataclass(frozen=True)
class SendReceipt:
    batch_id: str
    status: str
    replayed: bool


class _BearerAuth(AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class MigoSmtpHook(HttpHook):
    """``HttpHook`` with MigoSMTP's Bearer auth: the API key is the connection's password."""

    conn_name_attr = "migosmtp_conn_id"
    default_conn_name = MIGOSMTP_CONN_ID
    conn_type = "http"
    hook_name = "MigoSMTP"

    def __init__(self, method: str = "POST", migosmtp_conn_id: str = MIGOSMTP_CONN_ID) -> None:
        super().__init__(method=method, http_conn_id=migosmtp_conn_id)

    def _extract_auth(self, connection: Connection) -> AuthBase:
        if not connection.password:
            raise InvalidApiKey(
                f"connection {self.http_conn_id!r} has no password; set it to the MigoSMTP API key",
                code="missing_api_key",
            )
        return _BearerAuth(connection.password)


def idempotency_key(campaign_id: str, batch_number: int) -> str:
    """Deterministic per batch, so every retry and rerun of a batch carries the same key."""
    return f"bulk-email:{campaign_id}:batch-{batch_number}"


def batch_tags(campaign_id: str, batch_number: int) -> list[str]:
    return [f"campaign:{campaign_id}", f"batch:{campaign_id}:{batch_number}"]


def build_payload(
    *,
    from_email: str,
    subject: str,
    html: str,
    text: str,
    recipients: Iterable[Recipient],
    send_at: datetime,
    tags: list[str],
) -> dict[str, Any]:
    """The article's bulk body. Subject and bodies pass through untouched: MigoSMTP fills ``{{vars}}``."""
    return {
        "from": from_email,
        "subject": subject,
        "html": html,
        "text": text,
        "recipients": [{"to": r.email, "variables": r.variables} for r in recipients],
        "send_at": send_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tags": tags,
    }


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def _json_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_for(response: requests.Response, conn_id: str) -> MigoSmtpError:
    status = response.status_code
    body = _json_body(response)
    code = body.get("error")
    detail = body.get("message") or code or response.text[:200] or response.reason
    if status == 429:
        wait = parse_retry_after(response.headers.get("Retry-After"))
        if wait is None:
            wait = parse_retry_after(response.headers.get("X-RateLimit-Reset"))
        wait = DEFAULT_RATE_LIMIT_WAIT_SECONDS if wait is None else wait
        return RateLimited(f"MigoSMTP rate limit hit (429): retrying after {wait:g} s", wait)
    if status == 402:
        return QuotaExceeded(
            f"MigoSMTP quota exceeded (402 {code}): {detail}. Upgrade the plan or wait for the "
            "monthly reset, then resume the failed batches; not retried.",
            status,
            code,
        )
    if status == 401:
        return InvalidApiKey(
            f"MigoSMTP rejected the API key (401 {code}): {detail}. Fix the password of the "
            f"{conn_id!r} connection; not retried with the same key.",
            status,
            code,
        )
    if status >= 500:
        return ServerError(f"MigoSMTP server error ({status} {code}): {detail}", status, code)
    return RequestRejected(f"MigoSMTP refused the request ({status} {code}): {detail}", status, code)


class MigoSmtpClient:
    """The calls the campaign makes. The timeout is 30 s unless given here or as the connection's
    ``timeout`` extra."""

    def __init__(self, conn_id: str = MIGOSMTP_CONN_ID, timeout: float | None = None) -> None:
        self._conn_id = conn_id
        self._timeout = timeout

    def _request(self, method: str, endpoint: str, **kwargs: Any) -> requests.Response:
        hook = MigoSmtpHook(method=method, migosmtp_conn_id=self._conn_id)
        options: dict[str, Any] = {"check_response": False}
        if self._timeout is not None:
            options["timeout"] = self._timeout
        elif "timeout" not in hook.get_connection(self._conn_id).extra_dejson:
            options["timeout"] = REQUEST_TIMEOUT_SECONDS
        try:
            return hook.run(endpoint, extra_options=options, **kwargs)
        except (requests.Timeout, requests.ConnectionError) as err:
            raise OutcomeUnknown(
                f"no answer from MigoSMTP for {method} {endpoint} ({type(err).__name__}); "
                "the request may or may not have been accepted"
            ) from err

    def send_bulk(self, payload: dict[str, Any], key: str) -> SendReceipt:
        """Submit one batch. Raises a ``MigoSmtpError`` subclass that says what to do next."""
        response = self._request("POST", SEND_ENDPOINT, json=payload, headers={"Idempotency-Key": key})
        if not response.ok:
            raise _error_for(response, self._conn_id)
        body = _json_body(response)
        batch_id = body.get("batch_id")
        if not isinstance(batch_id, str) or not batch_id:
            raise MalformedResponse(
                f"MigoSMTP answered {response.status_code} without a batch_id in JSON "
                f"(body starts {response.text[:80]!r}); the batch's state is unknown, look it up by "
                f"idempotency key {key!r} before resending",
                response.status_code,
            )
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        return SendReceipt(batch_id, str(body.get("status", "scheduled")), replayed)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """A batch's live status and per-outcome ``counts``."""
        response = self._request("GET", f"{BATCHES_ENDPOINT}/{batch_id}")
        if not response.ok:
            raise _error_for(response, self._conn_id)
        batch = _json_body(response)
        if not isinstance(batch.get("counts"), dict):
            raise MalformedResponse(
                f"MigoSMTP batch {batch_id} answered {response.status_code} without counts",
                response.status_code,
            )
        return batch

    def find_batch(self, key: str) -> dict[str, Any] | None:
        """The batch accepted under an idempotency key, or None if the provider has none."""
        response = self._request("GET", BATCHES_ENDPOINT, data={"idempotency_key": key})
        if not response.ok:
            raise _error_for(response, self._conn_id)
        batches = _json_body(response).get("batches")
        if not isinstance(batches, list):
            raise MalformedResponse(
                f"MigoSMTP batch look-up answered {response.status_code} without a batches list",
                response.status_code,
            )
        return batches[0] if batches else None
