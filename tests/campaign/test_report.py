"""The Campaigns view's figures (``include.campaign.report``), and its pages (``include.views``) of
campaigns planned and sent through the real DAG against the sandbox, on both warehouses.
How the pages show values no plan writes (markup, malformed rows) is ``tests/views``."""

from __future__ import annotations

import pytest

from demo.audience import create_recipients_table
from include.campaign import report
from include.campaign.halts import halt
from include.views import pages
from tests.conftest import DAY, NEXT_DAY

SMALL = {"max_batch_size": 10, "hourly_cap": 20, "daily_cap": 30, "start_at": f"{DAY}T09:00:00Z"}


def test_a_sent_campaign_and_a_dry_run_as_the_view_shows_them(run_campaign, warehouse, sandbox):
    create_recipients_table(warehouse, "recipients", 40, bad_every=10)  # 40, and 4 bad rows besides
    assert run_campaign(campaign_id="sent", **SMALL).state == "success"
    assert run_campaign(campaign_id="preview", dry_run=True, **SMALL).state == "success"
    halt(warehouse, "sent", "manual__x", 2, "quota exceeded")

    listed = {c["campaign_id"]: c for c in report.campaigns(warehouse)}

    assert set(listed) == {"sent", "preview"}
    assert report.campaigns(warehouse, "sent") == [listed["sent"]] and report.campaigns(warehouse, "x") == []
    sent, preview = listed["sent"], listed["preview"]
    assert (sent["recipients"], sent["batches"], sent["status"], sent["dry_run"]) == (
        40,
        4,
        "scheduled",
        False,
    )
    assert sent["batches_by_status"] == {"scheduled": 4}
    assert sent["first_send_at"] == f"{DAY}T09:00:00Z" and sent["last_send_at"].startswith(NEXT_DAY)
    assert sent["halts"] == 1 and preview["halts"] == 0
    assert (preview["dry_run"], preview["recipients"]) == (True, 40)

    page = report.campaign(warehouse, "sent")
    assert [b["batch_number"] for b in page["ledger"]] == [1, 2, 3, 4]
    assert all(b["batch_id"] for b in page["ledger"])
    assert page["per_day"] == {
        DAY: {"scheduled": 30, "planned": 0, "delivered": 0, "bounced": 0},
        NEXT_DAY: {"scheduled": 10, "planned": 0, "delivered": 0, "bounced": 0},
    }
    assert page["per_hour"][f"{DAY}T09"]["scheduled"] == 20
    assert sum(page["rejected"].values()) == 4
    assert [h["reason"] for h in page["halts"]] == ["quota exceeded"]
    # A dry run's batches are planned, never sent (and placed after what the account holds).
    days = report.campaign(warehouse, "preview")["per_day"].values()
    assert sum(d["planned"] for d in days) == 40 and sum(d["scheduled"] for d in days) == 0
    assert report.campaign(warehouse, "nope") is None

    [(columns, rows)] = list(report.rejected_rows(warehouse, "sent"))
    assert columns == ["source_row", "recipient_id", "email", "reason"] and len(rows) == 4
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)

    html = pages.campaign_page(page)
    assert '<span id="batch-count">4 batches</span>' in html
    assert f'<tr data-day="{DAY}"><td>{DAY}</td><td class="n">30</td>' in html
    assert "/tasks/send_batch/mapped/0" in html and 'target="_top"' in html
    assert "rejected.csv" in html and "quota exceeded" in html
    assert "dry run" in pages.campaign_page(report.campaign(warehouse, "preview"))
    listing = pages.campaign_list(report.campaigns(warehouse))
    assert 'data-campaign="sent"' in listing and 'data-campaign="preview"' in listing


def test_a_malformed_batches_by_status_is_read_as_none_and_the_other_rows_as_they_are(warehouse):
    from include.warehouse import CAMPAIGNS_TABLE, ensure_schema

    ensure_schema(warehouse)
    p = warehouse.placeholder
    stored = [("ok", '{"planned": 2}'), ("list", "[1]"), ("text", "x"), ("count", '{"a": "1"}')]
    for campaign_id, by_status in stored:
        warehouse.run(
            f"INSERT INTO {CAMPAIGNS_TABLE} (campaign_id, dag_id, planned_by_run, definition, dry_run, "
            "status, batches_by_status, created_at, updated_at) "
            f"VALUES ({p}, 'd', 'r', '{{}}', 0, 'planned', {p}, 't', 't')",
            parameters=(campaign_id, by_status),
        )

    assert {c["campaign_id"]: c["batches_by_status"] for c in report.campaigns(warehouse)} == {
        "ok": {"planned": 2},
        "list": None,
        "text": None,
        "count": None,
    }


@pytest.mark.parametrize(
    "text, counts",
    [
        ('{"planned": 2, "<b>": 1}', {"planned": 2, "<b>": 1}),
        ("", {}),
        (None, {}),
        ('{"a": 1.0}', None),
        ('{"a": true}', None),
        ('{"a": null}', None),
        ("null", None),
        ('"{}"', None),
        ("[" * 100_000, None),
        ('{"a": 1' + "0" * 5000 + "}", None),
    ],
    ids=["object", "empty", "NULL", "float", "bool", "null count", "null", "string", "deep", "huge"],
)
def test_batch_counts_is_an_object_of_whole_counts_or_none(text, counts):
    assert report.batch_counts(text) == counts


def test_before_any_plan_there_is_nothing_to_show_and_nothing_is_created(warehouse):
    from include.warehouse import CAMPAIGNS_TABLE, WarehouseInputError, table_columns

    assert report.campaigns(warehouse) == [] and report.campaign(warehouse, "x") is None
    with pytest.raises(WarehouseInputError):
        table_columns(warehouse, CAMPAIGNS_TABLE)
