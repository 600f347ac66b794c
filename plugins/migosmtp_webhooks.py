"""MigoSMTP delivery webhooks, received by the Airflow API server (an Airflow 3 FastAPI plugin app).

Mounted at ``/migosmtp``: point the provider's webhook at
``https://<airflow-api-server>/migosmtp/webhooks/events``. The signing secret
is the password of the ``migosmtp_webhook`` connection. A request is checked
(size, signature, replay window, shape: 413, 401, 400), each event validated on
its own, and the valid ones stored in ``email_events`` keyed by ``(batch_id,
event_id)`` (the first received wins); an event that cannot be stored goes to
``email_events_quarantine`` and the rest of its post is stored all the same.
The answer is ``200 {"stored", "duplicates", "quarantined"}``; nothing else
happens in the request, so the provider gets its answer fast. The ledger is
advanced from the stored events elsewhere.
"""

from __future__ import annotations

import threading
import time

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

WEBHOOK_CONN_ID = "migosmtp_webhook"

app = FastAPI(title="MigoSMTP webhooks", docs_url=None, redoc_url=None)

# The warehouse tables are made (or migrated) on the first signed post this process stores: an
# event may arrive before any campaign or reconcile has run. ensure_schema is safe when several
# processes race; the lock keeps this process's threads from doing it more than once.
_schema_lock = threading.Lock()
_schema_ready = False


def _warehouse():
    global _schema_ready
    from include.warehouse import ensure_schema, get_warehouse_hook

    hook = get_warehouse_hook()
    if not _schema_ready:
        with _schema_lock:
            if not _schema_ready:
                ensure_schema(hook)
                _schema_ready = True
    return hook


def _store_events(body: bytes, timestamp: str | None, signature: str | None) -> dict[str, int]:
    from airflow.sdk import BaseHook

    from include.migosmtp.webhooks import parse, store, verify

    secret = BaseHook.get_connection(WEBHOOK_CONN_ID).password
    if not secret:
        raise RuntimeError(f"connection {WEBHOOK_CONN_ID!r} has no password (the webhook signing secret)")
    verify(secret, timestamp, signature, body, now=time.time())
    post = parse(body)
    stored = store(_warehouse(), post.events, post.quarantined)
    # Quarantined events are acknowledged too: a retry would bring the same bytes and fail the same way.
    return {
        "stored": stored,
        "duplicates": len(post.events) - stored,
        "quarantined": len(post.quarantined),
    }


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` bytes: a chunked body has no
    Content-Length to refuse up front, and must not be held in memory whole first."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


@app.post("/webhooks/events")
async def receive_events(request: Request) -> JSONResponse:
    from include.migosmtp.webhooks import MAX_BODY_BYTES, WebhookRejected

    body = await _read_body(request, MAX_BODY_BYTES)
    if body is None:
        # Connection: close, so the server drops the rest of the body instead of reading it.
        return JSONResponse(
            {"error": f"body exceeds {MAX_BODY_BYTES} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )
    try:
        counts = await run_in_threadpool(
            _store_events,
            body,
            request.headers.get("x-migosmtp-timestamp"),
            request.headers.get("x-migosmtp-signature"),
        )
    except WebhookRejected as rejected:
        return JSONResponse({"error": rejected.reason}, status_code=rejected.status)
    return JSONResponse(counts)


class MigoSmtpWebhooksPlugin(AirflowPlugin):
    name = "migosmtp_webhooks"
    fastapi_apps = [{"app": app, "url_prefix": "/migosmtp", "name": "MigoSMTP delivery webhooks"}]
