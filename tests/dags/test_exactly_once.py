"""Nothing lost, nothing twice: the real DAG under faults, then a resume where one is needed.

Every scenario ends with the same check, read from the sandbox's own record:
each valid recipient scheduled exactly once, and the ledger agreeing with the
sandbox batch for batch. The figures of each scenario are printed as a table
at the end of the pytest run ("exactly-once scenarios").
"""

from __future__ import annotations

import email
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from demo.audience import create_recipients_table
from include.campaign.ledger import rows as ledger_rows
from include.warehouse import utc_text
from tests.conftest import (
    AUDIENCE,
    REPO_ROOT,
    SCENARIO_REPORT,
    point_migosmtp_at,
    postgres_admin,
)
from tests.helpers import api_requests, due_in, fail_runs_left_running, received, wait_for_plan

RECIPIENTS = AUDIENCE  # the audience fixture's recipients
CONF = {"max_batch_size": 10, "hourly_cap": 1000, "daily_cap": 1000}
RESUME = {**CONF, "mode": "retry_failed"}


@pytest.fixture
def started():
    return time.monotonic()


def ledger(warehouse, campaign_id="c1"):
    return ledger_rows(warehouse, campaign_id)


def assert_exactly_once(name, sandbox, warehouse, started, recipients=RECIPIENTS):
    """Each valid recipient scheduled once; the ledger equals the sandbox's record. Reports the figures."""
    counts = received(sandbox)
    duplicates = sum(n - 1 for n in counts.values())
    lost = recipients - len(counts)
    rows = ledger(warehouse)
    SCENARIO_REPORT.append(
        {
            "scenario": f"{name} [{warehouse.dialect_name}]",
            "recipients": recipients,
            "batches": len(rows),
            "api_requests": len(api_requests(sandbox)),
            "duplicates": duplicates,
            "lost": lost,
            "wall_s": round(time.monotonic() - started, 1),
        }
    )
    assert duplicates == 0 and lost == 0
    assert {r["status"] for r in rows} == {"scheduled"}
    sent = {b["idempotency_key"]: (b["batch_id"], b["recipient_count"]) for b in sandbox.record()["batches"]}
    assert {r["idempotency_key"]: (r["batch_id"], r["recipient_count"]) for r in rows} == sent


def assert_looked_up_before_every_resend(sandbox):
    """Per idempotency key: after its first POST, each later POST follows a look-up by that key."""
    looked_up: set[str] = set()
    posted: set[str] = set()
    lookups = 0
    for r in api_requests(sandbox):
        key = r["idempotency_key"]
        if r["method"] == "GET" and key:
            looked_up.add(key)
            lookups += 1
        elif r["method"] == "POST":
            assert key not in posted or key in looked_up, f"batch {key} resent without a look-up"
            posted.add(key)
            looked_up.discard(key)
    assert lookups, "no look-up happened at all"


class TestTransientFaults:
    def test_429_storm_with_retry_after(self, run_campaign, audience, sandbox, started):
        sandbox.set_faults([{"action": "status", "status": 429, "retry_after": "1", "times": 8}])

        run = run_campaign(**CONF)

        assert run.state == "success"
        assert [r["status_code"] for r in api_requests(sandbox) if r["method"] == "POST"].count(429) == 8
        assert_exactly_once("429 storm (8 x Retry-After: 1)", sandbox, audience, started)

    @pytest.mark.parametrize("storm", [12, 13])
    def test_429s_are_retried_up_to_the_dags_retries_and_no_further(
        self, run_campaign, audience, sandbox, storm
    ):
        from tests.conftest import load_campaign_dag

        tries = load_campaign_dag().get_task("send_batch").retries + 1  # the first try included
        sandbox.set_faults([{"action": "status", "status": 429, "retry_after": "0", "times": storm}])

        state = run_campaign(**{**CONF, "max_batch_size": RECIPIENTS}).state  # one batch takes them all

        posts = [r["status_code"] for r in api_requests(sandbox) if r["method"] == "POST"]
        [entry] = ledger(audience)
        assert tries == 13
        if storm < tries:
            assert (state, entry["status"]) == ("success", "scheduled")
            assert posts == [429] * storm + [202]
        else:
            assert (state, entry["status"]) == ("failed", "failed")
            assert posts == [429] * tries and "429" in entry["last_error"]

    def test_5xx_burst_that_recovers(self, run_campaign, audience, sandbox, started):
        sandbox.set_faults([{"action": "status", "status": 503, "times": 5}])

        assert run_campaign(**CONF).state == "success"

        assert max(r["attempts"] for r in ledger(audience)) <= 4
        assert_exactly_once("5xx burst that recovers (5 x 503)", sandbox, audience, started)

    def test_5xx_that_does_not_recover_then_resume(self, run_campaign, audience, sandbox, started):
        sandbox.set_faults([{"action": "status", "status": 500, "times": 1000}])

        run = run_campaign(**CONF)

        assert run.state == "failed"
        assert [r["attempts"] for r in ledger(audience)] == [
            4,
            4,
            4,
        ]  # first try + 3 retries, per the article
        assert len([r for r in api_requests(sandbox) if r["method"] == "POST"]) == 12
        assert received(sandbox) == {}
        assert_looked_up_before_every_resend(sandbox)

        sandbox.set_faults([])
        assert run_campaign(**RESUME).state == "success"
        assert_exactly_once("5xx that persist, then retry_failed", sandbox, audience, started)

    def test_timeouts(self, run_campaign, audience, sandbox, started, monkeypatch):
        point_migosmtp_at(monkeypatch, sandbox, timeout=1)
        # The retry comes after the late request was handled (and logged): the log's order is the
        # order things happened in.
        monkeypatch.setenv("AIRFLOW_VAR_MIGOSMTP_SERVER_ERROR_DELAYS", "[2.5, 2.5, 2.5]")
        sandbox.set_faults([{"action": "latency", "seconds": 2, "times": 2}])

        assert run_campaign(**CONF).state == "success"

        assert_looked_up_before_every_resend(sandbox)
        requests = api_requests(sandbox)
        # Both timed-out requests reached the sandbox (it answers late): the look-ups find them,
        # so no batch is POSTed a second time.
        posts = [r for r in requests if r["method"] == "POST"]
        assert len(posts) == len({r["idempotency_key"] for r in posts}) == 3
        assert len([r for r in requests if r["method"] == "GET" and r["idempotency_key"]]) == 2
        assert_exactly_once("timeouts (2 x 2 s against a 1 s timeout)", sandbox, audience, started)

    def test_accepted_then_answer_dropped(self, run_campaign, audience, sandbox, started):
        sandbox.set_faults([{"action": "drop_after_accept", "times": 2}])

        assert run_campaign(**CONF).state == "success"

        assert (
            len([r for r in api_requests(sandbox) if r["method"] == "POST"]) == 3
        )  # found by key, not re-posted
        assert_looked_up_before_every_resend(sandbox)
        assert_exactly_once("accept, then drop the answer (x2)", sandbox, audience, started)


class TestHaltAndResume:
    def test_402_part_way_halts_then_resume_after_upgrade(self, run_campaign, audience, sandbox, started):
        sandbox.update_settings(monthly_limit=15)  # room for the first batch of 10 only
        # No pre-flight: the quota runs out part-way, as when another client of the account spends it.
        run = run_campaign(**CONF, quota_policy="ignore")

        assert run.state == "failed"
        assert sorted(r["status"] for r in ledger(audience)) == ["failed", "halted", "scheduled"]
        assert len(received(sandbox)) == 10  # the halted batches reached nobody
        assert [r["attempts"] for r in ledger(audience) if r["status"] == "failed"] == [1]

        sandbox.update_settings(monthly_limit=1000)
        resumed = run_campaign(**RESUME)

        assert resumed.state == "success"
        assert len(resumed.states("send_batch")) == 2  # only the unsent batches
        assert_exactly_once("402 part-way, upgrade, retry_failed", sandbox, audience, started)

    def test_401_from_the_start_then_resume_with_the_right_key(
        self, run_campaign, audience, sandbox, started, monkeypatch
    ):
        point_migosmtp_at(monkeypatch, sandbox, password="wrong")

        # quota_policy=ignore: the send, not the pre-flight, meets the 401
        assert run_campaign(**CONF, quota_policy="ignore").state == "failed"
        assert [r["status_code"] for r in api_requests(sandbox)] == [401]
        assert sorted(r["status"] for r in ledger(audience)) == ["failed", "halted", "halted"]

        point_migosmtp_at(monkeypatch, sandbox)
        assert run_campaign(**RESUME).state == "success"
        assert_exactly_once("401 from the start, fix key, retry_failed", sandbox, audience, started)

    def test_resume_keeps_the_first_audience(self, run_campaign, audience, sandbox):
        sandbox.set_faults([{"action": "status", "status": 402}])
        run_campaign(**CONF)
        create_recipients_table(audience, "recipients", 50)  # 20 people added since the first plan

        run_campaign(**RESUME)

        assert set(received(sandbox)) == {f"user{n}@example.com" for n in range(1, RECIPIENTS + 1)}

    def test_resume_with_nothing_unsent_sends_nothing(self, run_campaign, audience, sandbox):
        assert run_campaign(**CONF).state == "success"
        before = len(api_requests(sandbox))

        run = run_campaign(**RESUME)

        assert run.state == "success"
        assert len(api_requests(sandbox)) == before

    def test_resume_of_an_unknown_campaign_fails_before_sending(self, run_campaign, audience, sandbox):
        run = run_campaign(campaign_id="never-planned", **RESUME)

        assert run.state == "failed" and run.states("plan") == ["failed"]
        assert api_requests(sandbox) == []

    def test_passed_slots_are_re_placed_around_what_is_scheduled(self, run_campaign, audience, sandbox):
        this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        caps = {"max_batch_size": 10, "hourly_cap": 10, "daily_cap": 1000}
        sandbox.set_faults([{"action": "status", "status": 402}])
        run_campaign(**caps)
        # As if that halt was five hours ago: no plan can book a past slot any more, so age the ledger.
        audience.run(
            f"UPDATE email_batch_ledger SET send_at = {audience.placeholder} WHERE campaign_id = 'c1'",
            parameters=(f"{this_hour - timedelta(hours=5):%Y-%m-%dT%H:%M:%SZ}",),
        )
        create_recipients_table(audience, "others", 10)
        run_campaign(campaign_id="other", recipients_table="others", **caps)  # fills this hour

        run_campaign(**caps, mode="retry_failed")

        batches = sandbox.record()["batches"]
        # Read from what "other" booked, not the clock: the hour may turn while the test runs.
        [other_slot] = {b["send_at"] for b in batches if "campaign:other" in b["tags"]}
        other_hour = datetime.fromisoformat(other_slot.replace("Z", "+00:00")).replace(minute=0, second=0)
        assert other_hour >= this_hour
        slots = sorted(b["send_at"][:13] for b in batches if "campaign:c1" in b["tags"])
        assert slots == [(other_hour + timedelta(hours=h)).strftime("%Y-%m-%dT%H") for h in (1, 2, 3)]
        per_hour = Counter()
        for b in sandbox.record()["batches"]:
            per_hour[b["send_at"][:13]] += b["recipient_count"]
        assert max(per_hour.values()) == 10


class TestHaltAlerts:
    def test_one_chat_alert_per_halt(self, run_campaign, audience, sandbox, chat_webhook):
        sandbox.set_faults([{"action": "status", "status": 402}])

        run_campaign(**CONF)

        [alert] = chat_webhook
        assert "campaign 'c1' halted" in alert["text"] and "quota exceeded" in alert["text"]
        assert "mode=retry_failed" in alert["text"]

    def test_email_alert(self, run_campaign, audience, sandbox, monkeypatch):
        from aiosmtpd.controller import Controller

        class Inbox:
            messages: list = []

            async def handle_DATA(self, server, session, envelope):
                self.messages.append(envelope)
                return "250 OK"

        inbox = Inbox()
        with socket.socket() as probe:  # aiosmtpd cannot listen on port 0 itself
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = Controller(inbox, hostname="127.0.0.1", port=port)
        controller.start()
        monkeypatch.setenv(
            "AIRFLOW_CONN_CAMPAIGN_ALERTS",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": port,
                    "extra": {
                        "to": "ops@example.com",
                        "from_email": "airflow@example.com",
                        "disable_ssl": True,
                        "disable_tls": True,
                    },
                }
            ),
        )
        point_migosmtp_at(monkeypatch, sandbox, password="wrong")
        try:
            # quota_policy=ignore: the send, not the pre-flight, meets the 401
            run_campaign(**CONF, quota_policy="ignore")
        finally:
            controller.stop()

        [envelope] = inbox.messages
        assert envelope.rcpt_tos == ["ops@example.com"]
        message = email.message_from_bytes(envelope.content)
        body = "".join(
            part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart()
        )
        assert message["Subject"] == "MigoSMTP campaign halted"
        assert "campaign &#x27;c1&#x27; halted" in body and "invalid_api_key" in body

    def test_batches_that_give_up_on_server_errors_raise_one_alert_per_run(
        self, run_campaign, audience, sandbox, chat_webhook
    ):
        sandbox.set_faults([{"action": "status", "status": 503, "times": 1000}])

        assert run_campaign(**CONF).state == "failed"

        assert [r["status"] for r in ledger(audience)] == ["failed"] * 3  # all three gave up
        [alert] = chat_webhook
        assert re.search(r"campaign 'c1': batch [123] gave up", alert["text"]) and "503" in alert["text"]
        assert "mode=retry_failed" in alert["text"]

    def test_failures_that_do_not_halt_raise_no_alert(self, run_campaign, audience, sandbox, chat_webhook):
        sandbox.set_faults([{"action": "status", "status": 400}])

        assert run_campaign(**CONF).state == "failed"

        assert chat_webhook == []


class TestProcessesDying:
    def test_warehouse_unavailable_while_the_ledger_closes(self, run_campaign, audience, sandbox, started):
        """The outage starts once every batch is scheduled and spans both close_ledger tries."""

        def outage_when_all_sent():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = _safe_ledger(audience)
                if len(rows) == 3 and all(r["status"] == "scheduled" for r in rows):
                    break
                time.sleep(0.005)
            warehouse_outage(audience, seconds=25)

        outage = threading.Thread(target=outage_when_all_sent)
        outage.start()
        run = run_campaign(**CONF)
        outage.join()

        assert run.state == "failed" and run.states("close_ledger") == ["failed"]
        assert run.task("close_ledger").try_number == 2

        rerun = run_campaign(**RESUME)

        assert rerun.state == "success"
        assert rerun.states("send_batch") == ["skipped"]  # mapped over nothing: no batch was unsent
        assert_exactly_once(
            "warehouse down during the ledger write, then rerun",
            sandbox,
            audience,
            started,
        )

    def test_run_killed_while_a_batch_is_in_flight(self, run_campaign, audience, sandbox, started):
        """The whole dag.test process is SIGKILLed while a bulk request is waiting on the provider."""
        sandbox.set_faults([{"action": "latency", "seconds": 3, "times": 1}])
        # The same Airflow home, connections and DAG folder: the environment conftest set up.
        worker = dag_test_in_another_process({"campaign_id": "c1", **CONF, "submit_ahead_minutes": 14400})
        try:
            in_flight = None
            # A bound, not the usual time: a fresh process imports Airflow and plans first, which took
            # over 60 s with the whole suite on 2 cores.
            deadline = time.monotonic() + 180
            while in_flight is None and time.monotonic() < deadline:
                # Attempts are counted before the request leaves: attempted but unsettled means in flight.
                in_flight = next(
                    (r for r in _safe_ledger(audience) if r["attempts"] and r["status"] == "planned"), None
                )
                time.sleep(0.05)
            assert in_flight is not None, "no batch went in flight"
            os.killpg(worker.pid, signal.SIGKILL)
        finally:
            worker.wait(timeout=30)
        # The provider finishes accepting the request nobody is waiting for.
        deadline = time.monotonic() + 60
        while not any(
            b["idempotency_key"] == in_flight["idempotency_key"] for b in sandbox.record()["batches"]
        ):
            assert time.monotonic() < deadline, "the in-flight batch never landed at the sandbox"
            time.sleep(0.1)
        assert len(fail_runs_left_running()) == 1  # the killed run, until now "running"

        rerun = run_campaign(**RESUME)

        assert rerun.state == "success"
        assert_exactly_once("run killed with a request in flight, then rerun", sandbox, audience, started)


def dag_test_in_another_process(conf: dict) -> subprocess.Popen:
    """``dag.test()`` of the campaign DAG in a process of its own (a group of its own, to SIGKILL
    whole), with the Airflow home, connections and DAG folder conftest set up."""
    script = textwrap.dedent(
        f"""
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder={str(REPO_ROOT / "dags")!r}).dags["bulk_email_campaign"]
        dag.test(run_conf={conf!r})
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class TestWaitingBatches:
    """The same guarantees when the batches first wait deferred, then meet the faults on waking."""

    @pytest.mark.parametrize(
        "name, faults",
        [
            ("429 storm after a wait", [{"action": "status", "status": 429, "retry_after": "1", "times": 6}]),
            ("accept, then drop the answer, after a wait", [{"action": "drop_after_accept", "times": 2}]),
        ],
    )
    def test_transient_faults_after_a_wait(self, run_campaign, audience, sandbox, started, name, faults):
        sandbox.set_faults(faults)
        slot, ahead = due_in(20)
        slot = utc_text(slot)

        assert run_campaign(**CONF, start_at=slot, submit_ahead_minutes=ahead).state == "success"

        assert {b["send_at"] for b in sandbox.record()["batches"]} == {slot}
        if faults[0]["action"] == "drop_after_accept":
            assert_looked_up_before_every_resend(sandbox)
        assert_exactly_once(name, sandbox, audience, started)

    def test_5xx_after_a_wait_then_resume(self, run_campaign, audience, sandbox, started):
        sandbox.set_faults([{"action": "status", "status": 500, "times": 1000}])
        slot, ahead = due_in(20)
        slot = utc_text(slot)

        assert run_campaign(**CONF, start_at=slot, submit_ahead_minutes=ahead).state == "failed"
        assert received(sandbox) == {}

        sandbox.set_faults([])
        assert run_campaign(**RESUME).state == "success"
        assert {b["send_at"] for b in sandbox.record()["batches"]} == {slot}
        assert_exactly_once("5xx after a wait, then retry_failed", sandbox, audience, started)

    def test_run_killed_while_its_batches_wait_then_resume(self, run_campaign, audience, sandbox, started):
        """The dag.test process is SIGKILLed while every batch waits deferred; the resume sends each once."""
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
        start_at = f"{tomorrow:%Y-%m-%dT%H:%M:%SZ}"
        worker = dag_test_in_another_process({"campaign_id": "c1", **CONF, "start_at": start_at})
        try:
            wait_for_plan(audience, "c1", batches=3)
            time.sleep(5)  # its batches are deferred by now: they wait for tomorrow
            assert api_requests(sandbox) == [] or all(r["method"] == "GET" for r in api_requests(sandbox))
            os.killpg(worker.pid, signal.SIGKILL)
        finally:
            worker.wait(timeout=30)
        assert {r["status"] for r in ledger(audience)} == {"planned"}
        assert len(fail_runs_left_running()) == 1  # the killed run, until now "running"

        rerun = run_campaign(**{**RESUME, "submit_ahead_minutes": 14400})

        assert rerun.state == "success"
        assert {b["send_at"][:13] for b in sandbox.record()["batches"]} == {f"{tomorrow:%Y-%m-%dT%H}"}
        assert_exactly_once("run killed while its batches wait, then rerun", sandbox, audience, started)


def warehouse_outage(hook, seconds: float) -> None:
    """Make the warehouse refuse work for ``seconds``, the way each database does.

    SQLite: another connection holds the write lock, so writes fail with "database is locked".
    PostgreSQL: the database stops accepting connections and its sessions are terminated.
    """
    if hook.dialect_name == "sqlite":
        holder = sqlite3.connect(hook.get_connection(hook.get_conn_id()).host, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        holder.execute("ROLLBACK")
        holder.close()
        return
    database = hook.get_connection(hook.get_conn_id()).schema
    postgres_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    postgres_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
    time.sleep(seconds)
    postgres_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


def _safe_ledger(warehouse):
    try:
        return ledger(warehouse)
    except Exception:  # the table may not exist yet while the killed run is still planning
        return []
