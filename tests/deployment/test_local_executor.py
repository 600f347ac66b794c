"""The campaign on a real LocalExecutor deployment, triggered and watched through the REST API."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from demo.airflow_stack import DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from include.campaign.ledger import rows as ledger_rows
from sandbox import SandboxProcess
from tests.conftest import ChatWebhook
from tests.deployment.campaign_checks import (
    API_KEY,
    BAD_EVERY,
    BATCHES,
    RECIPIENTS,
    RunReport,
    assert_each_recipient_sent_once,
    assert_mapped_batches_succeeded,
    campaign_conf,
    expected_send_at,
    first_slot,
    peak_concurrency,
)
from tests.deployment.conftest import POOL_SLOTS
from tests.helpers import assert_ledger_matches_sandbox, sends_per_key

pytestmark = pytest.mark.deployment


def test_a_campaign_triggered_over_rest_is_sent_once_within_the_pool(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    create_recipients_table(postgres_warehouse.hook, "recipients", RECIPIENTS, bad_every=BAD_EVERY)
    start_at = first_slot()
    stack = local_stack
    assert (stack.executor, stack.parallelism, stack.pool_slots) == ("LocalExecutor", 4, POOL_SLOTS)

    with (
        ChatWebhook() as alerts,
        SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox,
    ):
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())
        stack.api.set_connection("campaign_alerts", {"conn_type": "http", "host": alerts.url})
        run_id = stack.api.trigger_dag_run(DAG_ID, campaign_conf("deploy-local", start_at))
        run = stack.wait_for_dag_run(DAG_ID, run_id)
        assert run["state"] == "success", stack.describe_run(DAG_ID, run_id)
        report = RunReport.collect(stack, run_id, run)
        record, requests = sandbox.record(), sandbox.requests()
        worker_libraries = _executor_worker_libraries(stack.process("scheduler").popen.pid)

        # Then a campaign whose first two batches, side by side, both meet a 402 (answered slowly,
        # so the second is sent before the first halt is recorded): one halt, one alert.
        sandbox.set_faults([{"action": "status", "status": 402, "times": 2, "seconds": 5}])
        halted_id = stack.api.trigger_dag_run(DAG_ID, campaign_conf("deploy-402", start_at))
        labels_in_flight = _labels_while_a_send_is_in_flight(stack, sandbox, halted_id)
        halted_run = stack.wait_for_dag_run(DAG_ID, halted_id)
        halted_requests = [r for r in sandbox.requests() if "deploy-402" in (r["idempotency_key"] or "")]

    assert_mapped_batches_succeeded(report)
    assert_each_recipient_sent_once(record, expected_send_at(start_at))
    ledger = ledger_rows(postgres_warehouse.hook, "deploy-local", with_recipient_ids=True)
    assert_ledger_matches_sandbox(ledger, record, requests, "deploy-local", BATCHES)
    # Nothing went wrong, so every batch is one request and one try.
    assert set(sends_per_key(requests).values()) == {1}
    assert [t["try_number"] for t in report.send_tries] == [1] * len(report.send_tries)
    # The pool held, and the batches really ran side by side up to it.
    assert peak_concurrency(report.send_tries) == POOL_SLOTS
    # The workers (which never import the HTTP hook themselves) got aiohttp from the scheduler,
    # by plugins/migosmtp_preload.py, so no task process imports it again.
    assert len(worker_libraries) >= 2
    assert all(any("/aiohttp/" in path for path in paths) for paths in worker_libraries.values())

    assert halted_run["state"] == "failed"
    assert [r["status_code"] for r in halted_requests if r["method"] == "POST"] == [402, 402]
    statuses = Counter(r["status"] for r in ledger_rows(postgres_warehouse.hook, "deploy-402"))
    assert statuses == {"failed": 2, "halted": BATCHES - 2}, statuses
    [alert] = alerts.received
    assert "campaign 'deploy-402' halted" in alert["text"] and "402" in alert["text"]
    # The UI names a batch while its request is still out, not only once the task has ended. A batch
    # that has only just started shows its bare map index until its first render (Airflow's own
    # fallback), so the others running beside it may still be numbers.
    label = re.compile(r"batch \d+/\d+ · \S+Z · \d+")
    assert any(label.fullmatch(text) for text in labels_in_flight), labels_in_flight
    assert all(label.fullmatch(text) or text.isdigit() for text in labels_in_flight), labels_in_flight


def _labels_while_a_send_is_in_flight(stack, sandbox, run_id: str) -> list:
    """The rendered map index of each running batch, read while the sandbox holds a request."""

    def probe() -> list | None:
        if not sandbox.health().get("in_flight"):
            return None
        tis = stack.api.task_instances(DAG_ID, run_id)
        running = [t for t in tis if t["task_id"] == "send_batch" and t["state"] == "running"]
        labels = [t["rendered_map_index"] or "" for t in running]
        # Only a batch past its first render can be the one holding the request.
        if any(not text.isdigit() for text in labels) and sandbox.health().get("in_flight"):
            return labels
        return None

    return stack._wait_for("scheduler", "a running batch while a send is in flight", probe, timeout=120)


def _executor_worker_libraries(scheduler_pid: int) -> dict[int, set[str]]:
    """The shared objects mapped into each LocalExecutor worker forked by the scheduler."""
    workers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
            maps = (proc / "maps").read_text()
        except OSError:  # gone meanwhile
            continue
        if parent == scheduler_pid and cmdline.startswith(b"airflow worker -- LocalExecutor"):
            workers[int(proc.name)] = {line.split()[-1] for line in maps.splitlines() if ".so" in line}
    return workers
