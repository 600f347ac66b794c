"""The halt notifier's chat alerts over real loopback HTTP: delivered, or failing without the URL.

A chat webhook's URL path is its token (Slack's ``/services/T.../B.../<secret>``), so an alert
that cannot be delivered names the ``campaign_alerts`` connection, never the URL.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from include.campaign.alerts import ALERTS_CONN_ID, CampaignHaltNotifier
from include.migosmtp.client import QuotaExceeded
from tests.conftest import ChatWebhook

TOKEN = "tok3n-s3cr3t-0123456789"


def halted_context() -> dict:
    error = QuotaExceeded("MigoSMTP quota exceeded (402 quota_exceeded): over.", 402, "quota_exceeded")
    error.halted_campaign = ("c1", "run-1", 3)
    return {"exception": error}


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
    def test_a_halt_is_posted_to_the_chat_webhook(self, monkeypatch) -> None:
        with ChatWebhook() as chat:
            point_alerts_at(monkeypatch, chat.url)

            CampaignHaltNotifier()(halted_context())

        [posted] = chat.received
        assert "campaign 'c1' halted in run run-1 by batch 3" in posted["text"]

    @pytest.mark.parametrize("answer", ["unreachable", "404"])
    def test_an_alert_not_delivered_names_the_connection_not_its_url(
        self, monkeypatch, caplog, capfd, answer
    ) -> None:
        # Once a request is answered, urllib3 logs its request line, path and so token included, at
        # DEBUG: task logs stay at INFO (Airflow's default). An unreachable URL leaks at no level.
        caplog.set_level(logging.DEBUG if answer == "unreachable" else logging.INFO)
        with NotFoundWebhook() as not_found:
            unreachable = f"http://127.0.0.1:{closed_port()}/hooks/T000/B000/{TOKEN}"
            point_alerts_at(monkeypatch, unreachable if answer == "unreachable" else not_found.url)

            with pytest.raises(RuntimeError) as excinfo:
                CampaignHaltNotifier()(halted_context())

        message = str(excinfo.value)
        assert f"not delivered to connection {ALERTS_CONN_ID!r}" in message
        assert ("ConnectionError" if answer == "unreachable" else "HTTP 404") in message
        assert excinfo.value.__cause__ is None and excinfo.value.__context__ is None
        out, err = capfd.readouterr()
        for text in (message, repr(excinfo.value), caplog.text, out, err):
            assert TOKEN not in text
        assert "halted in run run-1" in caplog.text + out  # the alert itself is still in the log
