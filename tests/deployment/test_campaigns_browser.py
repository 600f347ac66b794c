"""The trigger form and the Campaigns view in a real browser (Debian's Chromium, driven by Playwright),
against the real API server: sign in, trigger a dry run from the form, read its plan on the
campaign page, then send for real and watch the scheduled batches and, once the sandbox has
delivered (webhooks, then the reconcile DAG), the delivered counts.

Screenshots of the form, the list and the campaign page are written to
``test-artifacts/browser/`` (or ``$BROWSER_ARTIFACTS``). Without Chromium the test fails:
``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from demo.airflow_stack import API_USER, DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from include.campaign.ledger import rows as ledger_rows
from include.warehouse import utc_text
from sandbox import SandboxProcess
from tests.conftest import ALL_AT_ONCE, REPO_ROOT
from tests.deployment.campaign_checks import API_KEY, first_slot

pytestmark = pytest.mark.deployment

CHROMIUM = "/usr/bin/chromium"
WEBHOOK_SECRET = "whsec-browser"
RECONCILE_DAG_ID = "migosmtp_delivery_reconcile"
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", REPO_ROOT / "test-artifacts" / "browser"))
RECIPIENTS = 40  # 4 batches of 10, 20 an hour: 2 hours
TIMEOUT_MS = 60_000


def _wait(what: str, probe, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(1)
    return value


def test_trigger_a_dry_run_from_the_form_then_send_and_follow_it_on_the_campaign_page(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    from playwright.sync_api import expect, sync_playwright

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    create_recipients_table(postgres_warehouse.hook, "recipients", RECIPIENTS)
    start_at = first_slot()
    stack = local_stack
    stack.api.set_connection("migosmtp_webhook", {"conn_type": "generic", "password": WEBHOOK_SECRET})
    with (
        SandboxProcess(
            tmp_path / "sandbox.db",
            api_key=API_KEY,
            webhook_url=f"{stack.base_url}/migosmtp/webhooks/events",
            webhook_secret=WEBHOOK_SECRET,
            bounce_rate=0.25,
        ) as sandbox,
        sync_playwright() as playwright,
    ):
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))

        # Sign in through Airflow's own login page, which sends us back to the view.
        page.goto(f"{stack.base_url}/campaigns/")
        page.wait_for_url("**/auth/login**")
        page.get_by_label("Username").fill(API_USER)
        page.get_by_label("Password").fill(stack.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/campaigns/")
        expect(page.get_by_text("No campaign has been planned yet")).to_be_visible()

        # The trigger form: its sections, an invalid value shown before anything runs,
        # then filled for a dry run and triggered.
        runs_before = _run_ids(stack)  # the shared stack's earlier tests' runs
        page.goto(f"{stack.base_url}/dags/{DAG_ID}")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = page.get_by_role("dialog")
        trigger = dialog.get_by_role("button", name="Trigger")
        for section in ("Audience", "Message", "Limits", "Run"):
            expect(dialog.get_by_role("button", name=section)).to_be_visible()
        expect(trigger).to_be_disabled()  # campaign_id is required
        dialog.get_by_role("button", name="Audience").click()
        # A value the schema refuses: the API server refuses the trigger, the dialog says why,
        # and no run is created.
        dialog.locator("[name=element_campaign_id]").fill("browser preview")
        trigger.click()
        expect(page.get_by_text(re.compile("campaign_id")).first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "trigger-form-invalid.png"), full_page=True)
        assert _run_ids(stack) == runs_before
        dialog.locator("[name=element_campaign_id]").fill("browser-preview")
        expect(trigger).to_be_enabled()
        dialog.get_by_role("button", name="Message").click()
        expect(dialog.locator("textarea[name=element_html_body]")).to_be_visible()  # multi-line
        dialog.get_by_role("button", name="Limits").click()
        dialog.locator("[name=element_max_batch_size]").fill("10")
        dialog.locator("[name=element_hourly_cap]").fill("20")
        expect(dialog.get_by_text("Refuse a campaign that does not fit")).to_be_visible()  # drop-down
        dialog.get_by_role("button", name="Run").click()
        dialog.locator("label:has([name=element_dry_run])").click()
        expect(dialog.locator("[name=element_dry_run]")).to_be_checked()
        page.screenshot(path=str(ARTIFACTS / "trigger-form.png"), full_page=True)
        trigger.click()

        run_id = _wait("the dry run", lambda: _run_of(stack, "browser-preview"))
        state = stack.wait_for_dag_run(DAG_ID, run_id)["state"]
        assert state == "success", stack.describe_run(DAG_ID, run_id)
        conf = next(r for r in stack.api.dag_runs(DAG_ID) if r["dag_run_id"] == run_id)["conf"]
        assert (conf["dry_run"], conf["max_batch_size"], conf["hourly_cap"]) == (True, 10, 20)

        # Its page: marked a dry run, its batch count and its recipients per day.
        page.goto(f"{stack.base_url}/campaigns/")
        expect(page.locator('tr[data-campaign="browser-preview"]')).to_contain_text("dry run")
        # Styled: the policy lets the page's one stylesheet apply.
        expect(page.locator(".badge.dry-run").first).to_have_css("background-color", "rgb(255, 243, 191)")
        page.screenshot(path=str(ARTIFACTS / "campaign-list.png"), full_page=True)
        # And the UI's own page for the view frames it (frame-ancestors 'self').
        page.goto(f"{stack.base_url}/plugin/campaigns")
        framed = page.frame_locator("iframe").locator('tr[data-campaign="browser-preview"]')
        expect(framed).to_contain_text("dry run")
        page.screenshot(path=str(ARTIFACTS / "campaign-list-in-ui.png"), full_page=True)
        page.goto(f"{stack.base_url}/campaigns/")
        page.get_by_role("link", name="browser-preview").click()
        expect(page.locator("#batch-count")).to_have_text("4 batches")
        for day, recipients in _per_day(postgres_warehouse.hook, "browser-preview").items():
            expect(page.locator(f'#per-day tr[data-day="{day}"] td').nth(1)).to_have_text(str(recipients))
        expect(page.locator("svg.chart")).to_have_count(2)
        page.screenshot(path=str(ARTIFACTS / "campaign-dry-run.png"), full_page=True)

        # A real send (from the REST API: the form was checked above), then its page.
        sent_run = stack.api.trigger_dag_run(
            DAG_ID,
            {
                "campaign_id": "browser-sent",
                "max_batch_size": 10,
                "hourly_cap": 20,
                "start_at": utc_text(start_at),
                "submit_ahead_minutes": ALL_AT_ONCE,
            },
        )
        assert stack.wait_for_dag_run(DAG_ID, sent_run)["state"] == "success"
        page.goto(f"{stack.base_url}/campaigns/browser-sent")
        expect(page.locator("#ledger .badge.scheduled")).to_have_count(4)
        page.screenshot(path=str(ARTIFACTS / "campaign-scheduled.png"), full_page=True)

        # The sandbox delivers (its clock moved past the send slots), the webhooks reach the
        # API server, and the reconcile DAG turns them into counts.
        sandbox.advance((start_at - datetime.now(UTC)).total_seconds() + 3 * 3600)
        _wait(
            "every delivery event to reach the receiver",
            lambda: (
                True
                if len(sandbox.events()) == RECIPIENTS and all(e["delivered"] for e in sandbox.events())
                else None
            ),
        )
        reconcile = stack.api.trigger_dag_run(RECONCILE_DAG_ID, {})
        assert stack.wait_for_dag_run(RECONCILE_DAG_ID, reconcile)["state"] == "success"
        delivered = sum(e["type"] == "delivered" for e in sandbox.events())
        bounced = sum(e["type"] == "bounced" for e in sandbox.events())
        page.goto(f"{stack.base_url}/campaigns/")
        row = page.locator('tr[data-campaign="browser-sent"]')
        expect(row.locator("td").nth(8)).to_have_text(f"{delivered:,}")
        expect(row.locator("td").nth(9)).to_have_text(f"{bounced:,}")
        page.goto(f"{stack.base_url}/campaigns/browser-sent")
        page.screenshot(path=str(ARTIFACTS / "campaign-sent.png"), full_page=True)
        browser.close()
        assert [m for m in console if "Content Security Policy" in m] == []  # the CSP refused nothing

    assert {r["status"] for r in ledger_rows(postgres_warehouse.hook, "browser-sent")} <= {
        "scheduled",
        "delivered",
    }
    assert delivered + bounced == RECIPIENTS and bounced > 0


def _per_day(hook, campaign_id: str) -> dict[str, int]:
    days: dict[str, int] = {}
    for row in ledger_rows(hook, campaign_id):
        days[row["send_at"][:10]] = days.get(row["send_at"][:10], 0) + row["recipient_count"]
    return days


def _run_ids(stack: AirflowStack) -> set[str]:
    return {run["dag_run_id"] for run in stack.api.dag_runs(DAG_ID)}


def _run_of(stack: AirflowStack, campaign_id: str) -> str | None:
    for run in stack.api.dag_runs(DAG_ID):
        if (run.get("conf") or {}).get("campaign_id") == campaign_id:
            return run["dag_run_id"]
    return None
