"""A new plan's writes: chunks of any size give the same plan, and a chunk is written whole or not at all."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from demo.audience import create_recipients_table
from include.campaign.plan import plan_campaign
from include.campaign.staging import PlanWriter
from include.warehouse import ensure_schema, fetch_dicts

PARAMS = {
    "from_email": "news@example.com",
    "subject": "Hello {{first_name}}",
    "html_body": "<p>Hi</p>",
    "text_body": "Hi",
    "max_batch_size": 40,
    "hourly_cap": 150,
    "daily_cap": 400,
    "start_at": "2027-03-01T09:30:00Z",
    "dry_run": True,  # so the two plans compared do not hold slots against each other
    "quota_policy": "ignore",  # about staging: no provider to ask
}


def written_plan(hook, campaign_id: str) -> dict[str, list[dict]]:
    p = hook.placeholder
    return {
        "staged": fetch_dicts(
            hook,
            "SELECT batch_number, position, recipient_id, email, variables FROM email_campaign_recipients "
            f"WHERE campaign_id = {p} ORDER BY position",
            (campaign_id,),
        ),
        "rejected": fetch_dicts(
            hook,
            "SELECT source_row, recipient_id, email, reason FROM email_rejected_recipients "
            f"WHERE campaign_id = {p} ORDER BY source_row",
            (campaign_id,),
        ),
        "ledger": fetch_dicts(
            hook,
            "SELECT batch_number, idempotency_key, recipient_ids, recipient_count, status, send_at "
            f"FROM email_batch_ledger WHERE campaign_id = {p} ORDER BY batch_number",
            (campaign_id,),
        ),
    }


class TestChunkSize:
    @pytest.mark.parametrize("chunk_rows", [1, 7, 40, 41])
    def test_any_chunk_size_gives_the_plan_one_chunk_gives(self, warehouse, chunk_rows):
        # Every fourth bad row is a duplicate whose first occurrence is many chunks earlier
        # (ids past 10,000,000 sort last), so de-duplication must cross chunks.
        create_recipients_table(warehouse, "recipients", 900, bad_every=9)
        params = {**PARAMS, "recipients_table": "recipients"}

        whole = plan_campaign({**params, "campaign_id": "whole"}, chunk_rows=100_000)
        chunked = plan_campaign({**params, "campaign_id": "chunked"}, chunk_rows=chunk_rows)

        expected, got = written_plan(warehouse, "whole"), written_plan(warehouse, "chunked")
        assert chunked == whole
        assert got["staged"] == expected["staged"]
        assert got["rejected"] == expected["rejected"]
        assert [{**r, "idempotency_key": None} for r in got["ledger"]] == [
            {**r, "idempotency_key": None} for r in expected["ledger"]
        ]
        assert len(expected["staged"]) == 900
        assert {r["reason"] for r in expected["rejected"]} == {
            "invalid_email",
            "duplicate_email",
            "duplicate_recipient_id",
            "missing_email",
        }
        # The caps bind (150 an hour, 400 a day), so batches close on slots as well as on size.
        assert {r["recipient_count"] for r in expected["ledger"]} == {20, 30, 40}


class TestPlanWriter:
    def test_a_chunk_that_fails_to_write_leaves_none_of_its_rows(self, warehouse):
        ensure_schema(warehouse)
        staged = [("c1", 1, 1, "r1", "a@example.com", "{}", 1, None)]
        planned_twice = [
            ("c1", 1, None, "k1", '["r1"]', 1, "planned", "2027-03-01T09:00:00Z", 0, None, "t", "t", None),
        ] * 2  # the ledger's key refuses the second row

        refused = pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError))
        with PlanWriter(warehouse, "c1") as writer, refused:
            writer.write_chunk(staged, [("c1", 2, "r2", None, "missing_email", None)], planned_twice)

        for table in ("email_campaign_recipients", "email_rejected_recipients", "email_batch_ledger"):
            assert fetch_dicts(warehouse, f"SELECT COUNT(*) AS n FROM {table}", ())[0]["n"] == 0, table

    def test_staged_names_only_this_campaigns_earlier_rows(self, warehouse):
        ensure_schema(warehouse)
        with PlanWriter(warehouse, "c1") as writer:
            writer.write_chunk([("c1", 1, 1, "r1", "a@example.com", "{}", 1, None)], [], [])
        with PlanWriter(warehouse, "c2") as writer:
            writer.write_chunk([("c2", 1, 1, "r2", "b@example.com", "{}", 1, None)], [], [])

            assert writer.staged({"a@example.com", "b@example.com"}, {"r1", "r2", "r3"}) == (
                {"b@example.com"},
                {"r2"},
            )
            assert writer.staged(set(), set()) == (set(), set())


class TestDuplicatesOfEarlierChunks:
    def test_are_rejected_and_do_not_count_against_max_map_length(self, warehouse):
        # 30 recipients, then 5 rows repeating the first five addresses (ids that sort last, so
        # in the second chunk). Taken as new they would need a fourth batch of 10; they are not.
        warehouse.run(["CREATE TABLE members (recipient_id INTEGER, email TEXT)"])
        rows = [(n, f"u{n}@x.io") for n in range(1, 31)] + [(100 + n, f" U{n}@X.io") for n in range(1, 6)]
        warehouse.insert_rows("members", rows, executemany=True)
        params = {**PARAMS, "recipients_table": "members", "campaign_id": "c1", "max_batch_size": 10}
        params.update(hourly_cap=1000, daily_cap=1000)

        batches = plan_campaign(params, chunk_rows=20, max_batches=3)

        assert [b["recipient_count"] for b in batches] == [10, 10, 10]
        plan = written_plan(warehouse, "c1")
        assert [(r["source_row"], r["reason"]) for r in plan["rejected"]] == [
            (31 + n, "duplicate_email") for n in range(5)
        ]
