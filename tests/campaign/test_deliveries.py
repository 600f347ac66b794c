"""Events to ledger: counts from the latest event per recipient, whatever the order or repetition;
and a campaign off to a bad start paused by the reconcile, once."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from include.campaign import definition, ledger, steering, suppressions
from include.campaign.alerts import ALERTS_CONN_ID
from include.campaign.deliveries import (
    DeliveryRates,
    campaign_rates,
    pause_on_bad_start,
    reconcile,
    reconcile_open_campaigns,
)
from include.migosmtp.webhooks import DeliveryEvent, store
from include.warehouse import ensure_schema
from tests.conftest import ChatWebhook


def planned_and_scheduled(hook, batch_number, batch_id, recipients, campaign_id="c1"):
    key = f"bulk-email:{campaign_id}:batch-{batch_number}"
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    row = ledger.planned_row(campaign_id, batch_number, key, recipients, moment, "t")
    hook.insert_rows(ledger.LEDGER_TABLE, [row], target_fields=list(ledger.FIELDS))
    ledger.record_scheduled(hook, campaign_id, batch_number, batch_id)


def ev(event_id, type_, recipient, timestamp, batch_id="bat_1", bounce_type=None, campaign_id="c1"):
    tags = (f"campaign:{campaign_id}",)
    return DeliveryEvent(event_id, type_, batch_id, recipient, tags, timestamp, None, bounce_type)


def deliveries(hook):
    return [
        tuple(r)
        for r in hook.get_records(
            "SELECT batch_number, delivered, bounced, deferred, complained, unsubscribed "
            "FROM email_batch_deliveries "
            "ORDER BY batch_number"
        )
    ]


class TestReconcile:
    def test_a_batch_is_delivered_when_every_recipient_is_final(self, warehouse):
        ensure_schema(warehouse)
        planned_and_scheduled(warehouse, 1, "bat_1", ["1", "2", "3"])
        planned_and_scheduled(warehouse, 2, "bat_2", ["4", "5"])
        store(
            warehouse,
            [ev("e1", "delivered", "a", 10), ev("e2", "bounced", "b", 11), ev("e3", "delivered", "c", 12)],
        )
        store(warehouse, [ev("e4", "deferred", "d", 10, "bat_2")])

        assert reconcile(warehouse, "c1") == {"delivered_batches": 1, "partly_delivered_batches": 1}

        assert [r["status"] for r in ledger.rows(warehouse, "c1")] == ["delivered", "scheduled"]
        assert deliveries(warehouse) == [(1, 2, 1, 0, 0, 0), (2, 0, 0, 1, 0, 0)]

    def test_out_of_order_and_duplicate_events_do_not_corrupt_the_counts(self, warehouse):
        ensure_schema(warehouse)
        planned_and_scheduled(warehouse, 1, "bat_1", ["1", "2"])
        # "a" was deferred, then delivered; the later event arrives first, and both arrive twice.
        store(warehouse, [ev("e2", "delivered", "a", 20), ev("e9", "complained", "b", 30)])
        store(
            warehouse,
            [ev("e1", "deferred", "a", 10), ev("e2", "delivered", "a", 20), ev("e1", "deferred", "a", 10)],
        )

        reconcile(warehouse, "c1")
        reconcile(warehouse, "c1")

        assert deliveries(warehouse) == [(1, 1, 0, 0, 1, 0)]
        assert ledger.rows(warehouse, "c1")[0]["status"] == "delivered"

    def test_events_for_unknown_batches_change_nothing(self, warehouse):
        ensure_schema(warehouse)
        planned_and_scheduled(warehouse, 1, "bat_1", ["1"])
        store(warehouse, [ev("e1", "delivered", "a", 10, "bat_unknown")])

        assert reconcile(warehouse, "c1") == {"delivered_batches": 0, "partly_delivered_batches": 0}
        assert ledger.rows(warehouse, "c1")[0]["status"] == "scheduled"
        assert deliveries(warehouse) == []

    # (events of one recipient in the order they happen) -> the outcome it is counted as, and
    # whether the batch is then final
    @pytest.mark.parametrize(
        ("sequence", "counted", "final"),
        [
            ([("bounced", "soft"), ("delivered", None)], "delivered", True),
            ([("bounced", "soft"), ("bounced", "hard")], "bounced", True),
            ([("bounced", "soft")], "deferred", False),
            ([("deferred", None), ("delivered", None)], "delivered", True),
            ([("delivered", None), ("complained", None)], "complained", True),
            ([("delivered", None), ("unsubscribed", None)], "unsubscribed", True),
            ([("unsubscribed", None), ("delivered", None)], "delivered", True),
            ([("delivered", None), ("opened", None)], "delivered", True),
        ],
        ids=lambda v: "-".join(t if b is None else f"{t}:{b}" for t, b in v) if isinstance(v, list) else None,
    )
    def test_the_latest_event_of_a_recipient_wins(self, warehouse, sequence, counted, final):
        ensure_schema(warehouse)
        planned_and_scheduled(warehouse, 1, "bat_1", ["1"])
        events = [
            ev(f"e{i}", type_, "a@example.com", 10 * (i + 1), bounce_type=bounce)
            for i, (type_, bounce) in enumerate(sequence)
        ]
        store(warehouse, events[::-1])  # arrival order does not matter

        reconcile(warehouse, "c1")

        outcomes = ("delivered", "bounced", "deferred", "complained", "unsubscribed")
        assert deliveries(warehouse) == [(1, *(int(o == counted) for o in outcomes))]
        assert ledger.rows(warehouse, "c1")[0]["status"] == ("delivered" if final else "scheduled")

    def test_at_the_same_second_the_more_final_event_wins(self, warehouse):
        ensure_schema(warehouse)
        planned_and_scheduled(warehouse, 1, "bat_1", ["1", "2"])
        store(
            warehouse,
            [
                ev("e1", "unsubscribed", "a", 10),
                ev("e2", "delivered", "a", 10),
                ev("e3", "bounced", "b", 10, bounce_type="hard"),
                ev("e4", "bounced", "b", 10, bounce_type="soft"),
            ],
        )

        reconcile(warehouse, "c1")

        assert deliveries(warehouse) == [(1, 0, 1, 0, 0, 1)]

    def test_events_that_came_before_their_batch_was_recorded_count_once_it_is(self, warehouse):
        ensure_schema(warehouse)
        key = "bulk-email:c1:batch-1"
        row = ledger.planned_row("c1", 1, key, ["1"], datetime(2026, 12, 1, tzinfo=UTC), "t")
        warehouse.insert_rows(ledger.LEDGER_TABLE, [row], target_fields=list(ledger.FIELDS))
        # The provider accepted the batch, but the task died before recording its id; the events
        # arrive (without the campaign tag, even) and are stored under the unknown batch id.
        store(warehouse, [DeliveryEvent("e1", "delivered", "bat_late", "a", (), 10, None)])
        assert reconcile(warehouse, "c1") == {"delivered_batches": 0, "partly_delivered_batches": 0}

        ledger.record_scheduled(warehouse, "c1", 1, "bat_late")  # the rerun finds it by idempotency key

        assert reconcile(warehouse, "c1") == {"delivered_batches": 1, "partly_delivered_batches": 0}
        assert deliveries(warehouse) == [(1, 1, 0, 0, 0, 0)]

    def test_two_campaigns_events_that_share_event_ids_each_count_once(self, warehouse):
        # The provider numbers events within a batch: before the key was (batch_id, event_id),
        # the second campaign's events were dropped as duplicates, its complaint never suppressed.
        ensure_schema(warehouse)
        planned_and_scheduled(warehouse, 1, "bat_1", ["1", "2"], campaign_id="c1")
        planned_and_scheduled(warehouse, 1, "bat_2", ["3", "4"], campaign_id="c2")
        store(
            warehouse,
            [ev("e1", "delivered", "a@example.com", 10), ev("e2", "delivered", "b@example.com", 10)],
        )
        second = [
            ev("e1", "complained", "x@example.com", 20, "bat_2", campaign_id="c2"),
            ev("e2", "delivered", "y@example.com", 20, "bat_2", campaign_id="c2"),
        ]
        store(warehouse, second)
        store(warehouse, second)  # redelivered

        assert reconcile(warehouse, "c1") == {"delivered_batches": 1, "partly_delivered_batches": 0}
        assert reconcile(warehouse, "c2") == {"delivered_batches": 1, "partly_delivered_batches": 0}

        rows = warehouse.get_records(
            "SELECT campaign_id, delivered, complained FROM email_batch_deliveries ORDER BY campaign_id"
        )
        assert [tuple(r) for r in rows] == [("c1", 2, 0), ("c2", 1, 1)]
        assert suppressions.update_from_events(warehouse) == 1
        suppressed = warehouse.get_records("SELECT email, campaign_id, event_id FROM email_suppressions")
        assert [tuple(r) for r in suppressed] == [("x@example.com", "c2", "e1")]


# -- a bad start pauses the campaign -----------------------------------------------------------

SLOT = datetime(2026, 12, 1, 14, tzinfo=UTC)
THRESHOLDS = {"max_complaint_rate": 0.003, "max_hard_bounce_rate": 0.05, "min_results_for_rates": 200}
PAUSED_REASON = re.compile(r"paused by the reconcile at \d\d:\d\dZ: (.+)")


@pytest.fixture
def alerts(monkeypatch):
    """The ``campaign_alerts`` connection, a chat webhook on loopback: what it received."""
    with ChatWebhook() as chat:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{ALERTS_CONN_ID.upper()}", json.dumps({"conn_type": "http", "host": chat.url})
        )
        yield chat.received


def sending_campaign(hook, campaign_id="c1", send_at=SLOT, **thresholds):
    """A campaign as its sending run left it: its row with the run's thresholds, batch 1 (250
    recipients) at the provider as ``bat_1``, batch 2 waiting for its submit time."""
    ensure_schema(hook)
    definition.record(hook, campaign_id, {}, dag_id="bulk_email_campaign", run_id="run-1", dry_run=False)
    limits = {**THRESHOLDS, **thresholds}
    settings = SimpleNamespace(campaign_id=campaign_id, submit_ahead_minutes=60, **limits)
    steering.record_sender(hook, settings, "bulk_email_campaign", "run-1")
    rows = [
        ledger.planned_row(campaign_id, n, f"k{n}", [str(i) for i in range(250)], send_at, "t")
        for n in (1, 2)
    ]
    hook.insert_rows(ledger.LEDGER_TABLE, rows, target_fields=list(ledger.FIELDS))
    ledger.record_scheduled(hook, campaign_id, 1, "bat_1")


def results(hook, delivered=0, hard_bounces=0, complaints=0, soft_bounces=0, first=0, batch_id="bat_1"):
    """Stored events: that many recipients (numbered from ``first``) with each latest outcome."""
    outcomes = [("delivered", None)] * delivered + [("bounced", "hard")] * hard_bounces
    outcomes += [("complained", None)] * complaints + [("bounced", "soft")] * soft_bounces
    events = [
        ev(f"r{first + i}", type_, f"r{first + i}@example.com", 10, batch_id, bounce)
        for i, (type_, bounce) in enumerate(outcomes)
    ]
    store(hook, events)


def campaign_row(hook, campaign_id="c1"):
    return definition.read(hook, campaign_id)


class TestDeliveryRates:
    def test_the_rates_are_over_recipients_with_a_final_outcome(self, warehouse):
        sending_campaign(warehouse)
        # 3 complaints and 6 hard bounces among 300 final results; 50 soft bounces are not final.
        results(warehouse, delivered=291, hard_bounces=6, complaints=3)
        store(warehouse, [ev("u1", "unsubscribed", "r0@example.com", 20)])  # r0: delivered, then this
        results(warehouse, soft_bounces=50, first=1000)
        reconcile(warehouse, "c1")

        rates = campaign_rates(warehouse, "c1")

        assert rates == DeliveryRates(
            results=300,
            complaints=3,
            hard_bounces=6,
            unsubscribes=1,
            complaint_rate=0.01,
            hard_bounce_rate=0.02,
        )

    def test_no_result_is_no_rate(self, warehouse):
        sending_campaign(warehouse)

        assert campaign_rates(warehouse, "c1") == DeliveryRates(0, 0, 0, 0, 0.0, 0.0)


class TestPauseOnBadStart:
    def test_over_a_threshold_the_campaign_is_paused_once_and_alerted_once(self, warehouse, alerts):
        sending_campaign(warehouse)
        results(warehouse, delivered=243, complaints=1)  # 1 in 244: 0.41%

        first = reconcile_open_campaigns()
        results(warehouse, delivered=6, first=500)  # more events arrive while it is paused
        second = reconcile_open_campaigns()

        assert first["paused"] == ["c1"] and second["paused"] == []
        row = campaign_row(warehouse)
        assert row["status"] == steering.PAUSED
        assert PAUSED_REASON.fullmatch(row["status_reason"])[1] == "complaints 0.41% > 0.30%"
        # Still reconciled while paused: batch 1's 250 recipients are all final now.
        assert second["campaigns"]["c1"] == {"delivered_batches": 1, "partly_delivered_batches": 0}
        assert [r["status"] for r in ledger.rows(warehouse, "c1")] == ["delivered", "planned"]
        [alert] = alerts
        assert alert["text"].startswith(f"MigoSMTP campaign 'c1' {row['status_reason']}. ")
        assert "244 final results so far: 1 complaints (0.41%), 0 hard bounces (0.00%)" in alert["text"]
        assert "Its 1 batches not yet at the provider wait" in alert["text"]
        assert "trigger DAG bulk_email_campaign with mode=resume and campaign_id 'c1'" in alert["text"]

    def test_the_reason_names_every_rate_over_its_threshold(self, warehouse):
        sending_campaign(warehouse)
        results(warehouse, delivered=234, hard_bounces=15, complaints=1)  # of 250: 0.40%, 6.00%
        reconcile(warehouse, "c1")

        assert pause_on_bad_start(warehouse, "c1", now=datetime(2026, 12, 1, 10, 5, 59, tzinfo=UTC))

        reason = campaign_row(warehouse)["status_reason"]
        assert (
            reason
            == "paused by the reconcile at 10:05Z: complaints 0.40% > 0.30%, hard bounces 6.00% > 5.00%"
        )

    def test_a_rate_just_over_its_threshold_is_shown_apart_from_it(self, warehouse):
        sending_campaign(warehouse, max_complaint_rate=0.004)
        results(warehouse, delivered=248, complaints=1)  # 0.4016%: "0.40% > 0.40%" would say nothing
        reconcile(warehouse, "c1")

        pause_on_bad_start(warehouse, "c1")

        assert campaign_row(warehouse)["status_reason"].endswith(": complaints 0.402% > 0.400%")

    @pytest.mark.parametrize(
        ("thresholds", "outcomes"),
        [
            ({}, {"delivered": 197, "complaints": 2, "soft_bounces": 40}),  # 199 results: too few to judge
            ({}, {"delivered": 235, "hard_bounces": 12, "complaints": 0}),  # 4.86% <= 5%
            ({"max_complaint_rate": 0.01}, {"delivered": 240, "complaints": 2}),  # 0.83% <= 1%
            ({"min_results_for_rates": 500}, {"delivered": 200, "complaints": 50}),
        ],
        ids=[
            "under-min-results",
            "under-hard-bounce-threshold",
            "under-complaint-threshold",
            "min-results-raised",
        ],
    )
    def test_under_the_thresholds_or_with_too_few_results_it_goes_on(
        self, warehouse, alerts, thresholds, outcomes
    ):
        sending_campaign(warehouse, **thresholds)
        results(warehouse, **outcomes)

        assert reconcile_open_campaigns()["paused"] == []

        assert campaign_row(warehouse)["status"] == "planned" and alerts == []

    def test_a_campaign_without_thresholds_recorded_is_never_paused(self, warehouse, alerts):
        # Planned before there were thresholds: its row has none, however bad its start.
        sending_campaign(
            warehouse, max_complaint_rate=None, max_hard_bounce_rate=None, min_results_for_rates=None
        )
        results(warehouse, delivered=100, hard_bounces=100, complaints=50)

        assert reconcile_open_campaigns()["paused"] == []
        assert campaign_row(warehouse)["status"] == "planned" and alerts == []

    def test_a_resumed_campaign_is_paused_again_only_by_a_later_reconcile(self, warehouse, alerts):
        sending_campaign(warehouse)
        results(warehouse, delivered=240, complaints=5)
        reconcile_open_campaigns()

        assert steering.resume(warehouse, "c1", "resumed by run run-2 at 2026-12-01T10:30Z")
        assert campaign_row(warehouse)["status"] == "planned"  # until a reconcile judges it again

        assert reconcile_open_campaigns()["paused"] == ["c1"]
        assert campaign_row(warehouse)["status"] == steering.PAUSED and len(alerts) == 2

    def test_a_resume_with_higher_thresholds_goes_on(self, warehouse, alerts):
        sending_campaign(warehouse)
        results(warehouse, delivered=240, complaints=5)  # 2.04%
        reconcile_open_campaigns()
        steering.resume(warehouse, "c1", "resumed by run run-2")
        resumed = SimpleNamespace(
            campaign_id="c1", submit_ahead_minutes=60, **{**THRESHOLDS, "max_complaint_rate": 0.03}
        )
        steering.record_sender(warehouse, resumed, "bulk_email_campaign", "run-2")

        assert reconcile_open_campaigns()["paused"] == []
        assert campaign_row(warehouse)["status"] == "planned" and len(alerts) == 1

    def test_a_complaint_after_every_batch_at_the_provider_was_delivered_still_pauses_the_rest(
        self, warehouse, alerts
    ):
        sending_campaign(warehouse)
        results(warehouse, delivered=250)
        reconcile_open_campaigns()
        assert [r["status"] for r in ledger.rows(warehouse, "c1")] == ["delivered", "planned"]

        # Complaints come hours after their delivery, while batch 2 waits for its submit time.
        store(warehouse, [ev(f"c{i}", "complained", f"r{i}@example.com", 20) for i in range(3)])

        assert reconcile_open_campaigns()["paused"] == ["c1"]
        assert campaign_row(warehouse)["status_reason"].endswith(": complaints 1.20% > 0.30%")

    def test_a_campaign_with_nothing_left_to_stop_is_not_paused(self, warehouse, alerts):
        sending_campaign(warehouse)
        ledger.record_scheduled(warehouse, "c1", 2, "bat_2")  # both at the provider, their slot passed
        results(warehouse, delivered=240, complaints=10)

        assert reconcile_open_campaigns()["paused"] == []
        assert campaign_row(warehouse)["status"] == "scheduled" and alerts == []

    def test_batches_at_the_provider_before_their_slot_can_still_be_cancelled(self, warehouse, alerts):
        sending_campaign(warehouse, send_at=datetime(2027, 1, 1, tzinfo=UTC))
        ledger.record_scheduled(warehouse, "c1", 2, "bat_2")  # submitted all at once, slots ahead
        results(warehouse, delivered=230, complaints=10)

        assert reconcile_open_campaigns()["paused"] == ["c1"]
        [alert] = alerts
        assert "Its 0 batches not yet at the provider wait; 2 already at the provider go out" in alert["text"]
        assert "(mode=cancel)" in alert["text"]

    def test_a_cancelled_campaign_is_reconciled_and_left_cancelled(self, warehouse, alerts):
        sending_campaign(warehouse)
        ledger.record_cancelled(warehouse, "c1", "cancelled by run run-2")
        warehouse.run("UPDATE email_campaigns SET status = 'cancelled' WHERE campaign_id = 'c1'")
        results(warehouse, delivered=200, complaints=50)

        outcome = reconcile_open_campaigns()

        assert outcome == {
            "campaigns": {"c1": {"delivered_batches": 1, "partly_delivered_batches": 0}},
            "paused": [],
        }
        assert campaign_row(warehouse)["status"] == "cancelled" and alerts == []
