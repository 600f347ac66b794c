"""Tests of the MigoSMTP sandbox over real HTTP against its subprocess."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import SandboxError, SandboxProcess

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with SandboxProcess(
        tmp_path_factory.mktemp("sandbox") / "sandbox.db",
        api_key=API_KEY,
        monthly_limit=30000,
    ) as process:
        yield process


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxProcess) -> None:
    sandbox.reset()


def payload(n: int = 2, **overrides: Any) -> dict[str, Any]:
    body = {
        "from": "news@example.com",
        "subject": "Hello {{first_name}}",
        "html": "<p>Hi {{first_name}}, your code is {{code}}</p>",
        "text": "Hi {{first_name}}, your code is {{code}}",
        "recipients": [
            {
                "to": f"user{i}@example.org",
                "variables": {"first_name": f"U{i}", "code": i},
            }
            for i in range(n)
        ],
        "send_at": "2030-05-01T09:00:00Z",
        "tags": ["campaign:spring", "batch-1"],
    }
    body.update(overrides)
    return body


def send(
    sandbox: SandboxProcess,
    body: Any = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> requests.Response:
    all_headers = {
        **AUTH,
        **({"Idempotency-Key": key} if key else {}),
        **(headers or {}),
    }
    return requests.post(
        f"{sandbox.url}/v1/email/send/bulk",
        json=payload() if body is None else body,
        headers=all_headers,
        timeout=timeout,
    )


def get(sandbox: SandboxProcess, path: str, **params: str) -> requests.Response:
    return requests.get(f"{sandbox.url}{path}", params=params, headers=AUTH, timeout=10)


def cancel(
    sandbox: SandboxProcess, batch_id: str, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.post(
        f"{sandbox.url}/v1/email/batches/{batch_id}/cancel",
        headers=AUTH if headers is None else headers,
        timeout=10,
    )


def in_minutes(minutes: float) -> str:
    """A send_at that far from now (the sandbox clock is real time after a reset)."""
    return f"{datetime.now(UTC) + timedelta(minutes=minutes):%Y-%m-%dT%H:%M:%SZ}"


def wait_for_status(
    sandbox: SandboxProcess, batch_id: str, status: str, timeout: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (batch := get(sandbox, f"/v1/email/batches/{batch_id}").json())["status"] != status:
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return batch


def test_send_is_accepted_and_recorded_verbatim(sandbox: SandboxProcess) -> None:
    body = payload(3)
    response = send(sandbox, body, key="k-1")
    assert response.status_code == 202
    data = response.json()
    assert data["batch_id"].startswith("bat_")
    assert data == {
        "batch_id": data["batch_id"],
        "status": "scheduled",
        "send_at": "2030-05-01T09:00:00Z",
        "recipient_count": 3,
    }
    [batch] = sandbox.record()["batches"]
    assert batch["batch_id"] == data["batch_id"]
    assert batch["idempotency_key"] == "k-1"
    assert (batch["from"], batch["subject"], batch["html"], batch["text"]) == (
        body["from"],
        body["subject"],
        body["html"],
        body["text"],
    )
    assert batch["recipients"] == body["recipients"]
    assert batch["tags"] == body["tags"]
    assert batch["counts"] == {
        "delivered": 0,
        "bounced": 0,
        "deferred": 0,
        "complained": 0,
        "unsubscribed": 0,
    }


def test_db_file_has_the_documented_tables(sandbox: SandboxProcess) -> None:
    batch_id = send(sandbox, key="k-db").json()["batch_id"]
    with sqlite3.connect(sandbox.db_path) as conn:
        row = conn.execute(
            "SELECT subject, recipient_count, tags_json, from_email FROM batches WHERE batch_id = ?",
            (batch_id,),
        ).fetchone()
        recipients = conn.execute(
            "SELECT position, email, variables_json FROM batch_recipients ORDER BY position"
        ).fetchall()
        idem = conn.execute("SELECT key, status_code FROM idempotency").fetchall()
        logged = conn.execute(
            "SELECT method, path, status_code, idempotency_key, replayed, fault FROM requests"
        ).fetchall()
    assert row == (
        "Hello {{first_name}}",
        2,
        '["campaign:spring", "batch-1"]',
        "news@example.com",
    )
    assert [r[:2] for r in recipients] == [
        (0, "user0@example.org"),
        (1, "user1@example.org"),
    ]
    assert idem == [("k-db", 202)]
    assert logged == [("POST", "/v1/email/send/bulk", 202, "k-db", 0, None)]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
def test_missing_or_wrong_api_key_is_401(sandbox: SandboxProcess, headers: dict[str, str]) -> None:
    for response in (
        requests.post(
            f"{sandbox.url}/v1/email/send/bulk",
            json=payload(),
            headers=headers,
            timeout=10,
        ),
        requests.get(f"{sandbox.url}/v1/account/quota", headers=headers, timeout=10),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_api_key"
    assert sandbox.record()["batches"] == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"from": "not-an-address"}, "from"),
        ({"subject": ""}, "subject"),
        ({"html": "", "text": ""}, "html"),
        ({"text": 5}, "text"),
        ({"recipients": []}, "recipients"),
        ({"recipients": [{"to": "nobody"}]}, "recipients"),
        ({"recipients": [{"to": "a@b.c", "variables": []}]}, "recipients"),
        ({"send_at": "2030-05-01 09:00:00"}, "send_at"),
        ({"send_at": "2030-02-30T09:00:00Z"}, "send_at"),
        ({"send_at": "2030-05-01T09:00:00+00:00"}, "send_at"),
        ({"tags": "spring"}, "tags"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    sandbox: SandboxProcess, overrides: dict[str, Any], field: str
) -> None:
    response = send(sandbox, payload(**overrides))
    assert response.status_code == 400
    data = response.json()
    assert (data["error"], data["field"]) == ("invalid_request", field)
    assert field.split("[")[0] in data["message"] or field == "html"
    assert sandbox.record()["batches"] == []


def test_non_json_body_and_long_key_are_400(sandbox: SandboxProcess) -> None:
    response = requests.post(
        f"{sandbox.url}/v1/email/send/bulk",
        data=b"{nope",
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert (response.status_code, response.json()["field"]) == (400, "body")
    response = send(sandbox, key="k" * 256)
    assert (response.status_code, response.json()["field"]) == (400, "idempotency_key")


def test_more_than_1000_recipients_is_too_many(sandbox: SandboxProcess) -> None:
    assert send(sandbox, payload(1000)).status_code == 202
    response = send(sandbox, payload(1001))
    assert response.status_code == 400
    assert response.json()["error"] == "too_many_recipients"


def test_idempotent_replay_returns_first_response_without_new_batch(
    sandbox: SandboxProcess,
) -> None:
    first = send(sandbox, key="same")
    second = send(sandbox, key="same")
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(sandbox.record()["batches"]) == 1
    assert [r["replayed"] for r in sandbox.requests()] == [False, True]


def test_same_key_with_different_body_is_409(sandbox: SandboxProcess) -> None:
    assert send(sandbox, key="same").status_code == 202
    response = send(sandbox, payload(subject="Other"), key="same")
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_conflict"
    assert len(sandbox.record()["batches"]) == 1


def test_concurrent_requests_with_one_key_create_one_batch(
    sandbox: SandboxProcess,
) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: send(sandbox, key="race"), range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["batch_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    assert len(sandbox.record()["batches"]) == 1


def test_error_responses_are_not_stored_for_idempotency(
    sandbox: SandboxProcess,
) -> None:
    sandbox.set_faults([{"action": "status", "status": 500}])
    failed = send(sandbox, key="retry-me")
    assert (failed.status_code, failed.json()["error"]) == (500, "internal_error")
    retried = send(sandbox, key="retry-me")
    assert retried.status_code == 202
    assert "Idempotent-Replayed" not in retried.headers
    assert len(sandbox.record()["batches"]) == 1


def test_monthly_quota_is_enforced_and_reported(sandbox: SandboxProcess) -> None:
    sandbox.update_settings(monthly_limit=5, monthly_used=1)
    assert send(sandbox, payload(3)).status_code == 202
    response = send(sandbox, payload(2))
    assert response.status_code == 402
    assert response.json()["error"] == "quota_exceeded"
    assert send(sandbox, payload(1)).status_code == 202
    quota = get(sandbox, "/v1/account/quota").json()
    assert quota == {
        "monthly_limit": 5,
        "monthly_used": 5,
        "hourly_limit": 150,
        "daily_limit": 1500,
    }


def test_rate_limit_answers_429_with_retry_after(sandbox: SandboxProcess) -> None:
    sandbox.update_settings(requests_per_minute=3)
    remaining = [send(sandbox).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    response = send(sandbox)
    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert 1 <= int(response.headers["X-RateLimit-Reset"]) <= 60
    # Lookups are not rate limited but still carry the headers.
    lookup = get(sandbox, "/v1/email/batches")
    assert lookup.status_code == 200
    assert lookup.headers["X-RateLimit-Remaining"] == "0"
    assert len(sandbox.record()["batches"]) == 3


def test_every_response_carries_rate_limit_headers(sandbox: SandboxProcess) -> None:
    for response in (
        send(sandbox, {"bad": 1}),
        get(sandbox, "/v1/nope"),
        requests.get(f"{sandbox.url}/v1/account/quota", timeout=10),
    ):
        assert {
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        } <= set(response.headers)


def test_unknown_path_is_404_and_wrong_method_is_405(sandbox: SandboxProcess) -> None:
    assert get(sandbox, "/v1/nope").json()["error"] == "not_found"
    response = requests.get(f"{sandbox.url}/v1/email/send/bulk", headers=AUTH, timeout=10)
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert response.json()["error"] == "method_not_allowed"


def test_lookups_by_key_tag_status_and_id(sandbox: SandboxProcess) -> None:
    a = send(sandbox, payload(tags=["spring"]), key="key-a").json()["batch_id"]
    b = send(sandbox, payload(tags=["spring", "vip"]), key="key-b").json()["batch_id"]
    c = send(sandbox, payload(tags=[])).json()["batch_id"]

    def ids(**params: str) -> list[str]:
        response = get(sandbox, "/v1/email/batches", **params)
        assert response.status_code == 200
        return [batch["batch_id"] for batch in response.json()["batches"]]

    assert ids(idempotency_key="key-b") == [b]
    assert ids(idempotency_key="unknown") == []
    assert ids(tag="spring") == [a, b]
    assert ids(tag="vip", status="scheduled") == [b]
    assert ids(tag="spring", status="delivered") == []
    assert ids() == [a, b, c]
    batch = get(sandbox, f"/v1/email/batches/{a}").json()
    assert batch == {
        "batch_id": a,
        "status": "scheduled",
        "send_at": "2030-05-01T09:00:00Z",
        "recipient_count": 2,
        "tags": ["spring"],
        "idempotency_key": "key-a",
        "counts": {"delivered": 0, "bounced": 0, "deferred": 0, "complained": 0, "unsubscribed": 0},
    }
    missing = get(sandbox, "/v1/email/batches/bat_missing")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


def test_a_batch_far_ahead_is_cancelled_and_a_second_cancel_answers_the_same(sandbox: SandboxProcess) -> None:
    kept = send(sandbox, payload(1), key="kept").json()["batch_id"]
    batch_id = send(sandbox, payload(3), key="cancel-me").json()["batch_id"]
    scheduled = get(sandbox, f"/v1/email/batches/{batch_id}").json()
    assert get(sandbox, "/v1/account/quota").json()["monthly_used"] == 4

    first, again = cancel(sandbox, batch_id), cancel(sandbox, batch_id)

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json() == again.json() == {**scheduled, "status": "cancelled"}
    assert get(sandbox, f"/v1/email/batches/{batch_id}").json() == first.json()
    # Its recipients are back in the quota, once; the other batch still counts.
    assert get(sandbox, "/v1/account/quota").json()["monthly_used"] == 1
    statuses = {b["batch_id"]: b["status"] for b in sandbox.record()["batches"]}
    assert statuses == {kept: "scheduled", batch_id: "cancelled"}
    cancelled = get(sandbox, "/v1/email/batches", status="cancelled").json()["batches"]
    assert [b["batch_id"] for b in cancelled] == [batch_id]


@pytest.mark.parametrize(("minutes", "status"), [(9, 409), (11, 200)])
def test_cancel_less_than_10_minutes_ahead_is_too_late(
    sandbox: SandboxProcess, minutes: int, status: int
) -> None:
    batch_id = send(sandbox, payload(2, send_at=in_minutes(minutes))).json()["batch_id"]

    response = cancel(sandbox, batch_id)

    assert response.status_code == status
    if status == 409:
        assert response.json()["error"] == "too_late"
        assert "less than 10 minutes away" in response.json()["message"]
        assert get(sandbox, "/v1/account/quota").json()["monthly_used"] == 2


def test_a_batch_too_late_to_cancel_still_goes_out(sandbox: SandboxProcess) -> None:
    batch_id = send(sandbox, payload(2, send_at=in_minutes(5))).json()["batch_id"]
    assert cancel(sandbox, batch_id).status_code == 409

    sandbox.advance(600)

    assert wait_for_status(sandbox, batch_id, "delivered")["counts"]["delivered"] == 2
    assert len([e for e in sandbox.events() if e["batch_id"] == batch_id]) == 2


@pytest.mark.parametrize(("defer_rate", "status"), [(1.0, "sending"), (0.0, "delivered")])
def test_cancelling_a_sending_or_delivered_batch_is_too_late(
    sandbox: SandboxProcess, defer_rate: float, status: str
) -> None:
    # Deferrals keep a batch sending until their follow-ups, 900 s later on the sandbox clock.
    sandbox.update_settings(defer_rate=defer_rate)
    batch_id = send(sandbox, payload(2, send_at=in_minutes(-1))).json()["batch_id"]
    wait_for_status(sandbox, batch_id, status)

    response = cancel(sandbox, batch_id)

    assert (response.status_code, response.json()["error"]) == (409, "too_late")
    assert f"already {status}" in response.json()["message"]
    assert get(sandbox, f"/v1/email/batches/{batch_id}").json()["status"] == status
    assert get(sandbox, "/v1/account/quota").json()["monthly_used"] == 2


def test_cancelling_an_unknown_batch_is_the_lookups_404(sandbox: SandboxProcess) -> None:
    response = cancel(sandbox, "bat_missing")
    lookup = get(sandbox, "/v1/email/batches/bat_missing")
    assert (response.status_code, response.json()) == (404, lookup.json())
    assert lookup.status_code == 404


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_cancel_with_bad_auth_is_401_and_cancels_nothing(
    sandbox: SandboxProcess, headers: dict[str, str]
) -> None:
    batch_id = send(sandbox).json()["batch_id"]

    response = cancel(sandbox, batch_id, headers)

    assert (response.status_code, response.json()["error"]) == (401, "invalid_api_key")
    assert get(sandbox, f"/v1/email/batches/{batch_id}").json()["status"] == "scheduled"


def test_cancel_is_post_only_and_has_faults_of_its_own(sandbox: SandboxProcess) -> None:
    batch_id = send(sandbox).json()["batch_id"]
    wrong = requests.get(f"{sandbox.url}/v1/email/batches/{batch_id}/cancel", headers=AUTH, timeout=10)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")
    sandbox.set_faults([{"endpoint": "cancel", "action": "status", "status": 503}])
    assert send(sandbox).status_code == 202 and get(sandbox, "/v1/email/batches").status_code == 200
    assert cancel(sandbox, batch_id).status_code == 503
    assert cancel(sandbox, batch_id).status_code == 200


def test_the_quota_a_cancel_gave_back_survives_a_restart(tmp_path: Path) -> None:
    with SandboxProcess(tmp_path / "cancel.db", api_key=API_KEY) as process:
        send(process, payload(1))
        assert cancel(process, send(process, payload(4)).json()["batch_id"]).status_code == 200
    with process:
        assert get(process, "/v1/account/quota").json()["monthly_used"] == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, "internal_error"),
        (503, "internal_error"),
        (429, "rate_limited"),
        (402, "quota_exceeded"),
        (401, "invalid_api_key"),
        (400, "invalid_request"),
    ],
)
def test_status_fault_answers_with_default_error(sandbox: SandboxProcess, status: int, error: str) -> None:
    sandbox.set_faults([{"action": "status", "status": status}])
    response = send(sandbox, key="k")
    assert (response.status_code, response.json()["error"]) == (status, error)
    if status == 429:
        assert response.headers["Retry-After"] == "1"
    assert sandbox.record()["batches"] == []
    assert sandbox.requests()[-1]["fault"] == "status"


def test_status_fault_with_http_date_retry_after(sandbox: SandboxProcess) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    sandbox.set_faults(
        [
            {
                "action": "status",
                "status": 429,
                "retry_after": date,
                "message": "slow down",
            }
        ]
    )
    response = send(sandbox)
    assert response.headers["Retry-After"] == date
    assert response.json() == {"error": "rate_limited", "message": "slow down"}


def test_faults_are_consumed_in_order_per_endpoint(sandbox: SandboxProcess) -> None:
    sandbox.set_faults(
        [
            {"endpoint": "lookup", "action": "status", "status": 500},
            {"action": "status", "status": 503, "times": 2},
            {"endpoint": "any", "action": "status", "status": 502},
        ]
    )
    assert send(sandbox).status_code == 503
    assert get(sandbox, "/v1/account/quota").status_code == 502
    assert get(sandbox, "/v1/email/batches").status_code == 500
    assert [f["times"] for f in sandbox.faults()] == [1]
    assert send(sandbox).status_code == 503
    assert sandbox.faults() == []
    assert send(sandbox).status_code == 202


def test_invalid_fault_is_rejected(sandbox: SandboxProcess) -> None:
    with pytest.raises(SandboxError, match="action"):
        sandbox.set_faults([{"action": "explode"}])


def test_drop_after_accept_stores_batch_but_sends_nothing(
    sandbox: SandboxProcess,
) -> None:
    sandbox.set_faults([{"action": "drop_after_accept"}])
    with pytest.raises(requests.ConnectionError):
        send(sandbox, key="lost-response")
    [batch] = sandbox.record()["batches"]
    found = get(sandbox, "/v1/email/batches", idempotency_key="lost-response").json()["batches"]
    assert [b["batch_id"] for b in found] == [batch["batch_id"]]
    retry = send(sandbox, key="lost-response")
    assert retry.json()["batch_id"] == batch["batch_id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    dropped = sandbox.requests()[0]
    assert (dropped["status_code"], dropped["fault"]) == (202, "drop_after_accept")


def test_drop_closes_connection_without_storing(sandbox: SandboxProcess) -> None:
    sandbox.set_faults([{"action": "drop"}])
    with pytest.raises(requests.ConnectionError):
        send(sandbox, key="dropped")
    assert sandbox.record()["batches"] == []
    assert [(r["status_code"], r["fault"]) for r in sandbox.requests()] == [(None, "drop")]
    assert send(sandbox, key="dropped").status_code == 202


def test_latency_fault_times_out_client_but_request_completes(
    sandbox: SandboxProcess,
) -> None:
    sandbox.set_faults([{"action": "latency", "seconds": 1.5}])
    with pytest.raises(requests.Timeout):
        send(sandbox, key="slow", timeout=0.3)
    deadline = time.monotonic() + 5
    while not sandbox.record()["batches"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(sandbox.record()["batches"]) == 1


def test_latency_fault_delays_the_answer(sandbox: SandboxProcess) -> None:
    sandbox.set_faults([{"endpoint": "lookup", "action": "latency", "seconds": 0.5}])
    started = time.monotonic()
    assert get(sandbox, "/v1/email/batches").status_code == 200
    assert time.monotonic() - started >= 0.5


@pytest.mark.parametrize(("accept", "stored"), [(False, 0), (True, 1)])
def test_malformed_fault_answers_202_with_broken_json(
    sandbox: SandboxProcess, accept: bool, stored: int
) -> None:
    sandbox.set_faults([{"action": "malformed", "accept": accept}])
    response = send(sandbox)
    assert response.status_code == 202
    assert response.headers["Content-Type"] == "application/json"
    assert response.text == "not json {"
    with pytest.raises(ValueError):
        response.json()
    assert len(sandbox.record()["batches"]) == stored


def test_trickle_fault_sends_the_whole_answer_slowly_and_stores_the_batch(sandbox: SandboxProcess) -> None:
    sandbox.set_faults([{"action": "trickle", "seconds": 1.5}])
    started = time.monotonic()
    # A 0.5 s read timeout never trips: a few bytes arrive every quarter second, status line first.
    response = send(sandbox, key="trickled", timeout=0.5)
    assert time.monotonic() - started >= 1.4
    assert response.status_code == 202 and response.json()["batch_id"]
    assert len(sandbox.record()["batches"]) == 1
    assert [(r["status_code"], r["fault"]) for r in sandbox.requests()] == [(202, "trickle")]


def test_malformed_fault_answers_its_body(sandbox: SandboxProcess) -> None:
    sandbox.set_faults([{"action": "malformed", "endpoint": "quota", "body": "echo test-key"}])
    response = get(sandbox, "/v1/account/quota")
    assert (response.status_code, response.text) == (202, "echo test-key")
    with pytest.raises(SandboxError, match="body must be a string"):
        sandbox.set_faults([{"action": "malformed", "body": 5}])


def test_request_log_excludes_admin_calls(sandbox: SandboxProcess) -> None:
    send(sandbox, key="logged")
    get(sandbox, "/v1/account/quota")
    sandbox.record()
    log = sandbox.requests()
    assert [(r["method"], r["path"], r["status_code"], r["idempotency_key"]) for r in log] == [
        ("POST", "/v1/email/send/bulk", 202, "logged"),
        ("GET", "/v1/account/quota", 200, None),
    ]
    assert sandbox.record()["requests_total"] == 2


def test_reset_restores_command_line_settings_and_clears_state(
    sandbox: SandboxProcess,
) -> None:
    sandbox.update_settings(api_key="other", monthly_limit=7, requests_per_minute=1, hourly_limit=3)
    sandbox.set_faults([{"action": "drop", "times": 5}])
    sandbox.reset()
    assert sandbox.faults() == []
    assert get(sandbox, "/v1/account/quota").json() == {
        "monthly_limit": 30000,
        "monthly_used": 0,
        "hourly_limit": 150,
        "daily_limit": 1500,
    }
    assert send(sandbox).status_code == 202
    assert send(sandbox).status_code == 202
    assert len(sandbox.requests()) == 3


def test_settings_api_key_change_takes_effect(sandbox: SandboxProcess) -> None:
    settings = sandbox.update_settings(api_key="rotated")
    assert settings["api_key"] == "rotated"
    assert send(sandbox).status_code == 401
    assert send(sandbox, headers={"Authorization": "Bearer rotated"}).status_code == 202
    with pytest.raises(SandboxError, match="monthly_limit"):
        sandbox.update_settings(monthly_limit=-1)


def test_record_survives_a_restart(tmp_path: Path) -> None:
    process = SandboxProcess(tmp_path / "restart.db", api_key=API_KEY, monthly_limit=100)
    with process:
        batch_id = send(process, payload(4), key="durable").json()["batch_id"]
    with process:
        [batch] = process.record()["batches"]
        assert batch["batch_id"] == batch_id
        replay = send(process, payload(4), key="durable")
        assert replay.json()["batch_id"] == batch_id
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert get(process, "/v1/account/quota").json()["monthly_used"] == 4
    assert "listening" in process.log_path.read_text()


def test_harness_reports_a_process_that_exits_before_listening(tmp_path: Path) -> None:
    process = SandboxProcess(tmp_path / "bad.db", requests_per_minute="many")  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="exited with code 2"):
        process.start()
    with pytest.raises(SandboxError, match="not running"):
        _ = process.url


def test_reset_waits_for_a_request_still_in_flight(sandbox: SandboxProcess) -> None:
    sandbox.set_faults([{"action": "latency", "seconds": 1.5}])
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(send, sandbox, key="slow")
        deadline = time.monotonic() + 30
        while sandbox.health()["in_flight"] == 0:  # until the request is sleeping inside the server
            assert time.monotonic() < deadline, "the slow request never reached the sandbox"
            time.sleep(0.01)
        started = time.monotonic()
        sandbox.reset()
        waited = time.monotonic() - started
        assert slow.result().status_code == 202
    assert waited >= 1.0
    assert sandbox.record()["batches"] == []  # it landed before the reset, not into the fresh state
