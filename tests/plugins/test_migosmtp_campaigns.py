"""The Campaigns view's app (plugins/migosmtp_campaigns.py) over ASGI, on rows written straight into
the warehouse as anyone who can write to it could: what reaches the browser and the spreadsheet,
and the headers on every response. Its sign-in on the real API server is the deployment tier's."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from datetime import UTC, datetime

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from include.campaign import ledger
from include.campaign.deliveries import pause_on_bad_start, reconcile
from include.migosmtp.webhooks import store
from include.warehouse import ensure_schema
from tests.campaign.test_deliveries import ev, results, sending_campaign
from tests.conftest import REPO_ROOT
from tests.views.test_pages import Parsed, assert_links_stay_in_the_view

PLUGIN = REPO_ROOT / "plugins" / "migosmtp_campaigns.py"
HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options")


def load_plugin():
    """A fresh copy of the plugin module, so a test's dependency overrides stay its own."""
    spec = importlib.util.spec_from_file_location("migosmtp_campaigns", PLUGIN)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return plugin


@pytest.fixture
def view(warehouse, monkeypatch):
    """The plugin's module, its user allowed to read DAGs, reading ``warehouse``."""
    ensure_schema(warehouse)
    plugin = load_plugin()
    plugin.app.dependency_overrides[plugin._may_read_dags] = lambda: "reader"
    monkeypatch.setattr(plugin, "_hook", lambda: warehouse)
    return plugin


def client(plugin) -> TestClient:
    return TestClient(plugin.app, raise_server_exceptions=False)


def add_campaign(hook, campaign_id: str, batches_by_status: str = '{"planned": 1}', **columns) -> None:
    row = {
        "campaign_id": campaign_id,
        "dag_id": "bulk_email_campaign",
        "planned_by_run": "manual__1",
        "definition": "{}",
        "dry_run": 0,
        "status": "planned",
        "batches_by_status": batches_by_status,
        "created_at": "2026-12-01T09:00:00Z",
        "updated_at": "2026-12-01T09:00:00Z",
        **columns,
    }
    p = hook.placeholder
    hook.run(
        f"INSERT INTO email_campaigns ({', '.join(row)}) VALUES ({', '.join([p] * len(row))})",
        parameters=tuple(row.values()),
    )


def test_markup_in_batches_by_status_is_never_markup(view, warehouse):
    add_campaign(warehouse, "key", '{"<img src=x onerror=alert(1)>": 1}')
    add_campaign(warehouse, "count", '{"planned": "<img src=x onerror=alert(1)>"}')

    listing = client(view).get("/")

    assert listing.status_code == 200
    assert "<img" not in listing.text and "1 &lt;img src=x onerror=alert(1)&gt;" in listing.text
    assert {tag for tag, *_ in Parsed(listing.text).skeleton} <= {
        *("html", "head", "meta", "title", "style", "body", "h1", "table", "tr", "th", "td", "a", "span"),
        *("/html", "/head", "/title", "/style", "/body", "/h1", "/table", "/tr", "/th", "/td", "/a", "/span"),
        "<!",
    }


def test_a_campaign_id_that_is_a_url_links_to_its_own_page(view, warehouse):
    add_campaign(warehouse, "//other.example/x")
    add_campaign(warehouse, "..")

    parsed = Parsed(client(view).get("/").text)

    assert parsed.hrefs == ["%2F%2Fother.example%2Fx"]  # ".." has no page a browser can reach
    assert_links_stay_in_the_view(parsed, "http://airflow.test/campaigns/", {"//other.example/x", ".."})


def test_a_malformed_row_is_shown_as_malformed_and_the_list_still_renders(view, warehouse):
    add_campaign(warehouse, "fine")
    for i, text in enumerate(["[1]", "not json", '{"planned": "many"}', "null"]):
        add_campaign(warehouse, f"bad-{i}", text)

    listing, page = client(view).get("/"), client(view).get("/bad-0")

    assert listing.status_code == page.status_code == 200
    assert listing.text.count(">malformed</td>") == 4 and "<td>1 planned</td>" in listing.text


def test_the_rejected_rows_csv_has_no_formula_in_any_column(view, warehouse):
    add_campaign(warehouse, "c")
    rows = [
        (1, "r1", '=HYPERLINK("http://other.example","x")', "invalid email"),
        (2, "=1+1", "@SUM(1+1)", "+cmd"),
        (3, "-2", "\tx", "\rx"),
        (4, None, "ok@example.com", "duplicate email"),
    ]
    p = warehouse.placeholder
    for row in rows:
        warehouse.run(
            f"INSERT INTO email_rejected_recipients (campaign_id, source_row, recipient_id, email, reason) "
            f"VALUES ('c', {p}, {p}, {p}, {p})",
            parameters=row,
        )
    warehouse.run(
        "UPDATE email_rejected_recipients SET source_row = -5 WHERE source_row = 4"  # a negative number too
    )

    response = client(view).get("/c/rejected.csv")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    got = list(csv.reader(io.StringIO(response.text, newline="")))
    assert got == [
        ["source_row", "recipient_id", "email", "reason"],
        ["'-5", "", "ok@example.com", "duplicate email"],
        ["1", "r1", '\'=HYPERLINK("http://other.example","x")', "invalid email"],
        ["2", "'=1+1", "'@SUM(1+1)", "'+cmd"],
        ["3", "'-2", "'\tx", "'\rx"],
    ]


def test_every_response_carries_the_security_headers(view, warehouse, monkeypatch):
    add_campaign(warehouse, "c")
    app = client(view)
    responses = {
        "list": app.get("/"),
        "page": app.get("/c"),
        "csv": app.get("/c/rejected.csv"),
        "missing": app.get("/nope"),
        "no such route": app.get("/a/b/c"),
    }
    view.app.dependency_overrides.clear()

    def refuse():
        raise HTTPException(status_code=403, detail="no")

    view.app.dependency_overrides[view._may_read_dags] = refuse
    responses["forbidden"] = app.get("/")
    view.app.dependency_overrides[view._may_read_dags] = lambda: "reader"
    monkeypatch.setattr(view, "_hook", lambda: json.loads("not json: the warehouse is down"))
    responses["server error"] = app.get("/")

    assert {k: r.status_code for k, r in responses.items()} == {
        "list": 200,
        "page": 200,
        "csv": 200,
        "missing": 404,
        "no such route": 404,
        "forbidden": 403,
        "server error": 500,
    }
    for what, response in responses.items():
        assert response.headers.get("x-content-type-options") == "nosniff", what
        assert response.headers.get("content-security-policy", "").startswith("default-src 'none'"), what
    from include.views.pages import SECURITY_HEADERS

    for what, response in responses.items():
        assert {h: response.headers.get(h) for h in HEADERS} == {
            k.lower(): v for k, v in SECURITY_HEADERS.items()
        }, what


def test_a_campaign_the_reconcile_paused_says_why_what_waits_and_its_rates(view, warehouse):
    sending_campaign(warehouse, "bad-start")  # batch 1 at the provider, batch 2 waiting (slot 14:00Z)
    later = [
        ledger.planned_row("bad-start", n, f"k{n}", ["a"], datetime(2026, 12, 1, 15, tzinfo=UTC), "t")
        for n in (3, 4)
    ]
    warehouse.insert_rows(ledger.LEDGER_TABLE, later, target_fields=list(ledger.FIELDS))
    ledger.record_cancelled(warehouse, "bad-start", "recipient list withdrawn", batch_number=4)
    results(warehouse, delivered=240, complaints=1, soft_bounces=3, batch_id="bat_1")  # 1 of 241: 0.41%
    store(warehouse, [ev("u1", "unsubscribed", "r0@example.com", 20)])  # r0 was delivered, then this
    reconcile(warehouse, "bad-start")
    assert pause_on_bad_start(warehouse, "bad-start", now=datetime(2026, 12, 1, 10, 5, tzinfo=UTC))

    page, listing = client(view).get("/bad-start"), client(view).get("/")

    assert page.status_code == listing.status_code == 200
    reason = "paused by the reconcile at 10:05Z: complaints 0.41% &gt; 0.30%"
    assert (
        f'<p class="next" id="next">Next: {reason}; '
        "2 batches not yet at the provider wait for mode=resume</p>" in page.text
    )
    assert "2 waiting, 0 failed or halted, 1 at the provider, 0 delivered, 1 cancelled." in page.text
    assert (
        "Over 241 final results: complaints 0.41% (1), hard bounces 0.00% (0), unsubscribes 1." in page.text
    )
    batches = {int(m[1]): m[2] for m in re.finditer(r'<tr data-batch="(\d+)">(.*?)</tr>', page.text)}
    # A waiting batch goes submit_ahead_minutes (60) before its slot; the others have no submit time.
    assert "<td>2026-12-01T14:00:00Z</td><td>2026-12-01T13:00:00Z</td>" in batches[2]
    assert "<td>2026-12-01T15:00:00Z</td><td>2026-12-01T14:00:00Z</td>" in batches[3]
    assert "<td>2026-12-01T14:00:00Z</td><td></td>" in batches[1]
    assert "badge cancelled" in batches[4] and "recipient list withdrawn" in batches[4]
    assert f"<td>{reason}; 2 batches not yet at the provider wait for mode=resume</td>" in listing.text
    assert '<td class="n">0.41% (pauses above 0.30%)</td>' in listing.text


def test_a_waiting_campaign_says_which_batch_goes_next_and_when(view, warehouse):
    sending_campaign(warehouse, "waiting")
    reconcile(warehouse, "waiting")

    page = client(view).get("/waiting")

    assert (
        '<p class="next" id="next">Next: batch 2 goes at 2026-12-01T13:00:00Z, '
        "for its slot at 2026-12-01T14:00:00Z</p>"
    ) in page.text
    assert "No thresholds recorded" not in page.text and "once it has 200 final results" in page.text
