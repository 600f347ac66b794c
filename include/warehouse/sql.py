"""Talking to the warehouse: the ``warehouse_default`` hook, one shared connection, transactions,
streaming reads, bulk writes, safe identifiers and the UTC text every table stores.

Everything goes through common-sql's ``DbApiHook``, so any database common-sql supports can hold
the recipients and the ledger.
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

WAREHOUSE_CONN_ID = "warehouse_default"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class WarehouseInputError(ValueError):
    """The warehouse does not hold what the campaign was told to read."""


def utc_now_text() -> str:
    return utc_text(datetime.now(UTC))


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime:
    """An ISO-8601 date-time such as ``utc_text`` writes (``Z`` or an offset); raises ValueError."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def get_warehouse_hook(conn_id: str = WAREHOUSE_CONN_ID) -> DbApiHook:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import BaseHook

    # log_sql off: statement parameters carry recipient addresses, which do not belong in task logs.
    hook = BaseHook.get_connection(conn_id).get_hook(hook_params={"log_sql": False})
    if not isinstance(hook, DbApiHook):
        raise WarehouseInputError(
            f"connection {conn_id!r} is of type {type(hook).__name__}, not a SQL database common-sql supports"
        )
    return hook


class _SharedConnection:
    """A DB-API connection that every hook call can share: ``close()`` does nothing, and the
    autocommit mode ``one_connection`` gave it stays (psycopg refuses a change mid-transaction)."""

    def __init__(self, conn: Any) -> None:
        object.__setattr__(self, "_conn", conn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "autocommit":
            setattr(self._conn, name, value)

    def close(self) -> None:
        pass


@contextmanager
def one_connection(hook: DbApiHook) -> Iterator[DbApiHook]:
    """The hook, with all its calls on one open connection, closed on exit.

    A batch task makes a handful of statements; each common-sql call would otherwise open
    (and, on PostgreSQL, authenticate) a connection of its own. Every statement still
    commits on its own, so what the ledger records is durable at once.
    """
    conn = hook.get_conn()
    if hook.supports_autocommit:
        # Each statement commits at once, as with a connection per call: no transaction is left
        # open between statements (or across an API request).
        conn.autocommit = True
    bound = copy.copy(hook)
    shared = _SharedConnection(conn)
    bound.get_conn = lambda: shared
    try:
        yield bound
    finally:
        conn.close()


def quote_table(name: str) -> str:
    """Quote a ``[schema.]table`` name, refusing anything that is not a plain identifier."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise WarehouseInputError(f"table name {name!r} is not a plain [schema.]table identifier")
    return ".".join(f'"{part}"' for part in parts)


@contextmanager
def transaction(hook: DbApiHook) -> Iterator[Any]:
    """A cursor whose statements commit together or not at all, also on a connection that
    ``one_connection`` put in autocommit mode."""
    with closing(hook.get_conn()) as conn:
        if getattr(conn, "autocommit", False) is True and hasattr(conn, "transaction"):  # psycopg 3
            with conn.transaction(), closing(conn.cursor()) as cur:
                yield cur
            return
        with closing(conn.cursor()) as cur:
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            conn.commit()


# Any constant: the PostgreSQL advisory lock that serialises bookings into the account's slots.
_ACCOUNT_LOCK = 7_351_042_119


@contextmanager
def account_lock(hook: DbApiHook) -> Iterator[None]:
    """One holder at a time across processes, for a read-then-book of the account's slots. On
    PostgreSQL an advisory lock on the hook's connection (``one_connection`` keeps it one); on
    SQLite, whose database is a local file, a lock on a file beside it."""
    if hook.dialect_name == "postgresql":
        hook.run(f"SELECT pg_advisory_lock({_ACCOUNT_LOCK})", autocommit=True)
        try:
            yield
        finally:
            hook.run(f"SELECT pg_advisory_unlock({_ACCOUNT_LOCK})", autocommit=True)
        return
    import fcntl

    with closing(hook.get_conn()) as conn:
        path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    with open(f"{path or '/tmp/warehouse'}.slots.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def changed_rows(hook: DbApiHook, sql: str, parameters: Sequence[Any]) -> int:
    """Run one statement, committed; returns how many rows it changed (a conditional UPDATE's
    answer to "did this win?")."""
    with closing(hook.get_conn()) as conn, closing(conn.cursor()) as cur:
        cur.execute(sql, tuple(parameters))
        changed = cur.rowcount
        if getattr(conn, "autocommit", False) is not True:
            conn.commit()
    return changed


def table_columns(hook: DbApiHook, table: str) -> list[str]:
    """Column names of a table, or a WarehouseInputError that names the table and the cause."""
    sql = f"SELECT * FROM {quote_table(table)} WHERE 1 = 0"
    try:
        with closing(hook.get_conn()) as conn, closing(conn.cursor()) as cur:
            cur.execute(sql)
            return [column[0] for column in cur.description]
    except WarehouseInputError:
        raise
    except Exception as err:
        raise WarehouseInputError(
            f"cannot read table {table!r} from connection {hook.get_conn_id()!r}: {err}"
        ) from err


def insert_once(hook: DbApiHook, table: str, row: dict[str, Any], key: Sequence[str]) -> bool:
    """Insert ``row`` unless one with the same ``key`` columns exists; True if this call inserted it.

    ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL): the key decides between concurrent callers,
    without an error that would abort a connection the caller shares.
    """
    p = hook.placeholder
    inserted = hook.run(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join([p] * len(row))}) "
        f"ON CONFLICT ({', '.join(key)}) DO NOTHING",
        parameters=tuple(row.values()),
        handler=lambda cur: cur.rowcount,
    )
    return inserted == 1


def count_rows(hook: DbApiHook, table: str) -> int:
    """How many rows a table (``[schema.]name``, quoted here) holds."""
    return int(fetch_dicts(hook, f"SELECT COUNT(*) AS n FROM {quote_table(table)}", ())[0]["n"])


def stream_rows(
    hook: DbApiHook, sql: str, chunk_rows: int, parameters: Sequence[Any] = ()
) -> Iterator[tuple[list[str], list[tuple]]]:
    """Yield a query's rows ``chunk_rows`` at a time as ``(column names, tuples)``, one chunk in memory.

    On its own connection, so the caller can write on another while it reads. On PostgreSQL
    the cursor is a server-side one: a plain DB-API cursor makes psycopg fetch the whole
    result before the first chunk. Rows are the driver's plain values (not ``pandas.read_sql``,
    which would turn an INTEGER column with NULLs into floats; the screening builds its own
    DataFrame of the values as they are, ``campaign/screening.py``).
    """
    with closing(hook.get_conn()) as conn:
        cursor = conn.cursor(name="stream_rows") if hook.dialect_name == "postgresql" else conn.cursor()
        with closing(cursor) as cur:
            if hook.dialect_name == "postgresql":
                cur.itersize = chunk_rows
            if parameters:
                cur.execute(sql, parameters)
            else:  # psycopg would read any '%' in an unparameterised statement as a placeholder
                cur.execute(sql)
            columns = [column[0] for column in cur.description]
            while rows := cur.fetchmany(chunk_rows):
                yield columns, rows


def bulk_insert(
    conn: Any, placeholder: str, table: str, fields: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Append rows on an open connection, in the caller's transaction: COPY on PostgreSQL
    (psycopg 3); on SQLite one statement over the rows as a JSON array; one ``executemany``
    elsewhere.

    On SQLite the rows' values are text, 64-bit integers, floats and NULLs (what the project
    writes). One statement lets SQLite loop over the rows in C with the GIL released, where
    ``executemany`` takes it back for every row: a writer thread then runs beside the caller's
    (``campaign/staging.py``). Rows JSON cannot carry exactly (bytes, a NUL in a text, which
    SQLite's JSON functions cut at) take the ``executemany``."""
    if not rows:
        return
    columns = ", ".join(fields)
    with closing(conn.cursor()) as cur:
        if hasattr(cur, "copy"):  # psycopg 3
            with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        if isinstance(conn, sqlite3.Connection) and (array := _json_rows(rows)) is not None:
            values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(fields)))
            cur.execute(f"INSERT INTO {table} ({columns}) SELECT {values} FROM json_each(?)", (array,))
            return
        cur.executemany(
            f"INSERT INTO {table} ({columns}) VALUES ({', '.join([placeholder] * len(fields))})", rows
        )


def _json_rows(rows: Sequence[Sequence[Any]]) -> str | None:
    """The rows as one JSON array of arrays, or None if JSON would not give the values back."""
    try:
        array = json.dumps(rows, ensure_ascii=False, allow_nan=False, check_circular=False)
    except (TypeError, ValueError):
        return None
    return None if "\\u0000" in array else array


def in_values(dialect: str, placeholder: str, column: str, values: Iterable[Any]) -> tuple[str, list[Any]]:
    """``column IN (values)`` as one bound parameter where the database allows it (a JSON array
    in SQLite, an array in PostgreSQL), so a chunk of tens of thousands stays one statement."""
    values = list(values)
    if dialect == "sqlite":
        return f"{column} IN (SELECT value FROM json_each({placeholder}))", [json.dumps(values)]
    if dialect == "postgresql":
        return f"{column} = ANY({placeholder})", [values]
    return f"{column} IN ({', '.join([placeholder] * len(values))})", values


def fetch_dicts(hook: DbApiHook, sql: str, parameters: Sequence[Any]) -> list[dict[str, Any]]:
    with closing(hook.get_conn()) as conn, closing(conn.cursor()) as cur:
        cur.execute(sql, parameters)
        names = [column[0] for column in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
