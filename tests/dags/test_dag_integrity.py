"""The campaign DAG as Airflow sees it: it parses, is wired as documented, and parses cheaply.

The DagBag is read from ``dags/`` without a metadata database (``bag.dags``,
not ``bag.get_dag``, which would look the DAG up in the database).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import TriggerRule
from airflow.sdk.definitions.mappedoperator import MappedOperator
from airflow.utils.file import might_contain_dag

from include.campaign.operators import SendBatchOperator
from include.migosmtp.retry_policy import MigoSmtpRetryPolicy
from tests.conftest import REPO_ROOT
from tests.helpers import DOCUMENTED_PARAMS

DAG_FILE = REPO_ROOT / "dags" / "bulk_email_campaign.py"
DAG_FILES = sorted((REPO_ROOT / "dags").glob("*.py"))
DAG_ID = "bulk_email_campaign"
CAMPAIGN_DAG_IDS = (DAG_ID, "weekly_newsletter")

# Imports the DAG file with every network connect and every sqlite3.connect refused.
# `airflow.sdk` is imported BEFORE the patches go in: Airflow's own import may open its
# metadata DB (SQLite here), and that is not the DAG file's doing. What runs under the
# patches is only the DAG file's top-level code (and whatever it imports).
NO_IO_IMPORT = textwrap.dedent(
    """
    import importlib.util
    import socket
    import sqlite3
    import sys

    import airflow.sdk  # noqa: F401  (before the patches: Airflow's own import is not under test)
    from airflow.sdk import DAG
    from airflow.sdk.definitions._internal.contextmanager import DagContext


    def refuse(*args, **kwargs):
        raise RuntimeError(f"I/O while parsing the DAG file: {args!r}")


    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    sqlite3.connect = refuse

    try:
        sqlite3.connect(":memory:")
    except RuntimeError:
        pass
    else:
        sys.exit("the sqlite3.connect patch is not in place")

    module_name = "dag_file_under_no_io_test"
    spec = importlib.util.spec_from_file_location(module_name, sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    DagContext.current_autoregister_module_name = module_name
    spec.loader.exec_module(module)

    dags = [dag for dag, _ in DagContext.autoregistered_dags]
    dags += [value for value in vars(module).values() if isinstance(value, DAG)]
    print("DAGS:" + ",".join(sorted({dag.dag_id for dag in dags})))
    """
)


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def run_no_io_import(dag_file: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "AIRFLOW_HOME": os.environ["AIRFLOW_HOME"],
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": json.dumps(
            {"conn_type": "sqlite", "host": "/nonexistent-dir/for-parse-test/warehouse.db"}
        ),
        "AIRFLOW_CONN_MIGOSMTP_DEFAULT": json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": 9, "schema": "http", "password": "x"}
        ),
    }
    return subprocess.run(
        [sys.executable, "-c", NO_IO_IMPORT, str(dag_file)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class TestBulkEmailCampaignDag:
    def test_the_dag_folder_imports_without_errors(self, dagbag):
        assert dagbag.import_errors == {}
        assert DAG_ID in dagbag.dag_ids

    def test_the_dag_is_manually_triggered_several_campaigns_at_a_time_and_tagged(self, dag):
        # A run lasts as long as its plan (days): other campaigns must not wait for it.
        assert dag.schedule is None
        assert dag.max_active_runs > 1
        assert dag.catchup is False
        assert {"email", "migosmtp"} <= set(dag.tags)

    def test_tasks_are_wired_plan_then_send_batch_then_close_ledger(self, dag):
        assert set(dag.task_ids) == {"plan", "send_batch", "close_ledger"}
        assert dag.get_task("plan").downstream_task_ids == {"send_batch", "close_ledger"}
        assert dag.get_task("send_batch").downstream_task_ids == {"close_ledger"}

    def test_every_task_retries(self, dag):
        retries = {task.task_id: task.retries for task in dag.tasks}

        assert all(isinstance(r, int) and r >= 1 for r in retries.values()), retries

    def test_send_batch_is_mapped_with_the_migosmtp_retry_policy_and_a_batch_label(self, dag):
        send_batch = dag.get_task("send_batch")

        assert isinstance(send_batch, MappedOperator)
        assert send_batch.operator_class is SendBatchOperator  # deferrable: it waits in the triggerer
        assert isinstance(send_batch.retry_policy, MigoSmtpRetryPolicy)
        assert send_batch.retries >= 3  # room for 429 waits beyond the article's three 5xx retries
        assert isinstance(send_batch.map_index_template, str)
        assert "batch_label" in send_batch.map_index_template

    def test_close_ledger_runs_whatever_the_batches_did(self, dag):
        assert dag.get_task("close_ledger").trigger_rule == TriggerRule.ALL_DONE
        assert dag.get_task("close_ledger").trigger_rule == "all_done"

    def test_params_are_the_campaign_params(self, dag):
        missing = [name for name in DOCUMENTED_PARAMS if name not in dag.params]

        assert missing == []
        assert sorted(dag.params) == sorted(DOCUMENTED_PARAMS)

    def test_params_defaults(self, dag):
        defaults = {
            name: dag.params.get_param(name).value for name in DOCUMENTED_PARAMS if name != "campaign_id"
        }

        assert defaults["recipients_table"] == "recipients"
        assert defaults["hourly_cap"] == 150
        assert defaults["daily_cap"] == 1500
        assert defaults["max_batch_size"] == 1000
        assert defaults["start_at"] is None
        assert defaults["dry_run"] is False
        assert defaults["mode"] == "send"
        assert defaults["quota_policy"] == "refuse"
        assert defaults["ignore_suppressions"] is False
        assert dag.params.get_param("campaign_id").has_value is False


class TestWeeklyNewsletterDag:
    @pytest.fixture
    def weekly(self, dagbag):
        return dagbag.dags["weekly_newsletter"]

    def test_it_runs_mondays_at_0900_utc_without_catching_up(self, weekly):
        assert weekly.timetable.expression == "0 9 * * 1"
        assert weekly.timezone.name == "UTC"
        assert weekly.catchup is False
        assert weekly.max_active_runs > 1  # a run that outlasts its week does not block the next

    def test_it_reads_newsletter_subscribers_and_personalises_the_body(self, weekly):
        params = weekly.params
        assert params.get_param("recipients_table").value == "newsletter_subscribers"
        assert 0 < len(params.get_param("subject").value) <= 40
        assert "{{first_name}}" in params.get_param("html_body").value
        assert "{{first_name}}" in params.get_param("text_body").value

    def test_its_campaign_id_may_be_left_empty(self, weekly):
        campaign_id = weekly.params.get_param("campaign_id")

        assert campaign_id.value == ""
        assert campaign_id.resolve("") == ""
        assert campaign_id.resolve("week-49") == "week-49"

    def test_it_is_the_same_three_tasks(self, weekly, dag):
        assert set(weekly.task_ids) == set(dag.task_ids)
        assert weekly.get_task("plan").pool == dag.get_task("plan").pool == "campaign_planning"
        assert weekly.get_task("send_batch").pool == "migosmtp_api"

    def test_the_file_is_about_a_dozen_lines_of_code(self):
        source = (REPO_ROOT / "dags" / "weekly_newsletter.py").read_text()
        code = source.split('"""', 2)[2]  # after the module docstring
        lines = [line for line in code.splitlines() if line.strip()]

        assert len(lines) <= 14, lines


class TestDagFileParsing:
    @pytest.mark.parametrize("dag_id", CAMPAIGN_DAG_IDS)
    def test_parsing_does_no_network_or_database_io(self, dag_id):
        result = run_no_io_import(REPO_ROOT / "dags" / f"{dag_id}.py")

        assert result.returncode == 0, result.stderr[-3000:]
        assert f"DAGS:{dag_id}" in result.stdout.splitlines(), result.stdout

    def test_the_no_io_check_catches_a_dag_file_that_connects_at_parse_time(self, tmp_path):
        bad_dag_file = tmp_path / "connects_at_parse.py"
        bad_dag_file.write_text("import sqlite3\n\nsqlite3.connect('warehouse.db')\n")

        result = run_no_io_import(bad_dag_file)

        assert result.returncode != 0
        assert "I/O while parsing the DAG file" in result.stderr

    @pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda path: path.name)
    def test_airflow_does_not_skip_the_file_in_safe_mode(self, dag_file):
        # [core] dag_discovery_safe_mode (on by default): the parser never imports a file that
        # Airflow's own heuristic rules out, and reports nothing, not even an import error.
        assert might_contain_dag(str(dag_file), safe_mode=True), (
            f"Airflow skips {dag_file.name} without a word: it must contain 'airflow' and 'dag' "
            "(any case; a comment will do)"
        )

    def test_the_safe_mode_check_catches_a_file_airflow_would_skip(self, tmp_path):
        body = "from include.campaign.dag_factory import campaign_dag\n\ncampaign_dag('skipped_newsletter')\n"
        skipped = tmp_path / "skipped" / "skipped_newsletter.py"
        skipped.parent.mkdir()
        skipped.write_text(body)  # says "dag", never "airflow"
        parsed = tmp_path / "parsed" / "parsed_newsletter.py"
        parsed.parent.mkdir()
        parsed.write_text("# Airflow parses only files that mention airflow and dag.\n" + body)

        assert not might_contain_dag(str(skipped), safe_mode=True)
        assert might_contain_dag(str(parsed), safe_mode=True)
        # What the parser makes of them: the first is silently left out, the second is a DAG.
        skipped_bag = DagBag(dag_folder=str(skipped.parent))
        assert (skipped_bag.dags, skipped_bag.import_errors) == ({}, {})
        assert set(DagBag(dag_folder=str(parsed.parent)).dags) == {"skipped_newsletter"}

    def test_ruff_airflow3_rules_pass(self):
        ruff = Path(sys.executable).parent / "ruff"
        command = [str(ruff)] if ruff.exists() else [sys.executable, "-m", "ruff"]

        result = subprocess.run(
            [*command, "check", "--select", "AIR3", "dags", "include", "plugins"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize("dag_id", CAMPAIGN_DAG_IDS)
    def test_the_dag_file_is_thin(self, dag_id):
        dag_file = REPO_ROOT / "dags" / f"{dag_id}.py"
        lines = dag_file.read_text().splitlines()

        assert len(lines) < 40, f"{dag_file.name} has {len(lines)} lines; move logic into include/"
