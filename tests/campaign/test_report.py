"""The Campaigns view's figures (``include.campaign.report``) and pages (``include.views``), from
campaigns planned and sent through the real DAG against the sandbox, on both warehouses."""

from __future__ import annotations

import pytest

from demo.audience import create_recipients_table
from include.campaign import report
from include.campaign.halts import halt
from include.views import pages
from include.views.chart import bar_chart
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


def test_values_from_the_warehouse_are_escaped():
    row = {
        "campaign_id": "x",
        "dag_id": "<script>alert(1)</script>",
        "planned_by_run": "r",
        "created_at": "t",
        "status": "planned",
        "dry_run": False,
        "batches_by_status": {"planned": 1},
        "recipients": 1,
        "batches": 1,
        "first_send_at": None,
        "last_send_at": None,
        "delivered": 0,
        "bounced": 0,
        "deferred": 0,
        "complained": 0,
        "halts": 0,
    }
    html = pages.campaign_list([row])
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_the_chart_is_svg_with_one_bar_per_series_and_slot_and_no_script():
    svg = bar_chart({"2026-12-01": {"scheduled": 10, "planned": 5, "delivered": 7, "bounced": 1}}, "Per day")
    assert svg.startswith("<svg") and svg.count("<rect") == 4 + 4  # bars + legend
    assert "<script" not in svg and "http://" not in svg.replace("http://www.w3.org/2000/svg", "")
    assert "nothing planned" in bar_chart({}, "Per day")


def test_before_any_plan_there_is_nothing_to_show_and_nothing_is_created(warehouse):
    from include.warehouse import CAMPAIGNS_TABLE, WarehouseInputError, table_columns

    assert report.campaigns(warehouse) == [] and report.campaign(warehouse, "x") is None
    with pytest.raises(WarehouseInputError):
        table_columns(warehouse, CAMPAIGNS_TABLE)
