"""The campaign on a real CeleryExecutor deployment: Redis broker, two workers, the rate limit paced."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from demo.airflow_stack import DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from include.campaign.ledger import rows as ledger_rows
from include.migosmtp.client import SEND_ENDPOINT as SEND_PATH
from sandbox import SandboxProcess
from tests.deployment.campaign_checks import (
    API_KEY,
    BAD_EVERY,
    BATCHES,
    RECIPIENTS,
    VARIABLES,
    RunReport,
    assert_each_recipient_sent_once,
    assert_mapped_batches_succeeded,
    campaign_conf,
    expected_send_at,
    first_slot,
    peak_concurrency,
)
from tests.helpers import assert_ledger_matches_sandbox

pytestmark = pytest.mark.deployment

WORKERS = 2
WORKER_CONCURRENCY = 2
POOL_SLOTS = 2
# Fewer sends allowed per window than there are batches, so the run must wait for the next
# window: 20 s here (the real API's is a minute), long enough that the first window's sends
# run out before it ends. (The 429 path itself: tests/dags.)
REQUESTS_PER_WINDOW = 12
RATE_WINDOW = timedelta(seconds=20)


def _at(request: dict) -> datetime:
    return datetime.fromisoformat(request["at"])


def window_starts(sends: list[dict], first_window_start: datetime) -> list[datetime]:
    """The start of the sandbox's rate window each send fell in.

    The sandbox counts fixed windows: the first from its reset, each later one from the
    first send after the previous window ended (sandbox/server.py RateLimiter).
    """
    window_start, starts = first_window_start, []
    for r in sends:
        if _at(r) - window_start >= RATE_WINDOW:
            window_start = _at(r)
        starts.append(window_start)
    return starts


def test_a_campaign_on_two_celery_workers_is_sent_once_within_pool_and_paced_to_the_rate_limit(
    tmp_path, postgres_warehouse
):
    create_recipients_table(postgres_warehouse.hook, "recipients", RECIPIENTS, bad_every=BAD_EVERY)
    start_at = first_slot()

    with (
        SandboxProcess(
            tmp_path / "sandbox.db",
            api_key=API_KEY,
            requests_per_minute=REQUESTS_PER_WINDOW,
            rate_window_seconds=RATE_WINDOW.total_seconds(),
        ) as sandbox,
        AirflowStack(
            tmp_path / "stack",
            executor="CeleryExecutor",
            parallelism=WORKERS * WORKER_CONCURRENCY,
            pool_slots=POOL_SLOTS,
            celery_workers=WORKERS,
            worker_concurrency=WORKER_CONCURRENCY,
            connections={
                "migosmtp_default": sandbox.airflow_connection(),
                "warehouse_default": postgres_warehouse.connection,
            },
            variables=VARIABLES,
        ) as stack,
    ):
        # The sandbox's first rate window starts at its reset: make that the trigger, not the stack's start.
        first_window_start = datetime.now(UTC)
        sandbox.reset()
        run_id = stack.api.trigger_dag_run(DAG_ID, campaign_conf("deploy-celery", start_at))
        run = stack.wait_for_dag_run(DAG_ID, run_id)
        assert run["state"] == "success", stack.describe_run(DAG_ID, run_id)
        report = RunReport.collect(stack, run_id, run)
        record, requests = sandbox.record(), sandbox.requests()
        hostnames = stack.worker_hostnames

    assert_mapped_batches_succeeded(report)
    assert_each_recipient_sent_once(record, expected_send_at(start_at))
    ledger = ledger_rows(postgres_warehouse.hook, "deploy-celery", with_recipient_ids=True)
    assert_ledger_matches_sandbox(ledger, record, requests, "deploy-celery", BATCHES)

    # Both workers took batches, and the pool held across them.
    assert {t["hostname"] for t in report.send_tries} == set(hostnames)
    assert peak_concurrency(report.send_tries) <= POOL_SLOTS

    # More batches than a window allows, and not one 429: the tasks that saw the window nearly
    # spent (X-RateLimit-Remaining below the reserve, 2 of 12 by default: the pool's 2 slots)
    # held their slot until it reset, on either worker.
    sends = [r for r in requests if r["path"] == SEND_PATH]
    assert [r["status_code"] for r in sends] == [202] * BATCHES
    per_window = Counter(window_starts(sends, first_window_start))
    assert len(per_window) >= 2
    assert max(per_window.values()) <= REQUESTS_PER_WINDOW
