"""The deployment tier's marker and its warehouse: a fresh PostgreSQL database per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from demo.airflow_stack import fresh_postgres_database, postgres_connection

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "deployment: runs the DAG on a real Airflow stack (PostgreSQL, Redis, Airflow's own processes); "
        "select with -m deployment, skip with -m 'not deployment'",
    )


@dataclass(frozen=True)
class Warehouse:
    hook: DbApiHook
    connection: dict[str, Any]  # the same ``warehouse_default``, for the stack's processes


@pytest.fixture
def postgres_warehouse(monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    """``warehouse_default`` on a fresh PostgreSQL database, here and (via ``connection``) in the stack."""
    with fresh_postgres_database("warehouse") as database:
        connection = postgres_connection(database)
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", json.dumps(connection))
        from include.warehouse import get_warehouse_hook

        yield Warehouse(get_warehouse_hook(), connection)
