"""The webhook receiver plugin served on loopback, as the Airflow API server serves it (development only).

The demo and the tests load ``plugins/migosmtp_webhooks.py`` from its file, as Airflow's plugin
manager does, and serve its FastAPI app with uvicorn in a thread.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "migosmtp_webhooks.py"


def webhook_app() -> Any:
    """A fresh copy of the plugin's app (its once-per-process schema flag unset)."""
    spec = importlib.util.spec_from_file_location("migosmtp_webhooks", PLUGIN)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return plugin.app


@contextmanager
def webhook_receiver(timeout: float = 30) -> Iterator[str]:
    """Serve the app on a free loopback port; yields the events URL, stops on exit."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(webhook_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the webhook receiver did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/webhooks/events"
    finally:
        server.should_exit = True
        thread.join(10)
