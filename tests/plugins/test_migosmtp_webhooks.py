"""The webhook receiver app (plugins/migosmtp_webhooks.py) over ASGI: status codes and what is stored.

The same app in the real API server process is the deployment tier's job.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from demo.receiver import webhook_app
from include.migosmtp.webhooks import sign
from include.warehouse import ensure_schema

SECRET = "whsec_receiver"


@pytest.fixture
def client(warehouse, monkeypatch):
    ensure_schema(warehouse)
    return receiver(monkeypatch)


@pytest.fixture
def fresh_client(warehouse, monkeypatch):
    """The receiver on a warehouse no campaign or reconcile has touched: no tables at all."""
    return receiver(monkeypatch)


def receiver(monkeypatch) -> TestClient:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MIGOSMTP_WEBHOOK", json.dumps({"conn_type": "generic", "password": SECRET})
    )
    return TestClient(webhook_app())


def post(client, events, secret=SECRET, timestamp=None, body=None):
    body = body if body is not None else json.dumps({"events": events}).encode()
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    headers = {"X-MigoSMTP-Timestamp": timestamp, "X-MigoSMTP-Signature": sign(secret, timestamp, body)}
    return client.post("/webhooks/events", content=body, headers=headers)


def stored(warehouse):
    return [
        tuple(r) for r in warehouse.get_records("SELECT event_id, type FROM email_events ORDER BY event_id")
    ]


EVENT = {
    "event_id": "ev_1",
    "type": "delivered",
    "batch_id": "bat_1",
    "recipient": "a@example.com",
    "tags": ["campaign:c1"],
    "timestamp": 1,
}


class TestReceiver:
    def test_signed_events_are_stored_once_however_often_they_come(self, client, warehouse):
        assert post(client, [EVENT]).json() == {"stored": 1, "duplicates": 0, "quarantined": 0}
        again = post(client, [EVENT, {**EVENT, "event_id": "ev_2", "type": "bounced"}])

        assert again.json() == {"stored": 1, "duplicates": 1, "quarantined": 0}

        assert stored(warehouse) == [("ev_1", "delivered"), ("ev_2", "bounced")]

    @pytest.mark.parametrize(
        "kwargs, status",
        [
            ({"secret": "forged"}, 401),
            ({"timestamp": str(int(time.time()) - 3600)}, 401),
            ({"body": b"{not json"}, 400),
            ({"body": json.dumps({"event": [EVENT]}).encode()}, 400),
        ],
        ids=["forged signature", "stale timestamp", "malformed JSON", "not an events list"],
    )
    def test_bad_requests_are_refused_and_store_nothing(self, client, warehouse, kwargs, status):
        response = post(client, [EVENT], **kwargs)

        assert response.status_code == status and response.json()["error"]
        assert stored(warehouse) == []

    def test_an_oversized_body_is_refused_before_it_is_read(self, client, warehouse):
        response = client.post(
            "/webhooks/events", content=b"x" * 1_000_001, headers={"X-MigoSMTP-Timestamp": "1"}
        )

        assert response.status_code == 413
        assert stored(warehouse) == []

    def test_a_chunked_body_is_cut_off_at_the_limit(self, client, warehouse):
        # TestClient buffers the body, so that memory stays bounded is the deployment tier's to show.
        def chunks():  # no Content-Length: the size is only known by reading
            for _ in range(20):
                yield b"x" * 100_000

        response = client.post("/webhooks/events", content=chunks(), headers={"X-MigoSMTP-Timestamp": "1"})

        assert response.status_code == 413
        assert response.json() == {"error": "body exceeds 1000000 bytes"}
        assert stored(warehouse) == []

    def test_events_of_a_type_we_do_not_know_are_stored_with_the_rest(self, client, warehouse):
        events = [{**EVENT, "event_id": "ev_o", "type": "opened"}, {**EVENT, "type": "unsubscribed"}]

        response = post(client, events)

        assert response.status_code == 200 and response.json()["stored"] == 2
        assert stored(warehouse) == [("ev_1", "unsubscribed"), ("ev_o", "opened")]

    def test_the_first_post_to_a_fresh_warehouse_creates_the_tables_and_is_stored(
        self, fresh_client, warehouse
    ):
        bounce = {**EVENT, "type": "bounced", "bounce_type": "hard"}

        response = post(fresh_client, [bounce])

        assert response.status_code == 200, response.text
        rows = warehouse.get_records("SELECT event_id, type, bounce_type FROM email_events")
        assert [tuple(r) for r in rows] == [("ev_1", "bounced", "hard")]

    def test_concurrent_first_posts_to_a_fresh_warehouse_are_all_stored(self, fresh_client, warehouse):
        from concurrent.futures import ThreadPoolExecutor

        def send(i):
            return post(fresh_client, [{**EVENT, "event_id": f"ev_{i}"}]).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(send, range(16))) == [200] * 16
        assert len(stored(warehouse)) == 16

    def test_a_redelivered_event_changes_nothing_not_even_when_it_was_received(self, client, warehouse):
        from include.warehouse import utc_now_text

        post(client, [EVENT])
        before = [tuple(r) for r in warehouse.get_records("SELECT * FROM email_events")]
        first_second = utc_now_text()
        deadline = time.monotonic() + 5
        while utc_now_text() == first_second and time.monotonic() < deadline:  # so received_at would differ
            time.sleep(0.05)

        assert post(client, [{**EVENT, "type": "bounced"}]).status_code == 200

        assert [tuple(r) for r in warehouse.get_records("SELECT * FROM email_events")] == before

    def test_events_for_batches_we_do_not_know_are_acknowledged_and_kept(self, client, warehouse):
        # 200, so the provider stops retrying; the reconcile ignores batches that are not in a ledger.
        response = post(client, [{**EVENT, "event_id": "ev_x", "batch_id": "bat_not_ours"}])

        assert response.status_code == 200
        assert stored(warehouse) == [("ev_x", "delivered")]
