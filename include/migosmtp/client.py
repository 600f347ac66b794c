"""Everything MigoSMTP-specific: auth, the bulk request, idempotency, look-ups, cancels, and its errors.

The contract is ``shared/reference/migosmtp-api.md``. A difference found in
the real API is a change to this module only. HTTP goes through the HTTP
provider's ``HttpHook``, so the base URL, proxies, TLS and the timeout come
from the ``migosmtp_default`` connection like any other Airflow HTTP call.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests
from airflow.providers.http.hooks.http import HttpHook
from requests.auth import AuthBase
from requests.exceptions import ChunkedEncodingError
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter

from include.migosmtp.contract import idempotency_key  # noqa: F401  (the client's callers use it here)
from include.migosmtp.retry_policy import (
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    MAX_RATE_WINDOW_SECONDS,
    MAX_REQUEST_TIMEOUT_SECONDS,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from airflow.sdk import Connection

    from include.campaign.audience import Recipient

log = logging.getLogger(__name__)

MIGOSMTP_CONN_ID = "migosmtp_default"
SEND_ENDPOINT = "/v1/email/send/bulk"
BATCHES_ENDPOINT = "/v1/email/batches"
QUOTA_ENDPOINT = "/v1/account/quota"
REQUEST_TIMEOUT_SECONDS = DEFAULT_REQUEST_TIMEOUT_SECONDS
DEFAULT_RATE_LIMIT_WAIT_SECONDS = 60.0
# The longest wait a provider's Retry-After may impose: past it (a broken header, or a date far
# ahead) the batch waits this long and asks again; each 429 uses one of the task's retries.
MAX_RETRY_AFTER_SECONDS = 900.0
# Provider text (error messages, bodies) is capped and filtered before it reaches last_error,
# logs and alerts.
MAX_PROVIDER_TEXT = 300
_CREDENTIAL = re.compile(
    r"(?i)((?:authorization:?\s*)?(?:bearer|basic)\s+|authorization:?\s*|api[_-]?key[\"']?\s*[:=]\s*[\"']?|password[\"']?\s*[:=]\s*[\"']?)\S+"
    r"|\b[A-Za-z0-9_\-]{32,}\b"
)
RESERVE_VARIABLE = "migosmtp_rate_limit_reserve"


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


class IdempotencyConflict(RequestRejected):
    """409: the idempotency key was used with another body: the batch changed since its first
    attempt. The provider keeps the first; resending cannot help."""


class TooLate(MigoSmtpError):
    """409 too_late: the batch cannot be cancelled any more (its send_at is less than 10 minutes
    away, or it is sending or delivered); it goes out as scheduled. Asking again cannot help."""


class InsecureConnection(InvalidApiKey):
    """The connection would send the API key over plain http to a host that is not loopback.
    Like a wrong key, the connection has to be fixed: not retried, and it halts the run."""


class InvalidPayload(RequestRejected):
    """The batch cannot be encoded as JSON (a NaN or infinite variable, say): nothing was sent,
    and resending the same batch cannot help."""


class InvalidTimeout(MigoSmtpError):
    """The connection's ``timeout`` extra is not a positive number of seconds: fix the connection.
    Raised before any request; not retried (every retry would read the same connection)."""


class MalformedResponse(MigoSmtpError):
    """A 2xx answer without the documented JSON: the batch's fate cannot be read from it."""


@dataclass(frozen=True)
class RateWindow:
    """The send endpoint's rate window as the last response's ``X-RateLimit-*`` headers told it."""

    limit: int
    remaining: int
    reset_seconds: float

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateWindow | None:
        try:
            limit = int(headers["X-RateLimit-Limit"])
            remaining = int(headers["X-RateLimit-Remaining"])
            reset = float(headers["X-RateLimit-Reset"])
        except (KeyError, ValueError):
            return None  # no or unreadable headers: nothing to pace by
        if limit < 1 or remaining < 0 or not 0 <= reset <= MAX_RATE_WINDOW_SECONDS:
            return None
        return cls(limit, remaining, reset)

    @property
    def largest_reserve(self) -> int:
        """No reserve is larger than half the window: beyond that it would only waste the window."""
        return max(1, self.limit // 2)

    def hold_seconds(self, reserve: int | None = None) -> float:
        """How long to keep this pool slot before the next request may use it: the rest of the
        window once fewer than ``reserve`` requests remain in it, else 0.

        Each batch task sends one request and then frees its slot, so holding the slot is what
        paces the next one. With ``reserve`` at least the pool's slots, the requests other
        slots may already have in flight still fit the window: no 429 of our own making.
        The default reserve is a tenth of the limit (30 of 300), enough for a pool of 30.
        """
        reserve = max(1, math.ceil(self.limit / 10)) if reserve is None else reserve
        return self.reset_seconds if self.remaining < min(reserve, self.largest_reserve) else 0.0


def pause_after_send(window: RateWindow | None) -> float:
    """Seconds a batch task keeps its pool slot after its send: 0 unless the window is nearly spent.

    The reserve comes from the Variable ``migosmtp_rate_limit_reserve`` (for a ``migosmtp_api``
    pool of more than 30 slots), read only when it could matter: in the window's second half.
    """
    if window is None or window.remaining >= window.largest_reserve:
        return 0.0
    return window.hold_seconds(_configured_reserve())


def _configured_reserve() -> int | None:
    from airflow.sdk import Variable

    raw = Variable.get(RESERVE_VARIABLE, default=None)
    if raw is None:
        return None
    try:
        reserve = int(raw)
    except (TypeError, ValueError):
        reserve = 0
    if reserve < 1:
        # Read after the send, so it must not fail the batch: pace by the default instead.
        log.warning(
            "Variable %s must be a positive integer (at least the %s pool's slots), got %r; "
            "pacing with a tenth of the rate limit instead",
            RESERVE_VARIABLE,
            "migosmtp_api",
            raw,
        )
        return None
    return reserve


@dataclass(frozen=True)
class SendReceipt:
    batch_id: str
    status: str
    replayed: bool
    rate_window: RateWindow | None = None


@dataclass(frozen=True)
class Quota:
    """The account's monthly send quota, in recipients."""

    monthly_limit: int
    monthly_used: int


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

    def __init__(
        self,
        method: str = "POST",
        migosmtp_conn_id: str = MIGOSMTP_CONN_ID,
        adapter: requests.adapters.HTTPAdapter | None = None,
    ) -> None:
        super().__init__(method=method, http_conn_id=migosmtp_conn_id, adapter=adapter)

    def _extract_auth(self, connection: Connection) -> AuthBase:
        key = (connection.password or "").strip()
        if not key:
            raise InvalidApiKey(
                f"connection {self.http_conn_id!r} has no password; set it to the MigoSMTP API key",
                code="missing_api_key",
            )
        # A key pasted with a line break would make http.client raise an error that quotes the
        # header, key included, in a form log masking does not recognise: refuse it here, unnamed.
        if not all("!" <= ch <= "~" for ch in key):
            raise InvalidApiKey(
                f"the password of connection {self.http_conn_id!r} is not a usable MigoSMTP API key: "
                "it contains spaces, line breaks or other characters an API key does not have; "
                "paste the key again",
                code="malformed_api_key",
            )
        return _BearerAuth(key)

    def _set_base_url(self, connection: Connection) -> None:
        super()._set_base_url(connection)
        url = urlsplit(self.base_url)
        if url.scheme != "https" and not _is_loopback(url.hostname):
            raise InsecureConnection(
                f"connection {self.http_conn_id!r} points at {url.scheme}://{url.hostname}: the API key "
                "would travel unencrypted. Use https (the connection's schema 'https', or a host "
                "starting with https://); plain http is allowed only on loopback (the sandbox)",
                code="insecure_connection",
            )


def _is_loopback(host: str | None) -> bool:
    if host in (None, ""):
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def provider_text(text: str | None, secrets: Iterable[str], limit: int = MAX_PROVIDER_TEXT) -> str:
    """Provider-supplied text made safe to store and forward: one line, at most ``limit``
    characters, ``secrets`` and anything that looks like a credential replaced. The whole text is
    filtered before it is cut, so a secret cut in half cannot slip through. ``secrets`` has no
    default: the client passes its connection's key (``MigoSmtpClient._said``)."""
    if not text:
        return ""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _CREDENTIAL.sub(lambda m: (m.group(1) or "") + "[redacted]", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    payload = {
        "from": from_email,
        "subject": subject,
        "html": html,
        "text": text,
        "recipients": [{"to": r.email, "variables": r.variables} for r in recipients],
        "send_at": send_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tags": tags,
    }
    # Encoded once here too: the task builds the payload before the ledger counts an attempt,
    # so a batch that cannot be sent fails with no attempt recorded.
    encode_payload(payload)
    return payload


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The request body: the bytes ``requests``' ``json=`` made (so a resend under an idempotency
    key is the same body), but strict. NaN and Infinity are not JSON: raises ``InvalidPayload``."""
    try:
        return json.dumps(payload, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        batch = next((t for t in payload.get("tags", ()) if str(t).startswith("batch:")), "?")
        raise InvalidPayload(
            f"batch {batch!r} cannot be sent as JSON: {_unencodable(payload) or err}. Fix the value in "
            "the recipients table (NULL or a finite number) and plan the campaign again; not retried.",
            code="invalid_payload",
        ) from None


def _unencodable(payload: dict[str, Any]) -> str:
    """Which recipient variable is not JSON, by position in the batch (addresses stay out of errors)."""
    for position, recipient in enumerate(payload.get("recipients", ()), start=1):
        for name, value in recipient.get("variables", {}).items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                return f"recipient {position}'s variable {name!r} is {value!r:.40}"
    return ""


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


def request_timeout(value: Any, conn_id: str) -> float:
    """The deadline, in seconds, for one whole request (connect, send, read the body).

    ``value`` is the connection's ``timeout`` extra (or the client's argument): absent or null is
    the default (30 s), a number above ``MAX_REQUEST_TIMEOUT_SECONDS`` is clamped to it, and zero,
    a negative number or anything not a number (a list, ``"soon"``, NaN) is refused: ``requests``
    would otherwise wait forever or raise an error that does not say where the value came from.
    """
    if value is None:
        return DEFAULT_REQUEST_TIMEOUT_SECONDS
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            seconds = None
    if seconds is None or math.isnan(seconds) or seconds <= 0:
        raise InvalidTimeout(
            f"connection {conn_id!r} has timeout {value!r} in its extra: it must be a positive number "
            f"of seconds (at most {MAX_REQUEST_TIMEOUT_SECONDS:g}; remove it for the "
            f"{DEFAULT_REQUEST_TIMEOUT_SECONDS:g} s default)",
            code="invalid_timeout",
        )
    if seconds > MAX_REQUEST_TIMEOUT_SECONDS:
        log.warning(
            "Connection %s asks for a %r s timeout; requests are capped at %g s",
            conn_id,
            value,
            MAX_REQUEST_TIMEOUT_SECONDS,
        )
    return min(seconds, MAX_REQUEST_TIMEOUT_SECONDS)


class _Deadline:
    """One request's deadline, from connect to the body's last byte.

    requests' timeouts bound each wait on the socket, not the request: a server that trickles a
    byte a second never trips them, in its headers or its body. So when the deadline passes, a
    timer shuts the request's sockets, wherever the request is; the request then fails as a
    dropped connection would, and ``expired`` says why.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._ends = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def left(self) -> float:
        return max(self._ends - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv or send blocked in another thread
    except OSError:
        pass  # already closed


class _WatchedConnection:
    """Mixed into urllib3's connection class: hands each new socket to the request's deadline."""

    deadline: _Deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.deadline.watch(self.sock)  # type: ignore[attr-defined]


class _DeadlineAdapter(TCPKeepAliveAdapter):
    """HttpHook's default adapter (TCP keep-alive, its settings), its connections watched."""

    def __init__(self, deadline: _Deadline) -> None:
        self._deadline = deadline
        super().__init__(idle=120, count=20, interval=30)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        base = pool.ConnectionCls
        if not issubclass(base, _WatchedConnection):  # a pool of this session met again (a redirect)
            watched = {"deadline": self._deadline}
            pool.ConnectionCls = type(f"Watched{base.__name__}", (_WatchedConnection, base), watched)
        return pool


def _no_answer(method: str, endpoint: str, why: str) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"no answer from MigoSMTP for {method} {endpoint} ({why}); the request may or may not have "
        "been accepted"
    )


def _json_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_for(response: requests.Response, conn_id: str, said: Callable[[str], str]) -> MigoSmtpError:
    """The error for a non-2xx answer; every text from the provider in it goes through ``said``."""
    status = response.status_code
    body = _json_body(response)
    code = said(str(body["error"]))[:64] if body.get("error") else None
    message = body.get("message")
    detail = said(str(message) if message else code or response.text or response.reason)
    if status == 429:
        asked = parse_retry_after(response.headers.get("Retry-After"))
        if asked is None:
            asked = parse_retry_after(response.headers.get("X-RateLimit-Reset"))
        asked = DEFAULT_RATE_LIMIT_WAIT_SECONDS if asked is None else asked
        wait = min(asked, MAX_RETRY_AFTER_SECONDS)
        capped = "" if wait == asked else f" (it asked for {asked:g} s; waits are capped at {wait:g} s)"
        return RateLimited(f"MigoSMTP rate limit hit (429): retrying after {wait:g} s{capped}", wait)
    if status == 409 and code == "too_late":
        return TooLate(f"MigoSMTP could not cancel the batch (409 {code}): {detail}", status, code)
    if status == 409:
        return IdempotencyConflict(
            f"MigoSMTP refused the batch (409 {code}): its idempotency key was first used with another "
            "body, so the batch changed since its first attempt and the provider keeps that first "
            f"version; not retried. Look the key up before sending anything for it: {detail}",
            status,
            code,
        )
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
    """The calls the campaign makes. Each request has one deadline, connect to the body's last
    byte: 30 s unless given here or as the connection's ``timeout`` extra, at most 120 s (see
    ``request_timeout``)."""

    def __init__(self, conn_id: str = MIGOSMTP_CONN_ID, timeout: float | None = None) -> None:
        self._conn_id = conn_id
        self._timeout = timeout

    @functools.cached_property
    def _extra(self) -> dict[str, Any]:
        return MigoSmtpHook.get_connection(self._conn_id).extra_dejson

    @functools.cached_property
    def timeout(self) -> float:
        """Seconds one request may take, connect to the body's last byte."""
        value = self._timeout if self._timeout is not None else self._extra.get("timeout")
        return request_timeout(value, self._conn_id)

    def _said(self, text: str | None, limit: int = MAX_PROVIDER_TEXT) -> str:
        """Provider text as it may appear in an error, the ledger or a log: the one way it gets
        there, filtered of credentials and of this connection's key (``provider_text``)."""
        try:
            key = MigoSmtpHook.get_connection(self._conn_id).password or ""
        except Exception:  # noqa: BLE001 - the error must still be raised without it
            key = ""
        return provider_text(text, (key, key.strip()), limit)

    def _request(self, method: str, endpoint: str, **kwargs: Any) -> requests.Response:
        seconds = self.timeout  # an unusable extra fails here, before any request
        with _Deadline(seconds) as deadline:
            hook = MigoSmtpHook(method, self._conn_id, adapter=_DeadlineAdapter(deadline))
            # Not streamed, so the body is read inside the deadline; requests' own timeout bounds
            # the connect, which the deadline's timer cannot interrupt (no socket yet).
            options = {"check_response": False, "stream": False, "timeout": deadline.left()}
            try:
                response = hook.run(endpoint, extra_options=options, **kwargs)
            except (requests.Timeout, requests.ConnectionError, ChunkedEncodingError) as err:
                why = f"no complete answer within {seconds:g} s" if deadline.expired else type(err).__name__
                raise _no_answer(method, endpoint, why) from err
        if deadline.expired:
            # Shut mid-headers, http.client takes the end of the stream for the end of the answer:
            # a cut answer can look whole (a 202 with no body), so none is trusted.
            raise _no_answer(method, endpoint, f"no complete answer within {seconds:g} s")
        return response

    def send_bulk(self, payload: dict[str, Any], key: str) -> SendReceipt:
        """Submit one batch. Raises a ``MigoSmtpError`` subclass that says what to do next."""
        response = self._request(
            "POST",
            SEND_ENDPOINT,
            data=encode_payload(payload),
            headers={"Idempotency-Key": key, "Content-Type": "application/json"},
        )
        if not response.ok:
            raise self._error(response)
        body = _json_body(response)
        batch_id = body.get("batch_id")
        window = RateWindow.from_headers(response.headers)
        if not isinstance(batch_id, str) or not batch_id:
            # A 2xx says the provider probably took it: ask by key rather than call it failed.
            found = self.find_batch(key)
            if found is None or not isinstance(found.get("batch_id"), str) or not found["batch_id"]:
                raise OutcomeUnknown(
                    f"MigoSMTP answered {response.status_code} without a batch_id "
                    f"(body starts {self._said(response.text, 80)!r}) and has no batch under "
                    f"idempotency key {key!r} yet; retried, and the retry asks again first",
                    response.status_code,
                )
            log.warning(
                "MigoSMTP answered %s without a batch_id; found %s by idempotency key",
                response.status_code,
                found["batch_id"],
            )
            return SendReceipt(found["batch_id"], str(found.get("status", "scheduled")), False, window)
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        status = str(body.get("status", "scheduled"))
        return SendReceipt(batch_id, status, replayed, window)

    def _error(self, response: requests.Response) -> MigoSmtpError:
        """The error for a non-2xx answer, its text filtered of this connection's key too."""
        return _error_for(response, self._conn_id, self._said)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """A batch's live status and per-outcome ``counts``."""
        response = self._request("GET", f"{BATCHES_ENDPOINT}/{batch_id}")
        if not response.ok:
            raise self._error(response)
        batch = _json_body(response)
        if not isinstance(batch.get("counts"), dict):
            raise MalformedResponse(
                f"MigoSMTP batch {batch_id} answered {response.status_code} without counts",
                response.status_code,
            )
        return batch

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a scheduled batch: the batch, ``"status": "cancelled"`` (also when it already was).
        Raises ``TooLate`` when the provider will send it anyway."""
        response = self._request("POST", f"{BATCHES_ENDPOINT}/{quote(batch_id, safe='')}/cancel")
        if not response.ok:
            raise self._error(response)
        batch = _json_body(response)
        if batch.get("status") != "cancelled":
            # A 2xx that does not say cancelled says nothing we can act on: the batch may still go out.
            raise MalformedResponse(
                f"MigoSMTP answered {response.status_code} to the cancel of batch {batch_id} without "
                f"status 'cancelled' (body starts {self._said(response.text, 80)!r})",
                response.status_code,
            )
        return batch

    def get_quota(self) -> Quota:
        """This month's quota: its limit and what the account has used."""
        response = self._request("GET", QUOTA_ENDPOINT)
        if not response.ok:
            raise self._error(response)
        body = _json_body(response)
        limit, used = body.get("monthly_limit"), body.get("monthly_used")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (limit, used)):
            raise MalformedResponse(
                f"MigoSMTP quota answered {response.status_code} without whole monthly_limit and "
                f"monthly_used (body starts {self._said(response.text, 80)!r})",
                response.status_code,
            )
        return Quota(monthly_limit=limit, monthly_used=used)

    def find_batch(self, key: str) -> dict[str, Any] | None:
        """The batch accepted under an idempotency key, or None if the provider has none."""
        response = self._request("GET", BATCHES_ENDPOINT, data={"idempotency_key": key})
        if not response.ok:
            raise self._error(response)
        batches = _json_body(response).get("batches")
        if not isinstance(batches, list):
            raise MalformedResponse(
                f"MigoSMTP batch look-up answered {response.status_code} without a batches list",
                response.status_code,
            )
        return batches[0] if batches else None
