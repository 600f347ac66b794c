"""Events to ledger: counts from the latest event per recipient, whatever the order or repetition."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from include.campaign import ledger, suppressions
from include.campaign.deliveries import reconcile
from include.migosmtp.webhooks import DeliveryEvent, store
from include.warehouse import ensure_schema


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
