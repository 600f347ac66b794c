"""Helpers the test modules share: what the MigoSMTP sandbox received, the ledger checked against
it, the Params a test campaign runs with, and reference implementations that production code does
not need (it plans from a stream and suppresses from events), kept out of ``include/``.

Every claim about what was sent reads the sandbox's own record (``record()``: the
batches it holds) or its request log (``requests()``: every API request, admin
calls aside), never the DAG's account of it. The ``audience`` fixture is in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from include.campaign.audience import REQUIRED_COLUMNS, VARIABLES_COLUMN, Recipient, Rejection, screen_rows
from include.campaign.planner import Batch, BatchPacker, PlanCaps
from include.campaign.settings import campaign_params
from include.campaign.suppressions import active_among
from include.warehouse import SUPPRESSIONS_TABLE, normalized_email_sql, transaction, utc_now_text

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

# The campaign's Params, read from the code: the README's Params table must document each of them.
DOCUMENTED_PARAMS: tuple[str, ...] = tuple(campaign_params())

# The least a campaign needs: names that pass validation, for tests that do not read a table.
MINIMAL_PARAMS = {
    "campaign_id": "c1",
    "recipients_table": "members",
    "from_email": "news@example.com",
    "subject": "Hi",
    "html_body": "<p>Hi</p>",
}
# A small campaign on the demo audience (demo.audience.create_recipients_table): batches of 10,
# caps that never bind, no quota check.
SMALL_CAMPAIGN = {
    "recipients_table": "recipients",
    "from_email": "news@example.com",
    "subject": "Hello {{first_name}}",
    "html_body": "<p>Hi {{first_name}}</p>",
    "text_body": "Hi {{first_name}}",
    "max_batch_size": 10,
    "hourly_cap": 1000,
    "daily_cap": 1000,
    "quota_policy": "ignore",
}


def sends(sandbox) -> list[dict[str, Any]]:
    """Every bulk send the sandbox logged, in order, whatever its answer."""
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "/v1/email/send/bulk"]


def sends_at(url: str) -> list[dict[str, Any]]:
    """``sends`` of the sandbox at ``url``, from a process that has only its address."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/_sandbox/requests", timeout=10) as answer:
        return [r for r in json.load(answer) if r["method"] == "POST" and r["path"] == "/v1/email/send/bulk"]


def api_requests(sandbox) -> list[dict[str, Any]]:
    """Every request to the MigoSMTP API (``/v1/``) the sandbox logged, in order."""
    return [r for r in sandbox.requests() if r["path"].startswith("/v1/")]


def received(sandbox) -> Counter[str]:
    """How many times each address is in a batch the sandbox holds (and will send: not cancelled)."""
    batches = sandbox.record()["batches"]
    return Counter(r["to"] for b in batches if b["status"] != "cancelled" for r in b["recipients"])


def sends_per_key(requests: Iterable[Mapping[str, Any]]) -> Counter[str]:
    return Counter(
        r["idempotency_key"] for r in requests if r["method"] == "POST" and r["path"] == "/v1/email/send/bulk"
    )


def assert_ledger_matches_sandbox(
    ledger: list[dict[str, Any]],
    record: Mapping[str, Any],
    requests: list[dict[str, Any]],
    campaign_id: str,
    batches: int | None = None,
) -> None:
    """Batch for batch: the provider's id, key, slot and recipients; one counted attempt per request sent.

    ``ledger`` is the campaign's rows with their recipient ids; every row must be ``scheduled``
    and the sandbox must hold exactly these batches (``batches`` of them, when given).
    """
    sent = {b["batch_id"]: b for b in record["batches"]}
    posts = sends_per_key(requests)
    assert len(ledger) == len(sent), (len(ledger), len(sent))
    if batches is not None:
        assert len(ledger) == batches, (len(ledger), batches)
    assert {r["idempotency_key"]: r["batch_id"] for r in ledger} == {
        b["idempotency_key"]: b["batch_id"] for b in record["batches"]
    }
    for row in ledger:
        batch = sent[row["batch_id"]]
        assert row["status"] == "scheduled" and row["last_error"] is None, row
        assert row["attempts"] == posts[row["idempotency_key"]], (row, posts[row["idempotency_key"]])
        assert batch["idempotency_key"] == row["idempotency_key"]
        assert batch["send_at"] == row["send_at"]
        ids = json.loads(row["recipient_ids"])
        assert batch["recipient_count"] == row["recipient_count"] == len(ids)
        assert [r["to"].removeprefix("other").removeprefix("user") for r in batch["recipients"]] == [
            f"{i}@example.com" for i in ids
        ]
        assert f"batch:{campaign_id}:{row['batch_number']}" in batch["tags"]


# -- planning without a stream ---------------------------------------------------------------


def plan_batches(
    recipient_count: int, caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
) -> list[Batch]:
    """The batches for a known number of recipients (the planner's packing, without a stream)."""
    packer = BatchPacker(caps, start_at, occupied)
    packer.take(recipient_count)
    packer.finish()
    return packer.batches


@dataclass
class ScreenedChunk:
    accepted: list[Recipient] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def screen_chunk(
    rows: list[dict[str, Any]],
    first_source_row: int,
    known_emails: set[str],
    known_ids: set[str],
) -> ScreenedChunk:
    """``audience.screen_rows`` for rows as dicts (a DataFrame's records), with the staged keys
    given (``known_emails``/``known_ids``, not changed)."""
    # Extra columns are the first row's, as in a table; a variables value is read from every row.
    columns = list(rows[0]) if rows else list(REQUIRED_COLUMNS)
    if VARIABLES_COLUMN not in columns:
        columns.append(VARIABLES_COLUMN)

    def staged(emails: set[str], ids: set[str]) -> tuple[set[str], set[str]]:
        return emails & known_emails, ids & known_ids

    screened = screen_rows(columns, [[r.get(c) for c in columns] for r in rows], first_source_row, staged)
    return ScreenedChunk(
        [Recipient(i, e, json.loads(v)) for i, e, v, _ in screened.accepted],
        screened.rejected,
    )


# -- the suppression list by hand (the README gives operators the SQL) ------------------------


def suppress(hook: DbApiHook, email: str, reason: str = "manual", note: str | None = None) -> bool:
    """Suppress an address as an operator's INSERT would; False if it already is."""
    dialect, p = hook.dialect_name, hook.placeholder
    with transaction(hook) as cur:
        if active_among(cur, dialect, p, {email.strip().lower()}):
            return False
        cur.execute(
            f"INSERT INTO {SUPPRESSIONS_TABLE} (email, reason, note) VALUES ({p}, {p}, {p})",
            (email, reason, note),
        )
        return True


def unsuppress(hook: DbApiHook, email: str, note: str) -> bool:
    """Lift an address's suppression as the README's UPDATE does, keeping the row for an audit."""
    dialect, p = hook.dialect_name, hook.placeholder
    with transaction(hook) as cur:
        cur.execute(
            f"UPDATE {SUPPRESSIONS_TABLE} SET removed_at = {p}, removal_note = {p} "
            f"WHERE removed_at IS NULL "
            f"AND {normalized_email_sql(dialect)} = {normalized_email_sql(dialect, p)}",
            (utc_now_text(), note, email),
        )
        return cur.rowcount > 0


def suppression_reason(event_type: str, bounce_type: str | None = None) -> str | None:
    """The reference for which events suppress an address, and why (the reconcile does it in SQL):
    complaints, unsubscribes and hard bounces; never a soft or unspecified bounce, nor a deferral."""
    if event_type == "bounced":
        return "hard_bounce" if bounce_type == "hard" else None
    return {"complained": "complaint", "unsubscribed": "unsubscribe"}.get(event_type)


def metadata_run_state(dag_id: str, run_id: str) -> str | None:
    """A run's state read from the metadata database: ``plan_campaign``'s ``run_state`` for a step
    called outside a task (a task asks the API server, ``ti.get_dagrun_state``)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))


def fail_runs_left_running(dag_id: str = "bulk_email_campaign") -> list[str]:
    """Mark failed the DAG's runs a killed process left ``running``, as the scheduler does once it
    finds their tasks' processes gone (or an operator, with "Mark run as failed"); returns their ids.
    Until then a run for their campaign is refused: the run still looks live."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.state == DagRunState.RUNNING)
        )
        failed = []
        for run in runs:
            run.set_state(DagRunState.FAILED)
            failed.append(run.run_id)
    return failed


def due_in(seconds: int) -> tuple[datetime, int]:
    """A ``start_at`` and ``submit_ahead_minutes`` (1) that make the first slot's batches due
    ``seconds`` from now: tests of waiting batches wait seconds, not an hour. (The first slot's
    ``send_at`` is ``start_at`` itself, to the second.) ``seconds`` is the margin a test needs for
    what it does before the submit time: plan, and steer from another process."""
    start_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1, seconds=seconds)
    return start_at, 1


def wait_for_plan(hook: DbApiHook, campaign_id: str, batches: int = 1, seconds: float = 180) -> list[dict]:
    """The campaign's ledger once it holds ``batches`` rows: a run elsewhere has planned (its tables
    may not exist yet; a fresh process imports Airflow first, which is slow on a busy machine)."""
    import time

    from include.campaign.ledger import rows

    deadline = time.monotonic() + seconds
    while True:
        try:
            found = rows(hook, campaign_id)
        except Exception:  # not created yet
            found = []
        if len(found) >= batches:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"campaign {campaign_id} was not planned within {seconds} s")
        time.sleep(0.2)
