"""Issue 20 at plan level: rows whose variables would not encode, or would swell a request, are
rejected ``invalid_variables`` while the plan stages everyone else (SQLite and PostgreSQL)."""

from __future__ import annotations

from include.campaign.plan import plan_campaign
from include.warehouse import ensure_schema, fetch_dicts
from tests.campaign.test_plan_lifecycle import PARAMS

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
