"""The article's error table as an Airflow retry policy (``retry_policy=``, Airflow 3.3+).

| Error                         | Decision                                                   |
|-------------------------------|------------------------------------------------------------|
| 429 rate_limited              | retry after ``Retry-After`` (at most 15 min, see client)   |
| 402 quota_exceeded            | fail now: no retry can help until the plan changes         |
| 401 invalid_api_key           | fail now: do not retry with bad auth (or plain http)       |
| 5xx, timeout (the request's   | retry after 10 s, 30 s, 2 min; then fail (and alert once   |
| deadline, or the try's        | per run); every retry asks by idempotency key first        |
| execution_timeout), dropped   |                                                            |
| answer, broken body, 2xx      |                                                            |
| without id                    |                                                            |
| 409 (idempotency_conflict,    | fail now, with the API's message (or the client's)         |
| and a cancel's too_late),     |                                                            |
| other 4xx, malformed, a body  |                                                            |
| that is not JSON, an unusable |                                                            |
| ``timeout`` extra             |                                                            |
| anything else (the warehouse) | the task's retry delay, at most 3 retries                  |

Server-side failures are counted in the task's state store, so 429 retries
(which are the provider asking us to slow down, not failing) do not use up
the three retries the article allows for 5xx. The delays come from the Airflow
Variable ``migosmtp_server_error_delays`` (a JSON list of seconds) when set, so
tests and impatient operators can shorten them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from airflow.sdk import RetryDecision, RetryPolicy
from airflow.sdk.exceptions import AirflowTaskTimeout

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

SERVER_ERROR_DELAYS_SECONDS = (10.0, 30.0, 120.0)
# The client's bounds, here (not in the client) because DAG files import this module when parsed
# and ``dag_factory`` derives send_batch's execution_timeout from them.
# One deadline per request (connect, send, read the whole body): the connection's ``timeout``
# extra, 30 s when absent or null, at most MAX_REQUEST_TIMEOUT_SECONDS.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 30.0
MAX_REQUEST_TIMEOUT_SECONDS = 120.0
# The API's windows are a minute; a reset further out than this is not a rate window we understand,
# so it is also the longest a batch holds its pool slot after its send (client.pause_after_send).
MAX_RATE_WINDOW_SECONDS = 120.0
MAX_DELAY_SECONDS = 86400.0
OTHER_ERRORS_MAX_TRIES = 4
DELAYS_VARIABLE = "migosmtp_server_error_delays"
TRANSIENT_FAILURES_KEY = "migosmtp_transient_failures"


def _is_delay(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_DELAY_SECONDS


def _server_error_delays() -> Sequence[float]:
    from airflow.sdk import Variable

    raw = Variable.get(DELAYS_VARIABLE, default=None)
    if raw is None:
        return SERVER_ERROR_DELAYS_SECONDS
    try:
        configured = json.loads(raw)
    except ValueError:
        configured = None
    if not isinstance(configured, list) or not all(_is_delay(d) for d in configured):
        raise ValueError(
            f"Variable {DELAYS_VARIABLE} must be a JSON list of seconds (0 to {MAX_DELAY_SECONDS:g}), "
            f"got {raw!r}"
        )
    return configured


def _count_transient_failure(context: Context | None, try_number: int) -> int:
    """How many 5xx/timeouts this batch has had, this one included."""
    if context is None or "task_state_store" not in context:
        return try_number
    store = context["task_state_store"]
    failures = int(store.get(TRANSIENT_FAILURES_KEY, 0) or 0) + 1
    store.set(TRANSIENT_FAILURES_KEY, failures)
    return failures


class MigoSmtpRetryPolicy(RetryPolicy):
    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        from include.migosmtp.client import (
            MigoSmtpError,
            OutcomeUnknown,
            RateLimited,
            ServerError,
        )

        if isinstance(exception, RateLimited):
            # The client caps what the provider asks; this bound also holds for any other source.
            wait = min(max(float(exception.retry_after), 0.0), MAX_DELAY_SECONDS)
            return RetryDecision.retry(timedelta(seconds=wait), reason=str(exception))
        # A try past send_batch's execution_timeout was most likely stuck where the request's
        # deadline cannot reach (a DNS look-up): an unknown outcome like any other timeout.
        if isinstance(exception, (ServerError, OutcomeUnknown, AirflowTaskTimeout)):
            delays = _server_error_delays()
            failures = _count_transient_failure(context, try_number)
            if failures > len(delays):
                # Start the count afresh, so clearing the failed task later gets the full set of retries.
                if context is not None and "task_state_store" in context:
                    context["task_state_store"].set(TRANSIENT_FAILURES_KEY, 0)
                return RetryDecision.fail(f"giving up after {failures} server-side failures: {exception}")
            return RetryDecision.retry(
                timedelta(seconds=delays[failures - 1]),
                reason=f"server-side failure {failures}/{len(delays) + 1}, retrying: {exception}",
            )
        if isinstance(exception, MigoSmtpError):
            return RetryDecision.fail(str(exception))
        # Not the API (the warehouse, say): the task's own retry delay, but not all 12 retries
        # that the 429 ceiling allows. A rerun asks the API first, so nothing is sent twice.
        if try_number >= OTHER_ERRORS_MAX_TRIES:
            return RetryDecision.fail(f"giving up after {try_number} tries: {exception!r}")
        return RetryDecision.default()
