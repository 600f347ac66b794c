"""Suppressions end to end: what one campaign's webhooks report, the next never mails.

The sandbox delivers with hard and soft bounces, complaints, unsubscribes and
deferrals (each a sequence of events, as a real provider sends them) and posts
them, signed, to the real receiver app served by uvicorn on loopback; the
reconcile DAG turns them into suppressions; the sandbox's record of what it
was asked to send is the proof.
"""

from __future__ import annotations

import json
import time

import pytest

from demo.audience import create_recipients_table
from demo.receiver import webhook_receiver
from include.campaign import ledger
from include.campaign.plan import plan_campaign
from include.campaign.send import send_batch
from include.warehouse import fetch_dicts
from tests.conftest import load_campaign_dag
from tests.helpers import SMALL_CAMPAIGN, suppress, suppression_reason

SECRET = "whsec_suppressions"
RATES = {
    "bounce_rate": 0.08,
    "soft_bounce_rate": 0.08,
    "defer_rate": 0.05,
    "complaint_rate": 0.05,
    "unsubscribe_rate": 0.05,
}


@pytest.fixture
def receiver(warehouse, monkeypatch):
    """The webhook plugin's app, served as the API server serves it; yields its URL."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MIGOSMTP_WEBHOOK", json.dumps({"conn_type": "generic", "password": SECRET})
    )
    with webhook_receiver() as url:
        yield url


def wait_for(what, condition, ceiling):
    deadline = time.monotonic() + ceiling
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {ceiling} s waiting for {what}")
        time.sleep(0.2)
    return result


def sent_to(sandbox, campaign_id) -> list[str]:
    return [
        r["to"]
        for b in sandbox.record()["batches"]
        if f"campaign:{campaign_id}" in b["tags"]
        for r in b["recipients"]
    ]


def test_a_second_campaign_mails_none_of_those_the_first_one_suppressed(
    run_campaign, warehouse, clean_sandbox, receiver
):
    sandbox = clean_sandbox
    create_recipients_table(warehouse, "recipients", 400)
    sandbox.update_settings(webhook_url=receiver, webhook_secret=SECRET, webhook_batch_size=100, **RATES)
    caps = {"max_batch_size": 100, "hourly_cap": 1000, "daily_cap": 1000}

    assert run_campaign(campaign_id="first", **caps).state == "success"
    sandbox.advance(2 * 3600)  # past every send_at: the sandbox sends them, first events out
    wait_for(
        "every batch to be sent",
        lambda: all(b["status"] != "scheduled" for b in sandbox.record()["batches"]),
        60,
    )
    sandbox.advance(3600)  # past every follow-up (a complaint after its delivery, ...)
    wait_for(
        "the receiver to accept every event, follow-ups included",
        lambda: all(b["status"] == "delivered" for b in sandbox.record()["batches"]),
        120,
    )
    reconcile = load_campaign_dag("migosmtp_delivery_reconcile").test()
    assert str(reconcile.state) == "success"

    events = sandbox.events()
    expected = {
        e["recipient"]: suppression_reason(e["type"], e.get("bounce_type"))
        for e in sorted(events, key=lambda e: -e["timestamp"])  # the first event per address wins
        if suppression_reason(e["type"], e.get("bounce_type"))
    }
    assert set(expected.values()) == {"hard_bounce", "complaint", "unsubscribe"}
    soft_then_delivered = {e["recipient"] for e in events if e.get("bounce_type") == "soft"} - set(expected)
    assert soft_then_delivered, "some soft bounces were delivered later: they must not be suppressed"
    active = fetch_dicts(
        warehouse, "SELECT email, reason FROM email_suppressions WHERE removed_at IS NULL", ()
    )
    assert {r["email"]: r["reason"] for r in active} == expected

    assert run_campaign(campaign_id="second", **caps).state == "success"

    first, second = sent_to(sandbox, "first"), sent_to(sandbox, "second")
    assert not set(second) & set(expected)
    assert sorted(second) == sorted(set(first) - set(expected))
    assert soft_then_delivered <= set(second)
    rejected = fetch_dicts(
        warehouse,
        "SELECT email, reason FROM email_rejected_recipients "
        "WHERE campaign_id = 'second' AND reason = 'suppressed'",
        (),
    )
    assert sorted(r["email"].strip().lower() for r in rejected) == sorted(expected)


PARAMS = SMALL_CAMPAIGN


def staged(hook, batch_number):
    return [
        r["email"]
        for r in fetch_dicts(
            hook,
            "SELECT email FROM email_campaign_recipients "
            f"WHERE campaign_id = 'c1' AND batch_number = {hook.placeholder} ORDER BY position",
            (batch_number,),
        )
    ]


class TestBetweenPlanAndSend:
    def test_a_batch_never_attempted_drops_the_newly_suppressed_one_an_attempted_batch_does_not(
        self, airflow_db, warehouse, clean_sandbox
    ):
        create_recipients_table(warehouse, "recipients", 20)
        params = {**PARAMS, "campaign_id": "c1"}
        batches = plan_campaign(params, run_id="r1")
        first, second = staged(warehouse, 1), staged(warehouse, 2)
        # Batch 2 was attempted before and its answer lost: the provider may hold it as it was.
        ledger.record_attempt(warehouse, "c1", 2)
        suppress(warehouse, first[3].upper())
        suppress(warehouse, second[4])

        for batch in batches:
            send_batch(batch, params, "r1")

        sent = {
            b["recipient_count"]: [r["to"] for r in b["recipients"]]
            for b in clean_sandbox.record()["batches"]
        }
        assert sent == {9: first[:3] + first[4:], 10: second}
        entries = {e["batch_number"]: e for e in ledger.rows(warehouse, "c1", with_recipient_ids=True)}
        assert (entries[1]["status"], entries[1]["recipient_count"]) == ("scheduled", 9)
        assert len(json.loads(entries[1]["recipient_ids"])) == 9
        assert (entries[2]["status"], entries[2]["recipient_count"]) == ("scheduled", 10)
        rejected = fetch_dicts(
            warehouse, "SELECT email, reason FROM email_rejected_recipients WHERE campaign_id = 'c1'", ()
        )
        assert rejected == [{"email": first[3], "reason": "suppressed_after_plan"}]

    def test_a_batch_whose_every_recipient_was_suppressed_is_not_sent(
        self, airflow_db, warehouse, clean_sandbox
    ):
        create_recipients_table(warehouse, "recipients", 10)
        params = {**PARAMS, "campaign_id": "c1"}
        [batch] = plan_campaign(params, run_id="r1")
        for email in staged(warehouse, 1):
            suppress(warehouse, email)

        assert send_batch(batch, params, "r1")["batch_id"] is None

        assert clean_sandbox.record()["batches"] == []
        assert ledger.rows(warehouse, "c1")[0]["status"] == "suppressed"

    def test_ignore_suppressions_plans_and_sends_to_suppressed_addresses(
        self, airflow_db, warehouse, clean_sandbox
    ):
        create_recipients_table(warehouse, "recipients", 10)
        plan_campaign({**PARAMS, "campaign_id": "probe", "dry_run": True}, run_id="r0")
        params = {**PARAMS, "campaign_id": "c1", "ignore_suppressions": True}
        addresses = [
            r["email"]
            for r in fetch_dicts(
                warehouse, "SELECT email FROM email_campaign_recipients WHERE campaign_id = 'probe'", ()
            )
        ]
        suppress(warehouse, addresses[0])
        [batch] = plan_campaign(params, run_id="r1")
        suppress(warehouse, addresses[1])

        send_batch(batch, params, "r1")

        [sent] = clean_sandbox.record()["batches"]
        assert {addresses[0], addresses[1]} <= {r["to"] for r in sent["recipients"]}
        assert sent["recipient_count"] == 10
