"""Issue 24: one hostile table planned both ways, row by row and as DataFrames, gives the same plan
byte for byte: the same staged recipients (variables text included), the same rejections with
their reasons, the same ledger. On both warehouses, with chunks small enough that duplicates
cross chunk boundaries (the staging table's indexes refuse a chunk, which is screened again
against what earlier chunks staged)."""

from __future__ import annotations

import json

from include.campaign import staging
from include.campaign.audience import screen_rows
from include.campaign.plan import plan_campaign
from include.campaign.screening import screen_frame
from include.warehouse import LEDGER_TABLE, REJECTED_TABLE, STAGING_TABLE, ensure_schema, fetch_dicts
from tests.helpers import suppress

PARAMS = {
    "campaign_id": "both-ways",
    "recipients_table": "hostile",
    "from_email": "news@example.com",
    "subject": "Hello {{first_name}}",
    "html_body": "<p>Hi</p>",
    "text_body": "Hi",
    "max_batch_size": 4,
    "hourly_cap": 1000,
    "daily_cap": 1000,
    "start_at": "2027-03-01T09:00:00Z",
    "default_timezone": "Europe/Berlin",
    "quota_policy": "ignore",
}
# recipient_id, email, first_name, points (INTEGER with NULLs), score (a double), variables, timezone
ROWS = [
    ("1", " Ada@Example.com ", "Ada", 3, 1.5, '{"tier": "gold"}', "Europe/Berlin"),
    ("2", "grace@example.com", "Grace", None, None, None, " Asia/Kathmandu "),
    ("3", "ADA@example.com", "Dup", 1, 2.0, "{}", None),  # duplicate_email
    ("2", "other@example.com", "Dup id", 2, None, '{"a": 1}', ""),  # duplicate_recipient_id
    ("4", "bad-at-example.com", None, None, None, None, None),  # invalid_email
    (" ", "blank@example.com", None, None, None, None, None),  # missing_recipient_id
    ("5", None, None, None, None, None, None),  # missing_email
    ("6", "zone@example.com", None, None, None, None, "Mars/Olympus"),  # invalid_timezone
    ("7", "nan@example.com", None, None, None, '{"a": NaN}', None),  # invalid_variables
    ("8", "array@example.com", None, None, None, "[1, 2]", None),  # invalid_variables
    ("9", "stopped@example.com", "Sup", None, None, None, None),  # suppressed
    (
        "10",
        "ten@example.com",
        "Zoë 😀",
        10,
        -0.0,
        '{"first_name": "Wins", "nested": {"b": [1, {"c": null}]}}',
        "UTC",
    ),
    ("11", "eleven@example.com", 'say "hi"\n', None, 1e300, ' {"sp": true} ', " America/New_York "),
    ("12", "grace@example.com", "Later dup across chunks", None, None, None, None),
    ("13", "nan@example.com", "First valid nan@", None, None, '{"ok": 1}', None),
    ("1", "again@example.com", "Dup id across chunks", None, None, None, None),
    ("14", "x" * 250 + "@example.com", "Too long", None, None, None, None),  # invalid_email
    ("15", "\u212aate@example.com", "Kelvin", None, None, None, None),  # lower-cases to kate@
    ("16", "kate@example.com", "Dup of the Kelvin", None, None, None, None),
    ("17", "seventeen@example.com", "x" * 20_000, None, None, None, None),  # invalid_variables
    *(
        (str(100 + n), f"user{n}@example.com", f"U{n}", n, n / 4, json.dumps({"n": n}), None)
        for n in range(23)
    ),
]


def _create(hook) -> None:
    hook.run(
        [
            "DROP TABLE IF EXISTS hostile",
            "CREATE TABLE hostile (recipient_id TEXT, email TEXT, first_name TEXT, points INTEGER, "
            "score DOUBLE PRECISION, variables TEXT, timezone TEXT)",
        ]
    )
    hook.insert_rows(
        "hostile",
        ROWS,
        target_fields=["recipient_id", "email", "first_name", "points", "score", "variables", "timezone"],
    )


def _plan(hook, screen) -> dict[str, list[dict]]:
    staging.clear_plan(hook, PARAMS["campaign_id"])
    batches = plan_campaign(PARAMS, chunk_rows=7, screen=screen)
    campaign = {"c": PARAMS["campaign_id"]}
    p = hook.placeholder
    ledger_columns = (
        "batch_number, idempotency_key, recipient_ids, recipient_count, status, send_at, timezone"
    )
    return {
        "batches": batches,
        "staged": fetch_dicts(
            hook,
            f"SELECT * FROM {STAGING_TABLE} WHERE campaign_id = {p} ORDER BY position",
            (campaign["c"],),
        ),
        "rejected": fetch_dicts(
            hook,
            f"SELECT * FROM {REJECTED_TABLE} WHERE campaign_id = {p} ORDER BY source_row",
            (campaign["c"],),
        ),
        "ledger": fetch_dicts(
            hook,
            f"SELECT {ledger_columns} FROM {LEDGER_TABLE} WHERE campaign_id = {p} ORDER BY batch_number",
            (campaign["c"],),
        ),
    }


def test_a_hostile_table_is_planned_the_same_row_by_row_and_as_frames(warehouse):
    ensure_schema(warehouse)
    _create(warehouse)
    suppress(warehouse, "stopped@example.com")

    by_rows = _plan(warehouse, screen_rows)
    by_frames = _plan(warehouse, screen_frame)

    assert by_frames == by_rows
    reasons = [(r["source_row"], r["reason"]) for r in by_rows["rejected"]]
    assert sorted({reason for _, reason in reasons}) == [
        "duplicate_email",
        "duplicate_recipient_id",
        "invalid_email",
        "invalid_timezone",
        "invalid_variables",
        "missing_email",
        "missing_recipient_id",
        "suppressed",
    ]
    assert len(by_rows["staged"]) == len(ROWS) - len(reasons)
    staged = {r["email"]: r for r in by_rows["staged"]}
    assert staged["kate@example.com"]["variables"] == '{"first_name": "Kelvin"}'
    assert json.loads(staged["ten@example.com"]["variables"])["first_name"] == "Wins"
    assert staged["eleven@example.com"]["timezone"] == "America/New_York"  # trimmed
    assert staged["grace@example.com"]["timezone"] == "Europe/Berlin"  # "12" reads before "2": no zone
