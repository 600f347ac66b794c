"""Test set-up: an isolated Airflow home, a real MigoSMTP sandbox process, and a SQLite warehouse per test.

Airflow reads its configuration when first imported, so the environment is
set here, before any test module imports it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# The machine's PostgreSQL and its admin statement: one definition, beside the stack launcher.
from demo.airflow_stack import POSTGRES, postgres_admin

REPO_ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bulk-email-airflow-"))
# Each pytest process (xdist's controller and every worker) has its own, gone when it exits.
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
# Airflow's dags folder for the session: the project's DAG files plus a factory-built test campaign.
# dag.test() runs only DAGs it finds in that folder, so a test DAG must be a file there too.
DAGS_FOLDER = _AIRFLOW_HOME / "dags"
DAGS_FOLDER.mkdir()
for _dag_file in (REPO_ROOT / "dags").glob("*.py"):
    shutil.copy(_dag_file, DAGS_FOLDER / _dag_file.name)
FACTORY_DAG_ID = "factory_test_campaign"
(DAGS_FOLDER / f"{FACTORY_DAG_ID}.py").write_text(
    "# Airflow parses only files that mention airflow and dag.\n"
    "from include.campaign.dag_factory import campaign_dag\n\n"
    f"campaign_dag({FACTORY_DAG_ID!r}, schedule='@daily', tags=['test'], recipients_table='members',\n"
    "    subject='Daily {{first_name}}', html_body='<p>{{segment}}</p>', text_body='', max_batch_size=10,\n"
    "    hourly_cap=1000, daily_cap=1000)\n"
)

os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # Short server-error back-off so retry paths run in seconds, not minutes.
        "AIRFLOW_VAR_MIGOSMTP_SERVER_ERROR_DELAYS": "[0.2, 0.2, 0.2]",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
)

API_KEY = "test-key"


# submit_ahead_minutes that submits any plan a test makes at once (30 days): plans start as late as
# DAY, a week ahead, and the article's runs four days from there, so ten days (14,400, the README's
# figure) left the last batches waiting for hours when a run started before 17:00 UTC.
ALL_AT_ONCE = 43_200


def past_monday_0900(weeks_back: int) -> datetime:
    """09:00 UTC on the Monday ``weeks_back`` weeks before this week's: a week a backfill would send."""
    now = datetime.now(UTC)
    this_monday = (now - timedelta(days=now.weekday())).replace(hour=9, minute=0, second=0, microsecond=0)
    return this_monday - timedelta(weeks=weeks_back)


# A UTC day a week ahead, and the next: campaigns never plan slots before now, so fixed dates would expire.
DAY = f"{datetime.now(UTC) + timedelta(days=7):%Y-%m-%d}"
NEXT_DAY = f"{datetime.now(UTC) + timedelta(days=8):%Y-%m-%d}"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata database in the session's own AIRFLOW_HOME (dag.test() needs one)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    from sandbox import SandboxProcess

    with SandboxProcess(tmp_path_factory.mktemp("sandbox") / "sandbox.db", api_key=API_KEY) as process:
        os.environ["AIRFLOW_CONN_MIGOSMTP_DEFAULT"] = json.dumps(process.airflow_connection())
        yield process


def point_migosmtp_at(monkeypatch, sandbox, password: str = API_KEY, **extra) -> None:
    """Re-point ``migosmtp_default`` at the sandbox for one test, with another key or extras."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MIGOSMTP_DEFAULT", json.dumps(sandbox.airflow_connection(password, **extra))
    )


@pytest.fixture
def clean_sandbox(sandbox):
    sandbox.reset()
    yield sandbox
    sandbox.reset()


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request, tmp_path, monkeypatch):
    """A fresh, empty warehouse behind ``warehouse_default``: a SQLite file, or a new PostgreSQL database.

    Every test that takes it runs on both; returns the connection's hook.
    """
    if request.param == "sqlite":
        conn = {"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}
    else:
        database = f"bulk_email_test_{uuid.uuid4().hex[:12]}"
        postgres_admin(f'CREATE DATABASE "{database}"')
        request.addfinalizer(lambda: postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        conn = {
            "conn_type": "postgres",
            "host": POSTGRES["host"],
            "port": POSTGRES["port"],
            "login": POSTGRES["user"],
            "schema": database,
        }
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DEFAULT", json.dumps(conn))
    from include.warehouse import get_warehouse_hook

    return get_warehouse_hook()


def load_campaign_dag(dag_id: str = "bulk_email_campaign"):
    """A DAG loaded the way Airflow loads it (a DagBag over the session's dags folder, which holds
    the project's DAG files and the factory-built test campaign).

    Loaded afresh for every run: ``dag.test(run_conf=...)`` writes the conf into
    the DAG object's params, which would otherwise leak into the next run.
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


@pytest.fixture
def run_campaign(airflow_db, clean_sandbox, warehouse):
    """Run the DAG once with ``dag.test()``; returns the run's state and its task instances."""

    def run(**conf):
        conf.setdefault("campaign_id", "c1")
        # The whole plan at once, as before batches waited: tests of waiting say how long.
        conf.setdefault("submit_ahead_minutes", ALL_AT_ONCE)
        dag_run = load_campaign_dag().test(run_conf=conf)
        return CampaignRun(dag_run.state, list(dag_run.get_task_instances()))

    return run


class CampaignRun:
    def __init__(self, state, task_instances):
        self.state = str(state)
        self.task_instances = task_instances

    def states(self, task_id: str) -> list[str]:
        return [
            str(ti.state)
            for ti in sorted(self.task_instances, key=lambda t: t.map_index)
            if ti.task_id == task_id
        ]

    def task(self, task_id: str, map_index: int = -1):
        return next(ti for ti in self.task_instances if ti.task_id == task_id and ti.map_index == map_index)


AUDIENCE = 30  # three batches of 10 at the DAG tests' max_batch_size


@pytest.fixture
def audience(warehouse):
    """The warehouse, with a ``recipients`` table of ``AUDIENCE`` valid rows (no bad ones)."""
    from demo.audience import create_recipients_table

    create_recipients_table(warehouse, "recipients", AUDIENCE)
    return warehouse


SCENARIO_REPORT: list[dict] = []


def pytest_sessionfinish(session):
    """Under pytest-xdist each worker hands its scenario rows to the controller, which prints the table."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["scenario_report"] = json.dumps(SCENARIO_REPORT)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    SCENARIO_REPORT.extend(json.loads(getattr(node, "workeroutput", {}).get("scenario_report", "[]")))


def pytest_terminal_summary(terminalreporter):
    """The exactly-once scenario table (tests/test_exactly_once.py), figures from this run."""
    if not SCENARIO_REPORT:
        return
    columns = ("scenario", "recipients", "batches", "api_requests", "duplicates", "lost", "wall_s")
    terminalreporter.section("exactly-once scenarios")
    terminalreporter.write_line(" | ".join(columns))
    for row in SCENARIO_REPORT:
        terminalreporter.write_line(" | ".join(str(row[c]) for c in columns))


class ChatWebhook:
    """A chat incoming-webhook on loopback (the ``campaign_alerts`` connection's host)."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/ops"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()


@pytest.fixture
def chat_webhook(monkeypatch):
    """A chat incoming-webhook on loopback behind ``campaign_alerts``; yields the messages it got."""
    with ChatWebhook() as hook:
        monkeypatch.setenv(
            "AIRFLOW_CONN_CAMPAIGN_ALERTS", json.dumps({"conn_type": "http", "host": hook.url})
        )
        yield hook.received
