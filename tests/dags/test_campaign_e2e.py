"""The real DAG, end to end, with dag.test() against the MigoSMTP sandbox process and a SQLite warehouse.

Every assertion about what was sent reads the sandbox's own record, not the DAG's claims.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from demo.audience import create_recipients_table, sample_rows
from include.campaign import definition
from include.campaign.ledger import rows as ledger_rows
from tests.conftest import ALL_AT_ONCE, DAY, NEXT_DAY
from tests.helpers import sends

ARTICLE_CONF = {"start_at": f"{DAY}T14:00:00Z", "hourly_cap": 150, "daily_cap": 1500}
SUBJECT = "Hi {{first_name}}, {{segment}} news"
HTML = "<p>Hello {{first_name}} &amp; welcome</p>"
TEXT = "Hello {{first_name}}"


def ledger_by_batch(warehouse, campaign_id="c1"):
    return {r["batch_number"]: r for r in ledger_rows(warehouse, campaign_id, with_recipient_ids=True)}


class TestArticleCampaign:
    def test_5000_recipients_are_scheduled_once_each_within_the_caps(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 5000, bad_every=100)

        run = run_campaign(**ARTICLE_CONF, subject=SUBJECT, html_body=HTML, text_body=TEXT)

        assert run.state == "success"
        record = sandbox.record()["batches"]
        assert len(record) == 34
        received = Counter(r["to"] for b in record for r in b["recipients"])
        assert len(received) == 5000 and set(received.values()) == {1}
        # Of two rows sharing a recipient_id, the first in (recipient_id, email) order is kept.
        shared_ids = {row[0] for row in sample_rows(5000, 100) if str(row[1]).startswith("other")}
        assert len(shared_ids) == 12
        assert set(received) == {
            f"{'other' if n in shared_ids else 'user'}{n}@example.com" for n in range(1, 5001)
        }
        per_day, per_hour = Counter(), Counter()
        for b in record:
            per_day[b["send_at"][:10]] += b["recipient_count"]
            per_hour[b["send_at"][:13]] += b["recipient_count"]
            assert b["subject"] == SUBJECT and b["html"] == HTML and b["text"] == TEXT
        assert [per_day[day] for day in sorted(per_day)] == [1500, 1500, 1500, 500]
        assert max(per_hour.values()) == 150
        first = next(b for b in record if b["recipients"][0]["to"] == "user1@example.com")
        assert first["recipients"][0]["variables"] == {"first_name": "Ada", "segment": "s1"}
        assert first["send_at"] == f"{DAY}T14:00:00Z"

    def test_ledger_matches_the_sandbox_batch_for_batch(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 5000, bad_every=100)

        run_campaign(**ARTICLE_CONF)

        ledger = ledger_by_batch(warehouse)
        record = {b["batch_id"]: b for b in sandbox.record()["batches"]}
        assert len(ledger) == len(record) == 34
        for number, row in ledger.items():
            sent = record[row["batch_id"]]
            assert row["status"] == "scheduled" and row["attempts"] == 1 and row["last_error"] is None
            assert sent["send_at"] == row["send_at"]
            assert sent["idempotency_key"] == row["idempotency_key"]
            assert sent["recipient_count"] == row["recipient_count"] == len(json.loads(row["recipient_ids"]))
            assert f"batch:c1:{number}" in sent["tags"] and "campaign:c1" in sent["tags"]
            assert [r["to"].removeprefix("other").removeprefix("user") for r in sent["recipients"]] == [
                f"{i}@example.com" for i in json.loads(row["recipient_ids"])
            ]

    def test_rejected_rows_are_recorded_with_their_reason(self, run_campaign, warehouse):
        create_recipients_table(warehouse, "recipients", 400, bad_every=100)

        run_campaign(**ARTICLE_CONF)

        rejected = warehouse.get_records(
            "SELECT reason, email FROM email_rejected_recipients ORDER BY reason"
        )
        assert [r[0] for r in rejected] == [
            "duplicate_email",
            "duplicate_recipient_id",
            "invalid_email",
            "missing_email",
        ]

    def test_mapped_tasks_are_labelled_with_batch_slot_and_size(self, run_campaign, warehouse):
        create_recipients_table(warehouse, "recipients", 320)

        run = run_campaign(**ARTICLE_CONF)

        labels = [run.task("send_batch", i).rendered_map_index for i in range(3)]
        assert labels == [
            f"batch 1/3 · {DAY}T14:00Z · 150",
            f"batch 2/3 · {DAY}T15:00Z · 150",
            f"batch 3/3 · {DAY}T16:00Z · 20",
        ]

    def test_1000_recipients_at_250_per_request_take_4_requests(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 1000)

        run_campaign(max_batch_size=250, hourly_cap=100_000, daily_cap=100_000, start_at=None)

        assert len(sends(sandbox)) == 4
        assert [b["recipient_count"] for b in sandbox.record()["batches"]] == [250] * 4


class TestRerunsNeverSendTwice:
    def test_dry_run_plans_and_records_but_sends_nothing(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 320)

        run = run_campaign(**ARTICLE_CONF, dry_run=True)

        assert run.state == "success"
        assert run.states("send_batch") == ["skipped"] * 3
        assert [r["path"] for r in sandbox.requests()] == ["/v1/account/quota"]  # the projection only
        assert [r["status"] for r in ledger_by_batch(warehouse).values()] == ["planned"] * 3

    def test_a_dry_run_can_be_followed_by_the_real_send(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 320)
        run_campaign(**ARTICLE_CONF, dry_run=True)

        run = run_campaign(**ARTICLE_CONF)

        assert run.state == "success"
        assert [r["status"] for r in ledger_by_batch(warehouse).values()] == ["scheduled"] * 3
        assert sum(b["recipient_count"] for b in sandbox.record()["batches"]) == 320

    def test_triggering_a_sent_campaign_again_sends_nothing_even_if_the_table_grew(
        self, run_campaign, warehouse, sandbox
    ):
        create_recipients_table(warehouse, "recipients", 320)
        run_campaign(**ARTICLE_CONF)
        create_recipients_table(warehouse, "recipients", 400)  # the table grew meanwhile

        run = run_campaign(**ARTICLE_CONF)

        # The same definition: the run finishes the campaign, whose audience was frozen at its first
        # plan, and every batch is already at the provider.
        assert run.state == "success"
        assert run.states("plan") == ["success"]
        assert len(sends(sandbox)) == 3
        assert sum(b["recipient_count"] for b in sandbox.record()["batches"]) == 320
        assert [r["status"] for r in ledger_by_batch(warehouse).values()] == ["scheduled"] * 3


class TestBadInputStopsBeforeSending:
    @pytest.mark.parametrize(
        "setup",
        [
            pytest.param(None, id="missing table"),
            pytest.param("CREATE TABLE recipients (recipient_id INTEGER, mail TEXT)", id="missing column"),
            pytest.param("CREATE TABLE recipients (recipient_id INTEGER, email TEXT)", id="empty table"),
            pytest.param(
                "CREATE TABLE recipients AS SELECT 1 AS recipient_id, 'not-an-address' AS email",
                id="no valid recipient",
            ),
        ],
    )
    def test_run_fails_in_plan_and_nothing_is_sent(self, run_campaign, warehouse, sandbox, setup):
        if setup:
            warehouse.run(setup)

        run = run_campaign(**ARTICLE_CONF)

        assert run.state == "failed"
        assert run.states("plan") == ["failed"]
        assert run.states("send_batch") == ["upstream_failed"]
        assert run.task("plan").try_number == 1  # bad input is not retried
        assert sandbox.requests() == []

    def test_invalid_params_are_refused_before_the_run_starts(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 10)

        for bad in (
            {"hourly_cap": 0},
            {"max_batch_size": 1001},
            {"campaign_id": "no spaces"},
            {"mode": "x"},
            {"recipients_table": "recipients; DROP TABLE x"},
        ):
            with pytest.raises(Exception, match="Invalid input for param|ParamValidationError|not valid"):
                run_campaign(**{**ARTICLE_CONF, **bad})

        assert sandbox.requests() == []


class TestResendingOnlyWhatFailed:
    """What clearing the failed mapped tasks runs: every batch's send_batch again, then close_ledger."""

    def test_a_cleared_run_sends_only_the_failed_batch_and_then_succeeds(
        self, run_campaign, warehouse, sandbox
    ):
        from include.campaign.close import close_ledger
        from include.campaign.send import send_batch

        create_recipients_table(warehouse, "recipients", 30)
        conf = {
            "max_batch_size": 10,
            "hourly_cap": 1000,
            "daily_cap": 1000,
            "start_at": f"{DAY}T09:00:00Z",
            "submit_ahead_minutes": ALL_AT_ONCE,
        }
        sandbox.set_faults([{"action": "status", "status": 400, "message": "bad html", "times": 1}])
        assert run_campaign(**conf).state == "failed"
        [failed] = [r for r in ledger_by_batch(warehouse).values() if r["status"] == "failed"]
        posts_before = len(sends(sandbox))

        params = {
            "campaign_id": "c1",
            "recipients_table": "recipients",
            "from_email": "news@example.com",
            "subject": "s",
            "html_body": "h",
            "text_body": "t",
            **conf,
        }
        outcomes = [send_batch({"batch_number": n}, params, run_id="the-same-run") for n in (1, 2, 3)]

        assert [o["resent"] for o in outcomes] == [
            o["batch_number"] == failed["batch_number"] for o in outcomes
        ]
        assert len(sends(sandbox)) == posts_before + 1
        planned = [{"batch_number": n} for n in (1, 2, 3)]
        assert close_ledger(params, planned=planned, run_id="the-same-run")["scheduled"] == 3
        received = Counter(r["to"] for b in sandbox.record()["batches"] for r in b["recipients"])
        assert len(received) == 30 and set(received.values()) == {1}


class TestCapsAreTheAccounts:
    def test_a_second_campaign_fills_around_what_the_first_scheduled(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 200)
        conf = {"start_at": f"{DAY}T09:00:00Z", "hourly_cap": 150, "daily_cap": 1500}
        assert run_campaign(campaign_id="first", **conf).state == "success"

        assert run_campaign(campaign_id="second", **conf).state == "success"

        per_hour = Counter()
        for b in sandbox.record()["batches"]:
            per_hour[b["send_at"]] += b["recipient_count"]
        assert per_hour == {
            f"{DAY}T09:00:00Z": 150,
            f"{DAY}T10:00:00Z": 150,
            f"{DAY}T11:00:00Z": 100,
        }

    def test_the_daily_cap_counts_what_was_scheduled_earlier_that_day(self, run_campaign, warehouse, sandbox):
        create_recipients_table(warehouse, "recipients", 200)
        assert (
            run_campaign(
                campaign_id="morning", start_at=f"{DAY}T00:00:00Z", hourly_cap=100, daily_cap=250
            ).state
            == "success"
        )

        run_campaign(campaign_id="evening", start_at=f"{DAY}T20:00:00Z", hourly_cap=100, daily_cap=250)

        evening = [b for b in sandbox.record()["batches"] if "campaign:evening" in b["tags"]]
        assert sorted((b["send_at"], b["recipient_count"]) for b in evening) == [
            (f"{DAY}T20:00:00Z", 50),
            (f"{NEXT_DAY}T00:00:00Z", 100),
            (f"{NEXT_DAY}T01:00:00Z", 50),
        ]


class TestDeliveriesReachTheLedger:
    def test_the_reconcile_dag_marks_batches_delivered_from_stored_events(
        self, run_campaign, warehouse, sandbox
    ):
        from airflow.dag_processing.dagbag import DagBag

        from include.migosmtp.webhooks import DeliveryEvent, store
        from tests.conftest import REPO_ROOT

        create_recipients_table(warehouse, "recipients", 20)
        run_campaign(max_batch_size=10, hourly_cap=1000, daily_cap=1000)
        batches = sandbox.record()["batches"]
        # Webhooks for the first batch only: every recipient delivered, one bounce; the second stays out.
        first, second = sorted(batches, key=lambda b: b["tags"])
        events = [
            DeliveryEvent(
                f"ev{i}",
                "bounced" if i == 0 else "delivered",
                first["batch_id"],
                r["to"],
                tuple(first["tags"]),
                100,
                None,
            )
            for i, r in enumerate(first["recipients"])
        ]
        store(warehouse, events + events[:3])  # with a few redeliveries

        DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["migosmtp_delivery_reconcile"].test()

        by_batch = {r["batch_id"]: r["status"] for r in ledger_rows(warehouse, "c1")}
        assert by_batch == {first["batch_id"]: "delivered", second["batch_id"]: "scheduled"}
        counts = warehouse.get_records("SELECT delivered, bounced FROM email_batch_deliveries")
        assert [tuple(c) for c in counts] == [(9, 1)]

    def test_polling_the_provider_gives_the_same_ledger_without_webhooks(
        self, run_campaign, warehouse, sandbox
    ):
        from airflow.dag_processing.dagbag import DagBag

        from tests.conftest import REPO_ROOT

        create_recipients_table(warehouse, "recipients", 20)
        sandbox.update_settings(bounce_rate=0.5)  # per-recipient draws: 0.2 left all 20 delivered ~1% of runs
        run_campaign(max_batch_size=10, hourly_cap=1000, daily_cap=1000)
        sandbox.advance(3600)  # no webhook_url: the sandbox delivers, and only polling can tell
        deadline = time.monotonic() + 30
        while (
            any(b["status"] != "delivered" for b in sandbox.record()["batches"])
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)

        DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["migosmtp_delivery_reconcile"].test(
            run_conf={"source": "polling"}
        )

        expected = {
            b["batch_id"]: (b["counts"]["delivered"], b["counts"]["bounced"])
            for b in sandbox.record()["batches"]
        }
        rows = warehouse.get_records("SELECT batch_id, delivered, bounced FROM email_batch_deliveries")
        got = {batch_id: (delivered, bounced) for batch_id, delivered, bounced in rows}
        assert got == expected and sum(b for _, b in got.values()) > 0
        assert {r["status"] for r in ledger_rows(warehouse, "c1")} == {"delivered"}
        assert definition.read(warehouse, "c1")["status"] == definition.DELIVERED
