"""Hostile recipient rows, end to end (issue 20): the real DAG with dag.test(), the sandbox and both
warehouses. A row whose variables are NaN, or nested 100,000 deep, is rejected ``invalid_variables``
at plan; every other row is planned, sent once, and its variables reach the provider as given.

Before the fix the NaN row was staged and its batch failed on every attempt (``attempts`` raised,
nothing scheduled), and the deep row aborted the whole plan with RecursionError.
"""

from __future__ import annotations

import json

from include.warehouse import fetch_dicts
from tests.conftest import DAY

CONF = {"start_at": f"{DAY}T14:00:00Z", "hourly_cap": 150, "daily_cap": 1500, "max_batch_size": 10}
DEEP = '{"first_name": "Deep", "tree": ' + "[" * 100_000 + "]" * 100_000 + "}"
HOSTILE = {7: '{"first_name": NaN}', 15: DEEP, 22: '{"first_name": "Big", "score": 1e999}'}


def _strict(text: str):
    """JSON as the provider's request carries it: no NaN or Infinity."""
    return json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def test_nan_and_deeply_nested_variables_reject_their_rows_and_the_rest_are_sent(
    run_campaign, warehouse, sandbox
):
    warehouse.run("CREATE TABLE recipients (recipient_id TEXT, email TEXT, variables TEXT)")
    rows = [
        (f"{n:02d}", f"user{n}@example.com", HOSTILE.get(n, json.dumps({"first_name": f"R{n}"})))
        for n in range(1, 31)
    ]
    warehouse.insert_rows("recipients", rows, target_fields=["recipient_id", "email", "variables"])

    run = run_campaign(**CONF)

    assert run.state == "success"
    assert run.states("send_batch") == ["success"] * 3
    p = warehouse.placeholder
    rejected = fetch_dicts(
        warehouse,
        f"SELECT source_row, recipient_id, email, reason FROM email_rejected_recipients "
        f"WHERE campaign_id = {p} ORDER BY source_row",
        ("c1",),
    )
    assert rejected == [
        {
            "source_row": n,
            "recipient_id": f"{n:02d}",
            "email": f"user{n}@example.com",
            "reason": "invalid_variables",
        }
        for n in sorted(HOSTILE)
    ]
    staged = fetch_dicts(
        warehouse, f"SELECT variables FROM email_campaign_recipients WHERE campaign_id = {p}", ("c1",)
    )
    assert len(staged) == 27 and all(_strict(s["variables"]) for s in staged)
    ledger = fetch_dicts(
        warehouse, f"SELECT status, attempts FROM email_batch_ledger WHERE campaign_id = {p}", ("c1",)
    )
    assert ledger == [{"status": "scheduled", "attempts": 1}] * 3
    received = {r["to"]: r["variables"] for b in sandbox.record()["batches"] for r in b["recipients"]}
    assert received == {
        f"user{n}@example.com": {"first_name": f"R{n}"} for n in range(1, 31) if n not in HOSTILE
    }
