"""The webhook receiver app (plugins/migosmtp_webhooks.py) over ASGI: status codes and what is stored.

The same app in the real API server process is the deployment tier's job.
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
from fastapi.testclient import TestClient

from include.migosmtp.webhooks import sign
from include.warehouse import ensure_schema
from tests.conftest import REPO_ROOT

SECRET = "whsec_receiver"


@pytest.fixture
def client(warehouse, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MIGOSMTP_WEBHOOK", json.dumps({"conn_type": "generic", "password": SECRET})
    )
    ensure_schema(warehouse)
    spec = importlib.util.spec_from_file_location(
        "migosmtp_webhooks", REPO_ROOT / "plugins" / "migosmtp_webhooks.py"
    )
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return TestClient(plugin.app)


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
        assert post(client, [EVENT]).json() == {"received": 1}
        assert post(client, [EVENT, {**EVENT, "event_id": "ev_2", "type": "bounced"}]).status_code == 200

        assert stored(warehouse) == [("ev_1", "delivered"), ("ev_2", "bounced")]

    @pytest.mark.parametrize(
        "kwargs, status",
        [
            ({"secret": "forged"}, 401),
            ({"timestamp": str(int(time.time()) - 3600)}, 401),
            ({"body": b"{not json"}, 400),
            ({"body": json.dumps({"events": [{"event_id": "x"}]}).encode()}, 400),
        ],
        ids=["forged signature", "stale timestamp", "malformed JSON", "incomplete event"],
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

    def test_events_for_batches_we_do_not_know_are_acknowledged_and_kept(self, client, warehouse):
        # 200, so the provider stops retrying; the reconcile ignores batches that are not in a ledger.
        response = post(client, [{**EVENT, "event_id": "ev_x", "batch_id": "bat_not_ours"}])

        assert response.status_code == 200
        assert stored(warehouse) == [("ev_x", "delivered")]
