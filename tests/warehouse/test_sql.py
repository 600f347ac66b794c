"""``include.warehouse.sql``: the helpers the planner and the tasks lean on, on SQLite and PostgreSQL."""

from __future__ import annotations

from contextlib import closing

import pytest

from include.warehouse import (
    WarehouseInputError,
    bulk_insert,
    count_rows,
    ensure_schema,
    fetch_dicts,
    in_values,
    insert_once,
    one_connection,
    parse_utc,
    stream_rows,
    utc_text,
)


@pytest.fixture
def numbers(warehouse):
    ensure_schema(warehouse)  # as every task does first (on SQLite: WAL, so a reader never blocks a writer)
    warehouse.run(["CREATE TABLE numbers (n INTEGER, label TEXT)"])
    rows = [(n, f"n{n}" if n % 5 else None) for n in range(1, 24)]
    warehouse.insert_rows("numbers", rows, executemany=True)
    return warehouse


class TestStreamRows:
    def test_yields_every_row_in_order_in_chunks_of_the_given_size(self, numbers):
        chunks = list(stream_rows(numbers, "SELECT n, label FROM numbers ORDER BY n", 10))

        assert [len(rows) for _, rows in chunks] == [10, 10, 3]
        assert {tuple(columns) for columns, _ in chunks} == {("n", "label")}
        rows = [tuple(row) for _, chunk in chunks for row in chunk]
        assert rows == [(n, f"n{n}" if n % 5 else None) for n in range(1, 24)]

    def test_values_are_the_drivers_own_so_integers_stay_integers_beside_nulls(self, numbers):
        [(_, rows)] = list(stream_rows(numbers, "SELECT n FROM numbers WHERE n < 3 ORDER BY n", 100))

        assert [type(r[0]) for r in rows] == [int, int]

    def test_an_empty_result_yields_nothing(self, numbers):
        assert list(stream_rows(numbers, "SELECT n FROM numbers WHERE n > 100", 10)) == []

    def test_the_reader_does_not_block_writes_on_another_connection(self, numbers):
        chunks = stream_rows(numbers, "SELECT n FROM numbers ORDER BY n", 5)
        next(chunks)  # the read is open
        numbers.run("INSERT INTO numbers (n, label) VALUES (100, 'late')")  # committed by the hook

        assert fetch_dicts(numbers, "SELECT COUNT(*) AS c FROM numbers", ())[0]["c"] == 24
        chunks.close()


class TestBulkInsertAndInValues:
    def test_rows_land_in_the_callers_transaction(self, numbers):
        with closing(numbers.get_conn()) as conn:
            bulk_insert(conn, numbers.placeholder, "numbers", ("n", "label"), [(200, "a"), (201, "b\tc\nd")])
            assert fetch_dicts(numbers, "SELECT COUNT(*) AS c FROM numbers WHERE n >= 200", ())[0]["c"] == 0
            conn.commit()

        found = fetch_dicts(numbers, "SELECT n, label FROM numbers WHERE n >= 200 ORDER BY n", ())
        assert found == [{"n": 200, "label": "a"}, {"n": 201, "label": "b\tc\nd"}]

    def test_sqlite_rows_land_as_executemany_would_store_them_one_statement_or_not(self, warehouse):
        if warehouse.dialect_name != "sqlite":
            pytest.skip("SQLite's one-statement path")
        warehouse.run("CREATE TABLE odd (t TEXT, i INTEGER, r REAL, b BLOB)")
        rows = [
            ("é\u2028😀 \\u0000", "12", 1.5, None),  # an escape's text is text, not an escape
            (None, -(2**63), 1e300, None),
            ("b\tc\nd", True, 2, None),
            ('{"a": [1, "x"]}', 2**63 - 1, 0.1, None),
        ]
        awkward = [("x\x00y", 1, 0.0, None), ("t", 2, 1.0, b"\x00\xff")]  # JSON cannot carry these
        for batch in (rows, *([row] for row in awkward)):
            with closing(warehouse.get_conn()) as conn:
                bulk_insert(conn, "?", "odd", ("t", "i", "r", "b"), batch)
                conn.commit()
        with closing(warehouse.get_conn()) as conn:
            stored = conn.execute("SELECT t, typeof(t), i, typeof(i), r, typeof(r), b FROM odd").fetchall()
            conn.execute("DELETE FROM odd")
            conn.executemany("INSERT INTO odd VALUES (?, ?, ?, ?)", rows + awkward)
            expected = conn.execute("SELECT t, typeof(t), i, typeof(i), r, typeof(r), b FROM odd").fetchall()

        assert stored == expected
        assert stored[4][0] == "x\x00y"

    def test_in_values_matches_many_values_in_one_parameter(self, numbers):
        labels = ["n1", "n7", "zz"]
        condition, parameters = in_values(numbers.dialect_name, numbers.placeholder, "label", labels)

        found = fetch_dicts(numbers, f"SELECT n FROM numbers WHERE {condition} ORDER BY n", parameters)
        assert [r["n"] for r in found] == [1, 7]
        assert len(parameters) == 1  # however many values


class TestOneConnection:
    def test_every_call_shares_one_connection_and_writes_commit_at_once(self, numbers, monkeypatch):
        opened = []
        real_get_conn = type(numbers).get_conn

        def counting_get_conn(self):
            opened.append(1)
            return real_get_conn(self)

        monkeypatch.setattr(type(numbers), "get_conn", counting_get_conn)
        with one_connection(numbers) as hook:
            hook.run("UPDATE numbers SET label = 'x' WHERE n = 1")
            fetch_dicts(hook, "SELECT n FROM numbers WHERE n = 2", ())
            hook.insert_rows("numbers", [(300, "y")])
            # Visible from another connection before the shared one is closed: committed.
            monkeypatch.setattr(type(numbers), "get_conn", real_get_conn)
            assert fetch_dicts(numbers, "SELECT label FROM numbers WHERE n IN (1, 300) ORDER BY n", ()) == [
                {"label": "x"},
                {"label": "y"},
            ]

        assert opened == [1]


class TestSmallHelpers:
    def test_insert_once_inserts_the_first_row_of_a_key_only(self, warehouse):
        warehouse.run(["CREATE TABLE claims (k TEXT, kind TEXT, n INTEGER, PRIMARY KEY (k, kind))"])

        assert insert_once(warehouse, "claims", {"k": "a", "kind": "x", "n": 1}, key=("k", "kind"))
        assert not insert_once(warehouse, "claims", {"k": "a", "kind": "x", "n": 2}, key=("k", "kind"))
        assert insert_once(warehouse, "claims", {"k": "a", "kind": "y", "n": 3}, key=("k", "kind"))
        assert fetch_dicts(warehouse, "SELECT k, kind, n FROM claims ORDER BY kind", ()) == [
            {"k": "a", "kind": "x", "n": 1},
            {"k": "a", "kind": "y", "n": 3},
        ]

    def test_count_rows_quotes_the_name_and_refuses_anything_else(self, numbers):
        assert count_rows(numbers, "numbers") == 23
        with pytest.raises(WarehouseInputError):
            count_rows(numbers, "numbers; DROP TABLE numbers")

    @pytest.mark.parametrize(
        "text", ["2026-12-07T09:00:00Z", "2026-12-07T10:00:00+01:00", "2026-12-07T09:00:00+00:00"]
    )
    def test_parse_utc_reads_what_utc_text_writes_and_any_offset(self, text):
        moment = parse_utc(text)
        assert utc_text(moment) == "2026-12-07T09:00:00Z"
        assert parse_utc(utc_text(moment)) == moment
