"""The halt notifier: which failures alert (the batch that raised the run's halt; the first batch
of a run to give up on server errors), and its chat alerts over real loopback HTTP.

A chat webhook's URL path is its token (Slack's ``/services/T.../B.../<secret>``), so an alert
that cannot be delivered names the ``campaign_alerts`` connection, never the URL.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from include.campaign import halts
from include.campaign.alerts import ALERTS_CONN_ID, CampaignHaltNotifier
from include.migosmtp.client import QuotaExceeded, RequestRejected, ServerError
from include.warehouse import ensure_schema
from tests.conftest import ChatWebhook
from tests.helpers import MINIMAL_PARAMS

TOKEN = "tok3n-s3cr3t-0123456789"
PARAMS = MINIMAL_PARAMS
OVER_QUOTA = "MigoSMTP quota exceeded (402 quota_exceeded): over."


def batch_context(error: BaseException, batch_number: int = 3, run_id: str = "run-1") -> dict:
    """What Airflow gives a mapped send_batch's failure callback, as far as the notifier reads it."""
    return {
        "exception": error,
        "params": PARAMS,
        "dag_run": SimpleNamespace(dag_id="bulk_email_campaign", run_id=run_id, logical_date=None),
        "task": SimpleNamespace(batch={"batch_number": batch_number}),
    }


@pytest.fixture
def halted(warehouse):
    """Run run-1 of campaign c1 halted by batch 3's 402; returns that batch's failure context."""
    ensure_schema(warehouse)
    halts.halt(warehouse, "c1", "run-1", 3, OVER_QUOTA)
    return batch_context(QuotaExceeded(OVER_QUOTA, 402, "quota_exceeded"))


def point_alerts_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    conn = {"conn_type": "http", "host": url}
    monkeypatch.setenv(f"AIRFLOW_CONN_{ALERTS_CONN_ID.upper()}", json.dumps(conn))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotFoundWebhook:
    """A loopback chat service that answers 404 quoting the path it was sent (as some do)."""

    def __enter__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                body = f"no webhook at {self.path}".encode()
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/T000/B000/{TOKEN}"
        return self

    def __exit__(self, *exc):
        self._server.shutdown()


class TestChatAlert:
    def test_a_halt_is_posted_to_the_chat_webhook(self, monkeypatch, halted) -> None:
        with ChatWebhook() as chat:
            point_alerts_at(monkeypatch, chat.url)

            CampaignHaltNotifier()(halted)

        [posted] = chat.received
        assert "campaign 'c1' halted in run run-1 by batch 3" in posted["text"]

    @pytest.mark.parametrize("answer", ["unreachable", "404"])
    def test_an_alert_not_delivered_names_the_connection_not_its_url(
        self, monkeypatch, caplog, capfd, answer, halted
    ) -> None:
        # Once a request is answered, urllib3 logs its request line, path and so token included, at
        # DEBUG: task logs stay at INFO (Airflow's default). An unreachable URL leaks at no level.
        caplog.set_level(logging.DEBUG if answer == "unreachable" else logging.INFO)
        with NotFoundWebhook() as not_found:
            unreachable = f"http://127.0.0.1:{closed_port()}/hooks/T000/B000/{TOKEN}"
            point_alerts_at(monkeypatch, unreachable if answer == "unreachable" else not_found.url)

            with pytest.raises(RuntimeError) as excinfo:
                CampaignHaltNotifier()(halted)

        message = str(excinfo.value)
        assert f"not delivered to connection {ALERTS_CONN_ID!r}" in message
        assert ("ConnectionError" if answer == "unreachable" else "HTTP 404") in message
        assert excinfo.value.__cause__ is None and excinfo.value.__context__ is None
        out, err = capfd.readouterr()
        for text in (message, repr(excinfo.value), caplog.text, out, err):
            assert TOKEN not in text
        assert "halted in run run-1" in caplog.text + out  # the alert itself is still in the log


class TestWhichFailuresAlert:
    def test_only_the_batch_that_raised_the_halt_alerts(self, monkeypatch, halted) -> None:
        with ChatWebhook() as chat:
            point_alerts_at(monkeypatch, chat.url)

            # Batch 5 also got a 402, but batch 3's halt was recorded first.
            CampaignHaltNotifier()(batch_context(QuotaExceeded(OVER_QUOTA, 402, "quota_exceeded"), 5))
            CampaignHaltNotifier()(halted)

        [posted] = chat.received
        assert "by batch 3" in posted["text"]

    def test_a_halting_error_with_no_halt_recorded_is_not_an_alert(self, monkeypatch, warehouse) -> None:
        ensure_schema(warehouse)
        with ChatWebhook() as chat:
            point_alerts_at(monkeypatch, chat.url)
            CampaignHaltNotifier()(batch_context(QuotaExceeded(OVER_QUOTA, 402, "quota_exceeded")))
        assert chat.received == []

    def test_giving_up_on_server_errors_alerts_once_per_run(self, monkeypatch, warehouse) -> None:
        ensure_schema(warehouse)
        with ChatWebhook() as chat:
            point_alerts_at(monkeypatch, chat.url)
            for batch_number in (1, 2):
                CampaignHaltNotifier()(batch_context(ServerError("MigoSMTP 503", 503), batch_number))
            CampaignHaltNotifier()(batch_context(ServerError("MigoSMTP 503", 503), 1, run_id="run-2"))

        assert [p["text"].split(" gave up")[0] for p in chat.received] == [
            "MigoSMTP campaign 'c1': batch 1",
            "MigoSMTP campaign 'c1': batch 1",
        ]
        assert "run run-1" in chat.received[0]["text"] and "run run-2" in chat.received[1]["text"]

    @pytest.mark.parametrize(
        "error", [RequestRejected("MigoSMTP 422: bad from", 422), RuntimeError("warehouse down"), None]
    )
    def test_other_failures_are_not_alerts(self, monkeypatch, warehouse, error) -> None:
        ensure_schema(warehouse)
        with ChatWebhook() as chat:
            point_alerts_at(monkeypatch, chat.url)
            CampaignHaltNotifier()(batch_context(error))
        assert chat.received == []
