"""Unit tests of ``MigoSmtpRetryPolicy.evaluate``: the article's error table as retry decisions.

The exceptions are the client's own types. The task state store is the one
piece of the Airflow runtime faked here: a dict behind ``get``/``set``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk import RetryAction, RetryDecision, RetryPolicy
from airflow.sdk.exceptions import AirflowTaskTimeout

from include.migosmtp.client import (
    InvalidApiKey,
    InvalidPayload,
    InvalidTimeout,
    MalformedResponse,
    OutcomeUnknown,
    QuotaExceeded,
    RateLimited,
    RequestRejected,
    ServerError,
    TooLate,
)
from include.migosmtp.retry_policy import (
    DELAYS_VARIABLE,
    TRANSIENT_FAILURES_KEY,
    MigoSmtpRetryPolicy,
)

DELAYS_ENV = "AIRFLOW_VAR_MIGOSMTP_SERVER_ERROR_DELAYS"
MAX_TRIES = 13  # the DAG's retries=12, plus the first try


class DictStore:
    """The ``task_state_store`` accessor's get/set, backed by a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("Cannot set value as None")
        self.data[key] = value


@pytest.fixture
def policy() -> MigoSmtpRetryPolicy:
    return MigoSmtpRetryPolicy()


@pytest.fixture
def store() -> DictStore:
    return DictStore()


@pytest.fixture
def context(store: DictStore) -> dict[str, Any]:
    return {"task_state_store": store}


@pytest.fixture
def default_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Variable: conftest sets a short one for the whole session, so remove it."""
    monkeypatch.delenv(DELAYS_ENV, raising=False)


def server_error(status: int = 500) -> ServerError:
    return ServerError(f"MigoSMTP server error ({status} internal_error): boom", status, "internal_error")


def timeout() -> OutcomeUnknown:
    return OutcomeUnknown("no answer from MigoSMTP for POST /v1/email/send/bulk (ReadTimeout)")


def rate_limited(seconds: float = 7.0) -> RateLimited:
    return RateLimited(f"MigoSMTP rate limit hit (429): retrying after {seconds:g} s", seconds)


def test_is_an_airflow_retry_policy(policy: MigoSmtpRetryPolicy) -> None:
    assert isinstance(policy, RetryPolicy)


class TestRateLimited:
    @pytest.mark.parametrize("try_number", [1, 2, 5, 12, MAX_TRIES])
    def test_retries_after_retry_after_whatever_the_try(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], try_number: int
    ) -> None:
        error = rate_limited(7)
        decision = policy.evaluate(error, try_number, MAX_TRIES, context)
        assert decision.action is RetryAction.RETRY
        assert decision.retry_delay == timedelta(seconds=7)
        assert decision.reason == str(error)

    def test_fractional_and_zero_waits(self, policy: MigoSmtpRetryPolicy) -> None:
        assert policy.evaluate(rate_limited(117.5), 1, MAX_TRIES).retry_delay == timedelta(seconds=117.5)
        assert policy.evaluate(rate_limited(0), 1, MAX_TRIES).retry_delay == timedelta(0)

    def test_does_not_touch_the_server_error_count(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], store: DictStore
    ) -> None:
        for try_number in range(1, 6):
            policy.evaluate(rate_limited(), try_number, MAX_TRIES, context)
        assert store.data == {}


class TestFailsAtOnce:
    @pytest.mark.parametrize(
        "error",
        [
            QuotaExceeded(
                "MigoSMTP quota exceeded (402 quota_exceeded): over. Upgrade the plan or wait for the "
                "monthly reset, then resume the failed batches; not retried.",
                402,
                "quota_exceeded",
            ),
            InvalidApiKey(
                "MigoSMTP rejected the API key (401 invalid_api_key): bad. Fix the password of the "
                "'migosmtp_default' connection; not retried with the same key.",
                401,
                "invalid_api_key",
            ),
            InvalidApiKey("connection 'migosmtp_default' has no password", code="missing_api_key"),
            RequestRejected(
                "MigoSMTP refused the request (400 too_many_recipients): at most 1000 recipients",
                400,
                "too_many_recipients",
            ),
            RequestRejected("MigoSMTP refused the request (409 idempotency_conflict): x", 409),
            TooLate(
                "MigoSMTP could not cancel the batch (409 too_late): it is already sending", 409, "too_late"
            ),
            MalformedResponse("MigoSMTP answered 202 without a batch_id in JSON", 202),
            InvalidPayload("batch 'batch:c1:3' cannot be sent as JSON: ...", code="invalid_payload"),
            InvalidTimeout("connection 'migosmtp_default' has timeout 0", code="invalid_timeout"),
        ],
        ids=["402", "401", "no-password", "400", "409", "too-late", "malformed", "not-json", "bad-timeout"],
    )
    def test_fail_with_the_error_text(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], store: DictStore, error: Exception
    ) -> None:
        decision = policy.evaluate(error, 1, MAX_TRIES, context)
        assert decision == RetryDecision(action=RetryAction.FAIL, retry_delay=None, reason=str(error))
        assert store.data == {}


class TestServerSideFailures:
    def test_default_backoff_is_10_30_120_then_fail(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], store: DictStore, default_delays: None
    ) -> None:
        decisions = [policy.evaluate(server_error(), n, MAX_TRIES, context) for n in (1, 2, 3, 4)]
        assert [d.action for d in decisions] == [RetryAction.RETRY] * 3 + [RetryAction.FAIL]
        assert [d.retry_delay for d in decisions] == [
            timedelta(seconds=10),
            timedelta(seconds=30),
            timedelta(seconds=120),
            None,
        ]
        assert decisions[0].reason.startswith("server-side failure 1/4, retrying: MigoSMTP server error")
        assert decisions[3].reason.startswith("giving up after 4 server-side failures: MigoSMTP server error")
        assert store.data == {TRANSIENT_FAILURES_KEY: 0}  # reset, so a cleared task starts afresh

    def test_timeouts_and_5xx_share_one_budget(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], default_delays: None
    ) -> None:
        errors = [timeout(), server_error(503), timeout(), server_error(500)]
        decisions = [policy.evaluate(e, n, MAX_TRIES, context) for n, e in enumerate(errors, start=1)]
        assert [(d.action, d.retry_delay) for d in decisions] == [
            (RetryAction.RETRY, timedelta(seconds=10)),
            (RetryAction.RETRY, timedelta(seconds=30)),
            (RetryAction.RETRY, timedelta(seconds=120)),
            (RetryAction.FAIL, None),
        ]
        assert "ReadTimeout" in decisions[0].reason

    def test_a_try_past_its_execution_timeout_is_a_timeout_too(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], default_delays: None
    ) -> None:
        errors = [AirflowTaskTimeout(), server_error(503), AirflowTaskTimeout(), timeout()]
        decisions = [policy.evaluate(e, n, MAX_TRIES, context) for n, e in enumerate(errors, start=1)]
        assert [(d.action, d.retry_delay) for d in decisions] == [
            (RetryAction.RETRY, timedelta(seconds=10)),
            (RetryAction.RETRY, timedelta(seconds=30)),
            (RetryAction.RETRY, timedelta(seconds=120)),
            (RetryAction.FAIL, None),
        ]

    def test_interleaved_429s_do_not_change_the_count(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], store: DictStore, default_delays: None
    ) -> None:
        sequence = [
            server_error(),
            rate_limited(5),
            rate_limited(5),
            timeout(),
            rate_limited(5),
            server_error(503),
            rate_limited(5),
            rate_limited(5),
            server_error(),
        ]
        decisions = [policy.evaluate(e, n, MAX_TRIES, context) for n, e in enumerate(sequence, start=1)]
        server_side = [d for e, d in zip(sequence, decisions, strict=True) if not isinstance(e, RateLimited)]
        assert [(d.action, d.retry_delay) for d in server_side] == [
            (RetryAction.RETRY, timedelta(seconds=10)),
            (RetryAction.RETRY, timedelta(seconds=30)),
            (RetryAction.RETRY, timedelta(seconds=120)),
            (RetryAction.FAIL, None),
        ]
        rate_limit_decisions = [
            d for e, d in zip(sequence, decisions, strict=True) if isinstance(e, RateLimited)
        ]
        assert {(d.action, d.retry_delay) for d in rate_limit_decisions} == {
            (RetryAction.RETRY, timedelta(seconds=5))
        }
        assert store.data == {TRANSIENT_FAILURES_KEY: 0}  # reset, so a cleared task starts afresh

    def test_count_continues_from_the_store(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], store: DictStore, default_delays: None
    ) -> None:
        store.set(TRANSIENT_FAILURES_KEY, 2)  # two earlier tries failed server-side
        decision = policy.evaluate(server_error(), 9, MAX_TRIES, context)
        assert (decision.action, decision.retry_delay) == (RetryAction.RETRY, timedelta(seconds=120))
        assert store.data[TRANSIENT_FAILURES_KEY] == 3

    @pytest.mark.parametrize("context", [None, {}, {"ti": object()}], ids=["none", "empty", "no-store"])
    def test_without_a_store_falls_back_to_try_number(
        self, policy: MigoSmtpRetryPolicy, default_delays: None, context: dict[str, Any] | None
    ) -> None:
        decisions = {n: policy.evaluate(server_error(), n, MAX_TRIES, context) for n in (1, 2, 3, 4, 7)}
        assert decisions[1].retry_delay == timedelta(seconds=10)
        assert decisions[2].retry_delay == timedelta(seconds=30)
        assert decisions[3].retry_delay == timedelta(seconds=120)
        assert decisions[4].action is RetryAction.FAIL
        assert decisions[7].action is RetryAction.FAIL
        assert "giving up after 7 server-side failures" in decisions[7].reason


class TestDelaysVariable:
    def test_conftest_session_value_is_used(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any]
    ) -> None:
        # tests/conftest.py sets the Variable to [0.2, 0.2, 0.2] for the whole session.
        decisions = [policy.evaluate(server_error(), n, MAX_TRIES, context) for n in (1, 2, 3, 4)]
        assert [d.retry_delay for d in decisions] == [timedelta(seconds=0.2)] * 3 + [None]
        assert decisions[3].action is RetryAction.FAIL

    def test_override_changes_delays_and_budget(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DELAYS_ENV, "[1, 2]")
        decisions = [policy.evaluate(server_error(), n, MAX_TRIES, context) for n in (1, 2, 3)]
        assert [(d.action, d.retry_delay) for d in decisions] == [
            (RetryAction.RETRY, timedelta(seconds=1)),
            (RetryAction.RETRY, timedelta(seconds=2)),
            (RetryAction.FAIL, None),
        ]
        assert decisions[0].reason.startswith("server-side failure 1/3")
        assert "giving up after 3 server-side failures" in decisions[2].reason

    def test_override_is_read_at_evaluation_time(
        self, policy: MigoSmtpRetryPolicy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DELAYS_ENV, "[1, 2]")
        assert policy.evaluate(server_error(), 1, MAX_TRIES).retry_delay == timedelta(seconds=1)
        monkeypatch.setenv(DELAYS_ENV, "[5]")
        assert policy.evaluate(server_error(), 1, MAX_TRIES).retry_delay == timedelta(seconds=5)
        monkeypatch.delenv(DELAYS_ENV)
        assert policy.evaluate(server_error(), 1, MAX_TRIES).retry_delay == timedelta(seconds=10)

    def test_empty_list_means_no_server_side_retries(
        self, policy: MigoSmtpRetryPolicy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DELAYS_ENV, "[]")
        decision = policy.evaluate(timeout(), 1, MAX_TRIES)
        assert decision.action is RetryAction.FAIL

    @pytest.mark.parametrize(
        "value", ["[-1]", "[1, -0.5]", '["10"]', '{"a": 1}', "5", '"10"', "[null]", "[NaN]"]
    )
    def test_bad_value_raises_value_error_naming_the_variable(
        self, policy: MigoSmtpRetryPolicy, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv(DELAYS_ENV, value)
        with pytest.raises(ValueError, match=DELAYS_VARIABLE):
            policy.evaluate(server_error(), 1, MAX_TRIES)

    @pytest.mark.parametrize("value", ["oops", "[1, 2"])
    def test_unparseable_value_raises_value_error_naming_the_variable(
        self, policy: MigoSmtpRetryPolicy, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv(DELAYS_ENV, value)
        with pytest.raises(ValueError, match=DELAYS_VARIABLE):
            policy.evaluate(server_error(), 1, MAX_TRIES)

    @pytest.mark.parametrize("value", ["[true]", "[Infinity]", "[1e15]"])
    def test_unusable_number_raises_value_error_naming_the_variable(
        self, policy: MigoSmtpRetryPolicy, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv(DELAYS_ENV, value)
        with pytest.raises(ValueError, match=DELAYS_VARIABLE):
            policy.evaluate(server_error(), 1, MAX_TRIES)

    def test_bad_value_is_not_read_for_other_errors(
        self, policy: MigoSmtpRetryPolicy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(DELAYS_ENV, "[-1]")
        assert policy.evaluate(rate_limited(3), 1, MAX_TRIES).retry_delay == timedelta(seconds=3)
        assert policy.evaluate(QuotaExceeded("q", 402), 1, MAX_TRIES).action is RetryAction.FAIL


class TestOtherExceptions:
    @pytest.mark.parametrize("error", [ValueError("x"), KeyError("k"), RuntimeError("r")])
    def test_non_migosmtp_errors_use_the_tasks_default(
        self, policy: MigoSmtpRetryPolicy, context: dict[str, Any], store: DictStore, error: Exception
    ) -> None:
        assert policy.evaluate(error, 1, MAX_TRIES, context) == RetryDecision.default()
        assert policy.evaluate(error, 1, MAX_TRIES, context).action is RetryAction.DEFAULT
        assert store.data == {}


class TestOtherErrorsAreBounded:
    def test_other_errors_get_three_retries_then_fail(self, policy: MigoSmtpRetryPolicy) -> None:
        decisions = [policy.evaluate(RuntimeError("warehouse down"), n, MAX_TRIES) for n in (1, 2, 3, 4)]

        assert [d.action for d in decisions] == [RetryAction.DEFAULT] * 3 + [RetryAction.FAIL]
        assert "warehouse down" in decisions[3].reason
