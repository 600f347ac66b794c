"""A plan that does not finish holds nothing: not when it fails in its process, not when the
process is killed, and what a dead plan left is cleared by the next plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from demo.audience import create_recipients_table
from include.campaign import definition, ledger, staging
from include.campaign.ledger import held_by_others
from include.campaign.plan import plan_campaign
from include.warehouse import ensure_schema, fetch_dicts
from tests.conftest import REPO_ROOT

START = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
PARAMS = {
    "from_email": "news@example.com",
    "subject": "Hello {{first_name}}",
    "html_body": "<p>Hi</p>",
    "text_body": "Hi",
    "max_batch_size": 10,
    "hourly_cap": 1000,
    "daily_cap": 1000,
    "start_at": "2027-03-01T09:00:00Z",
    "quota_policy": "ignore",  # no provider to ask: this is about the warehouse
}


def count(hook, table: str, campaign_id: str) -> int:
    sql = f"SELECT COUNT(*) AS n FROM {table} WHERE campaign_id = {hook.placeholder}"
    return int(fetch_dicts(hook, sql, (campaign_id,))[0]["n"])


def status(hook, campaign_id: str) -> str | None:
    found = definition.read(hook, campaign_id)
    return found and found["status"]


def holds_nothing_for_others(hook) -> None:
    assert ledger.occupied_slots(hook, START, "other") == {}
    assert held_by_others(hook, "other") == 0


def failing_view(hook, fail_at: int) -> None:
    """``recipients`` (300 rows, read in index order) behind a view whose row ``fail_at`` makes
    the warehouse raise mid-read, after earlier chunks were planned and committed."""
    create_recipients_table(hook, "recipients", 300)
    hook.run("CREATE INDEX recipients_order ON recipients (recipient_id, email)")
    boom = (
        f"json(CASE WHEN recipient_id = {fail_at} THEN 'not json' ELSE '1' END)"  # malformed JSON
        if hook.dialect_name == "sqlite"
        else f"1 / (recipient_id - {fail_at})"  # division by zero
    )
    hook.run(f"CREATE VIEW failing AS SELECT recipient_id, email, first_name, {boom} AS boom FROM recipients")


class TestAPlanThatFailsPartWay:
    @pytest.mark.parametrize("dry_run", [False, True], ids=["send", "dry_run"])
    def test_keeps_no_batch_or_staged_recipient_and_says_plan_failed(self, warehouse, dry_run):
        ensure_schema(warehouse)
        failing_view(warehouse, fail_at=250)
        params = {**PARAMS, "recipients_table": "failing", "campaign_id": "c1", "dry_run": dry_run}

        with pytest.raises(Exception, match="(?i)json|division by zero"):
            plan_campaign(params, chunk_rows=100)

        assert count(warehouse, "email_batch_ledger", "c1") == 0
        assert count(warehouse, "email_campaign_recipients", "c1") == 0
        assert status(warehouse, "c1") == definition.PLAN_FAILED  # the Campaigns view shows it
        holds_nothing_for_others(warehouse)

    def test_cannot_be_resumed_and_is_planned_afresh_once_the_table_reads(self, warehouse):
        ensure_schema(warehouse)
        failing_view(warehouse, fail_at=250)
        params = {**PARAMS, "recipients_table": "failing", "campaign_id": "c1"}
        with pytest.raises(Exception, match="(?i)json|division by zero"):
            plan_campaign(params, chunk_rows=100)

        with pytest.raises(AirflowFailException, match="no ledger to resume"):
            plan_campaign({**params, "mode": "retry_failed"}, chunk_rows=100)
        warehouse.run(["DROP VIEW failing", "DELETE FROM recipients WHERE recipient_id = 250"])
        warehouse.run("CREATE VIEW failing AS SELECT recipient_id, email, first_name FROM recipients")
        batches = plan_campaign(params, chunk_rows=100)

        assert sum(b["recipient_count"] for b in batches) == 299
        assert status(warehouse, "c1") == definition.PLANNED

    def test_the_writer_refusing_a_chunk_fails_the_plan_with_nothing_kept_and_no_thread(self, warehouse):
        # The staging table refuses one address from the fourth chunk on, while the plan screens
        # the chunk after it: on SQLite as a constraint (the chunk is placed again and refused
        # again), on PostgreSQL as an error of its own.
        ensure_schema(warehouse)
        create_recipients_table(warehouse, "recipients", 300)
        [found] = fetch_dicts(warehouse, "SELECT email FROM recipients WHERE recipient_id = 170", ())
        email = found["email"]
        if warehouse.dialect_name == "sqlite":
            warehouse.run(
                "CREATE TRIGGER refuse BEFORE INSERT ON email_campaign_recipients "
                f"WHEN NEW.email = '{email}' BEGIN SELECT RAISE(ABORT, 'refused by the warehouse'); END"
            )
        else:
            warehouse.run(
                [
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.email = '{email}' THEN RAISE EXCEPTION 'refused by the warehouse'; END IF; "
                    "RETURN NEW; END $$",
                    "CREATE TRIGGER refuse BEFORE INSERT ON email_campaign_recipients "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()",
                ]
            )
        params = {**PARAMS, "recipients_table": "recipients", "campaign_id": "c1"}

        with pytest.raises(Exception, match="refused by the warehouse"):
            plan_campaign(params, chunk_rows=50)

        assert count(warehouse, "email_batch_ledger", "c1") == 0
        assert count(warehouse, "email_campaign_recipients", "c1") == 0
        assert status(warehouse, "c1") == definition.PLAN_FAILED
        assert not [t for t in threading.enumerate() if t.name.startswith("plan-writer")]
        holds_nothing_for_others(warehouse)

    def test_a_refused_replacement_leaves_the_finished_plan_it_would_replace(self, warehouse):
        create_recipients_table(warehouse, "recipients", 30)
        params = {**PARAMS, "recipients_table": "recipients", "campaign_id": "c1", "dry_run": True}
        plan_campaign(params)
        warehouse.run("CREATE TABLE no_emails (recipient_id INTEGER)")

        with pytest.raises(AirflowFailException, match="lacks column"):
            plan_campaign({**params, "recipients_table": "no_emails"})

        assert count(warehouse, "email_batch_ledger", "c1") == 3
        assert status(warehouse, "c1") == definition.DRY_RUN


# Run in a child process: plan, and die by SIGKILL right after the plan's second chunk commits.
_DIE_AFTER_TWO_CHUNKS = """
import json, os, signal, sys
from include.campaign import staging
from include.campaign.plan import plan_campaign

finish_chunk, written = staging.PlanWriter._finish_chunk, []
def finish_then_die(self, *rows):  # in the writer's thread: the kill ends the whole process
    finish_chunk(self, *rows)
    written.append(1)
    if len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
staging.PlanWriter._finish_chunk = finish_then_die
plan_campaign(json.loads(sys.argv[1]), chunk_rows=50)
"""


class TestAPlanWhoseProcessIsKilled:
    def test_holds_nothing_and_the_next_plan_clears_it_once_it_is_stale(self, warehouse):
        ensure_schema(warehouse)
        create_recipients_table(warehouse, "recipients", 300)
        params = {**PARAMS, "recipients_table": "recipients", "campaign_id": "dead"}
        child = subprocess.run(
            [sys.executable, "-c", _DIE_AFTER_TWO_CHUNKS, json.dumps(params)],
            cwd=REPO_ROOT,
            env=os.environ.copy(),
            capture_output=True,
            text=True,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
        assert count(warehouse, "email_batch_ledger", "dead") > 0  # it died part-way
        holds_nothing_for_others(warehouse)
        assert status(warehouse, "dead") == definition.PLANNING

        # A plan within the dead plan's lease books the first slot as if it were not there.
        other = {**params, "campaign_id": "other", "max_batch_size": 1000}
        assert [b["send_at"] for b in plan_campaign(other)] == ["2027-03-01T09:00:00Z"]
        assert count(warehouse, "email_batch_ledger", "dead") > 0

        stale = datetime.now(UTC) - staging.ABANDONED_AFTER - timedelta(minutes=1)
        warehouse.run(
            f"UPDATE email_campaigns SET updated_at = {warehouse.placeholder} WHERE campaign_id = 'dead'",
            parameters=(stale.strftime("%Y-%m-%dT%H:%M:%SZ"),),
        )
        plan_campaign({**other, "campaign_id": "third"})

        assert count(warehouse, "email_batch_ledger", "dead") == 0
        assert count(warehouse, "email_campaign_recipients", "dead") == 0
        assert status(warehouse, "dead") == definition.PLAN_FAILED


def planning(hook, campaign_id: str) -> None:
    definition.record(hook, campaign_id, {}, dag_id="d", run_id="", dry_run=False, status=definition.PLANNING)


class TestFinishPlan:
    def test_refuses_a_plan_cleared_as_abandoned_while_it_was_written(self, warehouse):
        ensure_schema(warehouse)
        definition.record(
            warehouse, "c1", {}, dag_id="d", run_id="r", dry_run=False, status=definition.PLANNING
        )
        with staging.PlanWriter(warehouse, "c1") as writer:
            writer.write_chunk([("c1", 1, 1, "r1", "a@example.com", "{}", 1, None)], [], [])

        assert staging.clear_abandoned_plans(warehouse, now=datetime.now(UTC) + timedelta(days=1)) == ["c1"]
        with pytest.raises(definition.PlanCleared, match="cleared as abandoned"):
            definition.finish_plan(warehouse, "c1", dry_run=False)
        assert count(warehouse, "email_campaign_recipients", "c1") == 0

    def test_a_chunk_keeps_its_plan_from_looking_abandoned(self, warehouse):
        ensure_schema(warehouse)
        definition.record(
            warehouse, "c1", {}, dag_id="d", run_id="r", dry_run=False, status=definition.PLANNING
        )
        warehouse.run("UPDATE email_campaigns SET updated_at = '2000-01-01T00:00:00Z'")
        with staging.PlanWriter(warehouse, "c1") as writer:
            writer.write_chunk([("c1", 1, 1, "r1", "a@example.com", "{}", 1, None)], [], [])

        assert staging.clear_abandoned_plans(warehouse) == []
        definition.finish_plan(warehouse, "c1", dry_run=False)
        assert status(warehouse, "c1") == definition.PLANNED


# -- hostile rows: variables that would not encode, or would swell a request ------------------

HOSTILE = {
    "2": '{"first_name": NaN}',
    "4": '{"first_name": 1e999}',
    "6": '{"first_name": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "8": '{"first_name": "' + "x" * 20_000 + '"}',
}


def test_hostile_variables_are_rejected_and_the_rest_staged(warehouse):
    ensure_schema(warehouse)
    warehouse.run("CREATE TABLE hostile (recipient_id TEXT, email TEXT, variables TEXT)")
    rows = [
        (str(i), f"r{i}@example.com", HOSTILE.get(str(i), f'{{"first_name": "R{i}"}}')) for i in range(1, 11)
    ]
    warehouse.insert_rows("hostile", rows, target_fields=["recipient_id", "email", "variables"])
    params = {**PARAMS, "recipients_table": "hostile", "campaign_id": "c1", "dry_run": False}

    plan_campaign(params, chunk_rows=3)

    p = warehouse.placeholder
    where = f"WHERE campaign_id = {p}"
    rejected = fetch_dicts(
        warehouse, f"SELECT recipient_id, reason FROM email_rejected_recipients {where}", ("c1",)
    )
    staged = fetch_dicts(
        warehouse, f"SELECT recipient_id, variables FROM email_campaign_recipients {where}", ("c1",)
    )
    assert sorted((r["recipient_id"], r["reason"]) for r in rejected) == [
        (i, "invalid_variables") for i in sorted(HOSTILE)
    ]
    assert sorted(s["recipient_id"] for s in staged) == sorted(str(i) for i in (1, 3, 5, 7, 9, 10))
    assert all(len(s["variables"]) < 100 for s in staged)
