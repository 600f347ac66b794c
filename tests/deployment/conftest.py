"""The deployment tier's marker, its warehouse (a fresh PostgreSQL database per test), and the one
LocalExecutor stack that every test on that configuration shares.

The shared stack is started once per session (``shared_local_stack``); ``scripts/test.sh`` runs
the tier in one process, so there is one such stack, and never two stacks at a time. Each test
that takes ``local_stack`` gets it with ``warehouse_default`` pointed at the test's own fresh
database; the test points ``migosmtp_default`` (and any other connection) at its own sandbox
with ``stack.api.set_connection``. Connections live in the metadata database, not in the processes'
environment, so every task, the API server's plugins and the CLI read the test's. Tests keep
their data apart by their own campaign_ids and DAG runs; afterwards nothing of theirs is left
running and the session's connections are back. Tests that need another configuration (the
CeleryExecutor; a deployment that has never seen a warehouse) start their own ``AirflowStack``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from demo.airflow_stack import DAG_ID, AirflowStack, fresh_postgres_database, postgres_connection
from demo.audience import create_recipients_table
from sandbox import SandboxProcess
from tests.deployment.campaign_checks import API_KEY, VARIABLES

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

WEEKLY = "weekly_newsletter"
RECONCILE_DAG_ID = "migosmtp_delivery_reconcile"
PROJECT_DAGS = (DAG_ID, WEEKLY, RECONCILE_DAG_ID)
PARALLELISM = 4
POOL_SLOTS = 2  # below parallelism, so the pool, not the executor, is what limits the API calls
UNFINISHED_RUN_STATES = ("queued", "running")


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


def latest_monday_0900(now: datetime | None = None) -> datetime:
    """The latest Monday 09:00 UTC that has passed: the run ``weekly_newsletter`` makes on deployment."""
    now = now or datetime.now(UTC)
    monday = (now - timedelta(days=now.weekday())).replace(hour=9, minute=0, second=0, microsecond=0)
    return monday if monday <= now else monday - timedelta(weeks=1)


@pytest.fixture(scope="session")
def shared_local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """One LocalExecutor stack for the session, first deployed as a user deploys it: the DAGs
    unpaused, a warehouse with subscribers, the sandbox; the newsletter's first run is awaited."""
    workdir = tmp_path_factory.mktemp("shared-local-stack")
    with (
        fresh_postgres_database("warehouse") as database,
        SandboxProcess(workdir / "sandbox.db", api_key=API_KEY) as sandbox,
        pytest.MonkeyPatch.context() as monkeypatch,
    ):
        warehouse = postgres_connection(database)
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", json.dumps(warehouse))
        from include.warehouse import get_warehouse_hook

        create_recipients_table(get_warehouse_hook(), "newsletter_subscribers", 20)
        with AirflowStack(
            workdir / "stack",
            executor="LocalExecutor",
            parallelism=PARALLELISM,
            pool_slots=POOL_SLOTS,
            variables=VARIABLES,
            stored_connections={
                "warehouse_default": warehouse,
                "migosmtp_default": sandbox.airflow_connection(),
            },
        ) as stack:
            # Unpaused at deployment, the newsletter (catchup=False) runs the latest Monday just
            # past, once, at once (README, "DAG weekly_newsletter"): exactly that run, and it sends.
            stack.wait_for_dag(WEEKLY)
            runs = stack.wait_for_runs_to_settle(WEEKLY)
            latest = latest_monday_0900()
            assert [(r["run_type"], r["logical_date"][:16], r["state"]) for r in runs] == [
                ("scheduled", f"{latest:%Y-%m-%dT%H:%M}", "success")
            ], stack.describe_run(WEEKLY, runs[0]["dag_run_id"]) if runs else "no run"
            assert sum(b["recipient_count"] for b in sandbox.record()["batches"]) == 20
            yield stack


@pytest.fixture
def local_stack(shared_local_stack: AirflowStack, postgres_warehouse: Warehouse) -> Iterator[AirflowStack]:
    """The shared stack, its ``warehouse_default`` on this test's fresh database."""
    stack = shared_local_stack
    stack.api.set_connection("warehouse_default", postgres_warehouse.connection)
    yield stack
    # Nothing of this test left running (max_active_runs=1 would hold the next test's run back),
    # and only the session's connections left.
    for dag_id in PROJECT_DAGS:
        for run in stack.api.dag_runs(dag_id):
            if run["state"] in UNFINISHED_RUN_STATES:
                stack.api.set_dag_run_state(dag_id, run["dag_run_id"], "failed")
    for conn_id in stack.api.connection_ids():
        if conn_id not in stack.stored_connections:
            stack.api.delete_connection(conn_id)
    for conn_id, conn in stack.stored_connections.items():
        stack.api.set_connection(conn_id, conn)
