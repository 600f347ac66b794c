"""MigoSMTP delivery webhooks, received by the Airflow API server (an Airflow 3 FastAPI plugin app).

Mounted at ``/migosmtp``: point the provider's webhook at
``https://<airflow-api-server>/migosmtp/webhooks/events``. The signing secret
is the password of the ``migosmtp_webhook`` connection. A request is checked
(size, signature, replay window, shape) and its events stored by event_id in
``email_events``; nothing else happens in the request, so the provider gets
its answer fast. The ledger is advanced from the stored events elsewhere.
"""

from __future__ import annotations

import time

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

WEBHOOK_CONN_ID = "migosmtp_webhook"

app = FastAPI(title="MigoSMTP webhooks", docs_url=None, redoc_url=None)


def _store_events(body: bytes, timestamp: str | None, signature: str | None) -> int:
    from airflow.sdk import BaseHook

    from include.migosmtp.webhooks import parse, store, verify
    from include.warehouse import get_warehouse_hook

    secret = BaseHook.get_connection(WEBHOOK_CONN_ID).password
    if not secret:
        raise RuntimeError(f"connection {WEBHOOK_CONN_ID!r} has no password (the webhook signing secret)")
    verify(secret, timestamp, signature, body, now=time.time())
    events = parse(body)
    store(get_warehouse_hook(), events)
    return len(events)


@app.post("/webhooks/events")
async def receive_events(request: Request) -> JSONResponse:
    from include.migosmtp.webhooks import MAX_BODY_BYTES, WebhookRejected

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return JSONResponse({"error": f"body exceeds {MAX_BODY_BYTES} bytes"}, status_code=413)
    body = await request.body()
    try:
        stored = await run_in_threadpool(
            _store_events,
            body,
            request.headers.get("x-migosmtp-timestamp"),
            request.headers.get("x-migosmtp-signature"),
        )
    except WebhookRejected as rejected:
        return JSONResponse({"error": rejected.reason}, status_code=rejected.status)
    return JSONResponse({"received": stored})


class MigoSmtpWebhooksPlugin(AirflowPlugin):
    name = "migosmtp_webhooks"
    fastapi_apps = [{"app": app, "url_prefix": "/migosmtp", "name": "MigoSMTP delivery webhooks"}]
