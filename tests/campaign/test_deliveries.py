"""Events to ledger: counts from the latest event per recipient, whatever the order or repetition."""

from __future__ import annotations

from datetime import UTC, datetime

from include.campaign import ledger
from include.campaign.deliveries import reconcile
from include.migosmtp.webhooks import DeliveryEvent, store
from include.warehouse import ensure_schema


def planned_and_scheduled(hook, batch_number, batch_id, recipients):
    key = f"bulk-email:c1:batch-{batch_number}"
    row = ledger.planned_row("c1", batch_number, key, recipients, datetime(2026, 12, 1, tzinfo=UTC), "t")
    hook.insert_rows(ledger.LEDGER_TABLE, [row], target_fields=list(ledger.FIELDS))
    ledger.record_scheduled(hook, "c1", batch_number, batch_id)


def ev(event_id, type_, recipient, timestamp, batch_id="bat_1"):
    return DeliveryEvent(event_id, type_, batch_id, recipient, ("campaign:c1",), timestamp, None)


def deliveries(hook):
    return [
        tuple(r)
        for r in hook.get_records(
            "SELECT batch_number, delivered, bounced, deferred, complained FROM email_batch_deliveries "
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
        assert deliveries(warehouse) == [(1, 2, 1, 0, 0), (2, 0, 0, 1, 0)]

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

        assert deliveries(warehouse) == [(1, 1, 0, 0, 1)]
        assert ledger.rows(warehouse, "c1")[0]["status"] == "delivered"

    def test_events_for_unknown_batches_change_nothing(self, warehouse):
        ensure_schema(warehouse)
        planned_and_scheduled(warehouse, 1, "bat_1", ["1"])
        store(warehouse, [ev("e1", "delivered", "a", 10, "bat_unknown")])

        assert reconcile(warehouse, "c1") == {"delivered_batches": 0, "partly_delivered_batches": 0}
        assert ledger.rows(warehouse, "c1")[0]["status"] == "scheduled"
        assert deliveries(warehouse) == []
