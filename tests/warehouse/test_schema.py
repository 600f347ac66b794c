"""``include.warehouse.schema``: the project's tables, made and upgraded in place, on SQLite and
PostgreSQL."""

from __future__ import annotations

from include.warehouse import OWN_TABLES, SUPPRESSION_REASONS, ensure_schema, fetch_dicts, table_columns


def test_every_own_table_is_created_and_a_second_run_changes_nothing(warehouse):
    ensure_schema(warehouse)
    ensure_schema(warehouse)

    for table in OWN_TABLES:
        assert table_columns(warehouse, table), table


def test_own_tables_are_the_ones_the_ddl_names():
    assert {
        "email_batch_ledger",
        "email_campaigns",
        "email_suppressions",
        "email_events_quarantine",
    } <= OWN_TABLES
    assert all(t.startswith("email_") for t in OWN_TABLES)


def test_an_operators_plain_insert_into_the_suppression_list_gets_its_defaults(warehouse):
    ensure_schema(warehouse)
    warehouse.run("INSERT INTO email_suppressions (email) VALUES ('ada@example.com')")

    [row] = fetch_dicts(warehouse, "SELECT reason, suppressed_at, removed_at FROM email_suppressions", ())
    assert row["reason"] == "manual" == SUPPRESSION_REASONS[-1]
    assert row["suppressed_at"].endswith("Z") and row["removed_at"] is None


def test_an_earlier_versions_table_gains_the_columns_added_since(warehouse):
    # email_campaign_recipients as first released, without source_row.
    warehouse.run(
        "CREATE TABLE email_campaign_recipients (campaign_id TEXT NOT NULL, batch_number INTEGER NOT NULL, "
        "position INTEGER NOT NULL, recipient_id TEXT NOT NULL, email TEXT NOT NULL, variables TEXT NOT NULL)"
    )
    ensure_schema(warehouse)
    assert "source_row" in table_columns(warehouse, "email_campaign_recipients")


def _staging_indexes(hook) -> set[str]:
    if hook.dialect_name == "postgresql":
        sql = "SELECT indexname AS name FROM pg_indexes WHERE tablename = 'email_campaign_recipients'"
    else:
        sql = "SELECT name FROM pragma_index_list('email_campaign_recipients')"
    return {row["name"] for row in fetch_dicts(hook, sql, ())}


_STAGE = (
    "INSERT INTO email_campaign_recipients "
    "(campaign_id, batch_number, position, recipient_id, email, variables) VALUES "
)


def test_the_staging_key_begins_with_email_so_no_email_index_of_its_own_is_made(warehouse):
    ensure_schema(warehouse)

    assert "email_campaign_recipients_by_email" not in _staging_indexes(warehouse)
    warehouse.run(
        _STAGE + "('a', 1, 1, 'r1', 'ada@example.com', '{}'), ('b', 1, 1, 'r1', 'ada@example.com', '{}')"
    )
    try:  # the key is still one row per email in a campaign
        warehouse.run(_STAGE + "('a', 1, 2, 'r2', 'ada@example.com', '{}')")
    except Exception as err:
        assert "unique" in str(err).lower() or "duplicate" in str(err).lower()
    else:
        raise AssertionError("a second row for one email in one campaign was accepted")


def test_an_earlier_staging_table_keyed_by_campaign_first_gets_an_email_index(warehouse):
    warehouse.run(
        "CREATE TABLE email_campaign_recipients (campaign_id TEXT NOT NULL, batch_number INTEGER NOT NULL, "
        "position INTEGER NOT NULL, recipient_id TEXT NOT NULL, email TEXT NOT NULL, "
        "variables TEXT NOT NULL, source_row INTEGER, timezone TEXT, "
        "PRIMARY KEY (campaign_id, email), UNIQUE (campaign_id, recipient_id))"
    )
    ensure_schema(warehouse)
    ensure_schema(warehouse)

    assert "email_campaign_recipients_by_email" in _staging_indexes(warehouse)
