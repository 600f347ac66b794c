"""The Campaigns view (plugins/migosmtp_campaigns.py) on the real API server: who may see it, and
what it shows of a dry run and of a sent campaign."""

from __future__ import annotations

import csv
import io
from urllib.parse import quote

import pytest
import requests

from demo.airflow_stack import DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from include.views.pages import SECURITY_HEADERS
from include.warehouse import utc_text
from sandbox import SandboxProcess
from tests.conftest import ALL_AT_ONCE
from tests.deployment.campaign_checks import API_KEY, first_slot

pytestmark = pytest.mark.deployment

CONF = {"max_batch_size": 10, "hourly_cap": 20, "daily_cap": 1000, "submit_ahead_minutes": ALL_AT_ONCE}


def test_only_signed_in_users_see_the_campaigns_and_the_pages_show_the_ledger(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    create_recipients_table(postgres_warehouse.hook, "recipients", 50, bad_every=10)  # 5 bad rows
    start_at = utc_text(first_slot())
    stack = local_stack

    with SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox:
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        stack.api.set_connection("migosmtp_webhook", {"conn_type": "generic", "password": "whsec-view"})
        base = f"{stack.base_url}/campaigns"

        # Anonymous: a browser goes to the login (and back), any other client gets 401.
        page = requests.get(f"{base}/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
        assert page.status_code == 302
        assert "/auth/login" in page.headers["location"] and "next=" in page.headers["location"]
        assert requests.get(f"{base}/", headers={"Accept": "application/json"}, timeout=30).status_code == 401
        assert requests.get(f"{base}/x/rejected.csv", timeout=30).status_code == 401
        forged = requests.get(f"{base}/", headers={"Authorization": "Bearer not-a-jwt"}, timeout=30)
        assert forged.status_code == 403
        # The webhook receiver needs no Airflow login: its own signature check answers.
        webhook = requests.post(f"{stack.base_url}/migosmtp/webhooks/events", data=b"{}", timeout=30)
        assert webhook.status_code == 401 and "signature" in webhook.text.lower()
        # The view is in the UI's navigation.
        views = [v for p in stack.api.request("GET", "/plugins")["plugins"] for v in p["external_views"]]
        assert {"name": "Campaigns", "href": "/campaigns/"}.items() <= next(
            v for v in views if v["name"] == "Campaigns"
        ).items()

        signed_in = {"Authorization": f"Bearer {stack.api.token()}"}
        assert (
            "No campaign has been planned yet" in requests.get(f"{base}/", headers=signed_in, timeout=30).text
        )

        preview_run = stack.api.trigger_dag_run(
            DAG_ID, {"campaign_id": "view-preview", "dry_run": True, "start_at": start_at, **CONF}
        )
        assert stack.wait_for_dag_run(DAG_ID, preview_run)["state"] == "success"
        sent_run = stack.api.trigger_dag_run(
            DAG_ID, {"campaign_id": "view-sent", "start_at": start_at, **CONF}
        )
        assert stack.wait_for_dag_run(DAG_ID, sent_run)["state"] == "success"

        listing = requests.get(f"{base}/", headers=signed_in, timeout=30)
        preview = requests.get(f"{base}/view-preview", headers=signed_in, timeout=30)
        sent = requests.get(f"{base}/view-sent", headers=signed_in, timeout=30)
        rejected = requests.get(f"{base}/view-sent/rejected.csv", headers=signed_in, timeout=30)
        missing = requests.get(f"{base}/nope", headers=signed_in, timeout=30)
        batch_ids = {b["batch_id"] for b in sandbox.record()["batches"]}

    assert listing.status_code == 200
    assert 'data-campaign="view-preview"' in listing.text and 'data-campaign="view-sent"' in listing.text
    assert preview.status_code == sent.status_code == 200
    assert "dry run" in preview.text and '<span id="batch-count">5 batches</span>' in preview.text
    assert '<span id="batch-count">5 batches</span>' in sent.text
    assert len(batch_ids) == 5 and all(batch_id in sent.text for batch_id in batch_ids)
    assert sent.text.count('<td><span class="badge scheduled">scheduled</span></td>') == 5  # the ledger
    assert f"/dags/{DAG_ID}/runs/{quote(sent_run)}/tasks/send_batch/mapped/0" in sent.text
    rows = list(csv.reader(io.StringIO(rejected.text)))
    assert rows[0] == ["source_row", "recipient_id", "email", "reason"] and len(rows) == 1 + 5
    assert "attachment" in rejected.headers["content-disposition"]
    assert missing.status_code == 404
    # The security headers on every kind of response, as the API server sends them.
    for response in (page, listing, sent, rejected, missing):
        assert {k: response.headers.get(k) for k in SECURITY_HEADERS} == SECURITY_HEADERS, response.url
