"""The suppression list: which events suppress, how addresses match, removals, and a batch's drop."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from include.campaign import ledger, suppressions
from include.campaign.audience import screen_rows
from include.campaign.staging import STAGING_FIELDS
from include.migosmtp.webhooks import DeliveryEvent, store
from include.warehouse import ensure_schema, fetch_dicts
from tests.helpers import suppress, unsuppress


def ev(event_id, type_, recipient, timestamp=10, bounce_type=None, batch_id="bat_1"):
    return DeliveryEvent(event_id, type_, batch_id, recipient, ("campaign:c1",), timestamp, None, bounce_type)


def active(hook) -> dict[str, str]:
    return {
        r["email"]: r["reason"]
        for r in fetch_dicts(
            hook, "SELECT email, reason FROM email_suppressions WHERE removed_at IS NULL ORDER BY email", ()
        )
    }


class TestWhichEventsSuppress:
    @pytest.mark.parametrize(
        ("event_type", "bounce_type", "reason"),
        [
            ("complained", None, "complaint"),
            ("unsubscribed", None, "unsubscribe"),
            ("bounced", "hard", "hard_bounce"),
            ("bounced", "soft", None),
            ("bounced", None, None),
            ("deferred", None, None),
            ("delivered", None, None),
            ("opened", None, None),
        ],
    )
    def test_only_complaints_unsubscribes_and_hard_bounces_suppress(
        self, warehouse, event_type, bounce_type, reason
    ):
        ensure_schema(warehouse)
        store(warehouse, [ev("e1", event_type, "a@example.com", bounce_type=bounce_type)])

        suppressions.update_from_events(warehouse)

        assert active(warehouse) == ({"a@example.com": reason} if reason else {})


class TestFromEvents:
    def test_each_suppressing_event_suppresses_its_address_once(self, warehouse):
        ensure_schema(warehouse)
        store(
            warehouse,
            [
                ev("e1", "complained", "c@example.com"),
                ev("e2", "unsubscribed", "u@example.com"),
                ev("e3", "bounced", "h@example.com", bounce_type="hard"),
                ev("e4", "bounced", "s@example.com", bounce_type="soft"),
                ev("e5", "deferred", "d@example.com"),
                ev("e6", "delivered", "ok@example.com"),
                ev("e7", "opened", "o@example.com"),
                ev("e8", "bounced", "legacy@example.com"),  # no bounce_type: not known to be hard
            ],
        )

        assert suppressions.update_from_events(warehouse) == 3
        assert suppressions.update_from_events(warehouse) == 0

        assert active(warehouse) == {
            "c@example.com": "complaint",
            "h@example.com": "hard_bounce",
            "u@example.com": "unsubscribe",
        }
        [row] = fetch_dicts(warehouse, "SELECT * FROM email_suppressions WHERE email = 'c@example.com'", ())
        assert (row["campaign_id"], row["event_id"], row["removed_at"]) == ("c1", "e1", None)

    def test_a_later_delivered_does_not_lift_an_unsubscribe(self, warehouse):
        ensure_schema(warehouse)
        store(
            warehouse,
            [ev("e1", "unsubscribed", "a@example.com", 10), ev("e2", "delivered", "a@example.com", 20)],
        )

        suppressions.update_from_events(warehouse)

        assert active(warehouse) == {"a@example.com": "unsubscribe"}

    def test_the_first_suppressing_event_names_the_reason(self, warehouse):
        ensure_schema(warehouse)
        store(
            warehouse,
            [
                ev("e2", "complained", "a@example.com", 30),
                ev("e1", "bounced", "A@Example.com ", 20, bounce_type="hard"),
            ],
        )

        suppressions.update_from_events(warehouse)

        assert active(warehouse) == {"a@example.com": "hard_bounce"}

    def test_a_removal_is_kept_and_earlier_events_do_not_bring_the_address_back(self, warehouse):
        ensure_schema(warehouse)
        store(warehouse, [ev("e1", "complained", "a@example.com")])
        suppressions.update_from_events(warehouse)

        assert unsuppress(warehouse, "  A@EXAMPLE.COM", "asked support to be mailed again")
        assert suppressions.update_from_events(warehouse) == 0

        assert active(warehouse) == {}
        [row] = fetch_dicts(warehouse, "SELECT removed_at, removal_note FROM email_suppressions", ())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["removed_at"])
        assert row["removal_note"] == "asked support to be mailed again"

    def test_an_event_received_after_the_removal_suppresses_again(self, warehouse):
        ensure_schema(warehouse)
        store(warehouse, [ev("e1", "complained", "a@example.com")])
        suppressions.update_from_events(warehouse)
        unsuppress(warehouse, "a@example.com", "by mistake")
        warehouse.run("UPDATE email_suppressions SET removed_at = '2000-01-01T00:00:00Z'")  # long ago

        store(warehouse, [ev("e2", "unsubscribed", "a@example.com", 99)])
        assert suppressions.update_from_events(warehouse) == 1

        assert active(warehouse) == {"a@example.com": "complaint"}  # the first event still names it
        assert fetch_dicts(warehouse, "SELECT COUNT(*) AS n FROM email_suppressions", ())[0]["n"] == 2


class TestByHand:
    def test_a_plain_insert_of_email_and_reason_is_enough(self, warehouse):
        ensure_schema(warehouse)
        warehouse.run("INSERT INTO email_suppressions (email, reason) VALUES (' Ada@Example.COM ', 'manual')")

        [row] = fetch_dicts(warehouse, "SELECT * FROM email_suppressions", ())
        assert row["reason"] == "manual" and row["removed_at"] is None
        suppressed_at = datetime.fromisoformat(row["suppressed_at"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - suppressed_at).total_seconds()) < 120
        with warehouse.get_conn() as conn:
            assert suppressions.active_among(
                conn.cursor(),
                warehouse.dialect_name,
                warehouse.placeholder,
                {"ada@example.com", "b@example.com"},
            ) == {"ada@example.com"}

    def test_an_address_has_one_active_row_however_it_is_typed(self, warehouse):
        ensure_schema(warehouse)
        assert suppress(warehouse, "ada@example.com")
        assert not suppress(warehouse, "ADA@example.com")
        with pytest.raises(Exception, match=r"(?i)unique"):
            warehouse.run(
                "INSERT INTO email_suppressions (email, reason) VALUES ('Ada@Example.com\t', 'manual')"
            )

    def test_an_unknown_reason_is_refused(self, warehouse):
        ensure_schema(warehouse)
        with pytest.raises(Exception, match=r"(?i)check"):
            warehouse.run("INSERT INTO email_suppressions (email, reason) VALUES ('a@example.com', 'angry')")


class TestScreening:
    def test_a_suppressed_address_is_rejected_and_reserves_nothing(self):
        rows = [("1", "Ada@Example.com"), ("2", "b@example.com"), ("3", "ada@example.com")]

        screened = screen_rows(
            ["recipient_id", "email"],
            rows,
            1,
            lambda emails, ids: (set(), set()),
            suppressed=lambda emails: emails & {"ada@example.com"},
        )

        assert [(r.source_row, r.reason) for r in screened.rejected] == [(1, "suppressed"), (3, "suppressed")]
        assert [(i, e, n) for i, e, _, n in screened.accepted] == [("2", "b@example.com", 2)]


def stage_batch(hook, batch_number: int, emails: list[str], attempts: int = 0) -> None:
    """A planned batch of ``emails`` in campaign c1, staged as the planner stages it."""
    ids = [f"r{batch_number}-{i}" for i in range(len(emails))]
    send_at = datetime(2027, 1, 1, tzinfo=UTC)
    row = ledger.planned_row("c1", batch_number, f"k{batch_number}", ids, send_at, "t")
    hook.insert_rows(ledger.LEDGER_TABLE, [row], target_fields=list(ledger.FIELDS))
    hook.insert_rows(
        "email_campaign_recipients",
        [
            ("c1", batch_number, batch_number * 100 + i, ids[i], e, "{}", 10 * batch_number + i, None)
            for i, e in enumerate(emails)
        ],
        target_fields=list(STAGING_FIELDS),
    )
    for _ in range(attempts):
        ledger.record_attempt(hook, "c1", batch_number)


def staged_emails(hook, batch_number: int) -> list[str]:
    return [
        r["email"]
        for r in fetch_dicts(
            hook,
            "SELECT email FROM email_campaign_recipients "
            f"WHERE batch_number = {hook.placeholder} ORDER BY position",
            (batch_number,),
        )
    ]


class TestDropFromUnsentBatch:
    def test_recipients_suppressed_since_planning_leave_a_batch_never_attempted(self, warehouse):
        ensure_schema(warehouse)
        stage_batch(warehouse, 1, ["a@example.com", "b@example.com", "c@example.com"])
        suppress(warehouse, "B@example.com ")

        assert suppressions.drop_from_unsent_batch(warehouse, "c1", 1) == 1

        entry = ledger.row(warehouse, "c1", 1)
        assert (entry["recipient_count"], json.loads(entry["recipient_ids"]), entry["status"]) == (
            2,
            ["r1-0", "r1-2"],
            "planned",
        )
        assert staged_emails(warehouse, 1) == ["a@example.com", "c@example.com"]
        rejected = fetch_dicts(
            warehouse, "SELECT source_row, recipient_id, email, reason FROM email_rejected_recipients", ()
        )
        assert rejected == [
            {
                "source_row": 11,
                "recipient_id": "r1-1",
                "email": "b@example.com",
                "reason": "suppressed_after_plan",
            }
        ]
        assert suppressions.drop_from_unsent_batch(warehouse, "c1", 1) == 0

    def test_a_batch_once_attempted_is_never_changed(self, warehouse):
        ensure_schema(warehouse)
        stage_batch(warehouse, 1, ["a@example.com", "b@example.com"], attempts=1)
        suppress(warehouse, "b@example.com")

        assert suppressions.drop_from_unsent_batch(warehouse, "c1", 1) == 0

        assert ledger.row(warehouse, "c1", 1)["recipient_count"] == 2
        assert staged_emails(warehouse, 1) == ["a@example.com", "b@example.com"]
        assert fetch_dicts(warehouse, "SELECT COUNT(*) AS n FROM email_rejected_recipients", ())[0]["n"] == 0

    def test_a_batch_with_no_one_left_is_marked_suppressed_and_counts_as_done(self, warehouse):
        ensure_schema(warehouse)
        stage_batch(warehouse, 1, ["a@example.com"])
        suppress(warehouse, "a@example.com")

        assert suppressions.drop_from_unsent_batch(warehouse, "c1", 1) == 1

        entry = ledger.row(warehouse, "c1", 1)
        assert (entry["status"], entry["recipient_count"]) == ("suppressed", 0)
        assert entry["status"] in ledger.SENT_STATUSES  # never resent, holds no room


OLD_EVENTS = """CREATE TABLE email_events (
    event_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, campaign_id TEXT, recipient TEXT NOT NULL,
    type TEXT NOT NULL, reason TEXT, occurred_at BIGINT NOT NULL, received_at TEXT NOT NULL)"""
OLD_DELIVERIES = """CREATE TABLE email_batch_deliveries (
    campaign_id TEXT NOT NULL, batch_number INTEGER NOT NULL, batch_id TEXT NOT NULL,
    delivered INTEGER NOT NULL, bounced INTEGER NOT NULL, deferred INTEGER NOT NULL,
    complained INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (campaign_id, batch_number))"""
OLD_STAGING = """CREATE TABLE email_campaign_recipients (
    campaign_id TEXT NOT NULL, batch_number INTEGER NOT NULL, position INTEGER NOT NULL,
    recipient_id TEXT NOT NULL, email TEXT NOT NULL, variables TEXT NOT NULL,
    PRIMARY KEY (campaign_id, email), UNIQUE (campaign_id, recipient_id))"""


class TestMigration:
    def test_tables_an_earlier_version_created_get_the_new_columns_and_keep_their_rows(self, warehouse):
        warehouse.run([OLD_EVENTS, OLD_DELIVERIES, OLD_STAGING])
        warehouse.run(
            "INSERT INTO email_events VALUES ('e0', 'bat_1', 'c1', 'a@example.com', 'bounced', NULL, 5, 't')"
        )
        warehouse.run("INSERT INTO email_batch_deliveries VALUES ('c1', 1, 'bat_1', 1, 0, 0, 0, 't')")

        ensure_schema(warehouse)
        ensure_schema(warehouse)  # idempotent

        [event] = fetch_dicts(warehouse, "SELECT * FROM email_events", ())
        assert (event["event_id"], event["bounce_type"]) == ("e0", None)
        [counts] = fetch_dicts(warehouse, "SELECT * FROM email_batch_deliveries", ())
        assert (counts["delivered"], counts["unsubscribed"]) == (1, 0)
        columns = fetch_dicts(warehouse, "SELECT * FROM email_campaign_recipients WHERE 1 = 0", ())
        assert columns == []
        store(warehouse, [ev("e1", "bounced", "b@example.com", bounce_type="hard")])
        assert suppressions.update_from_events(warehouse) == 1

    def test_many_processes_creating_the_schema_at_once_all_succeed(self, warehouse):
        from concurrent.futures import ThreadPoolExecutor

        from include.warehouse import get_warehouse_hook

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: ensure_schema(get_warehouse_hook()), range(8)))

        assert results == [None] * 8
        assert active(warehouse) == {}
