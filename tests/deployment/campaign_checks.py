"""The campaign both deployment tests send, and what must hold afterwards whatever the executor.

Like tests/test_campaign_e2e.py, every claim about what was sent is checked
against the sandbox's own record, and the stack is only seen through its REST API.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from demo.airflow_stack import DAG_ID, POOL, AirflowStack
from demo.audience import sample_rows
from include.warehouse import utc_text
from tests.conftest import ALL_AT_ONCE

API_KEY = "test-key"
# Short server-error back-off, as in tests/conftest.py, so a stray 5xx costs seconds.
VARIABLES = {"migosmtp_server_error_delays": "[0.2, 0.2, 0.2]"}

RECIPIENTS = 200
BAD_EVERY = 50  # one of each bad-row kind: screening runs on the real stack too
BATCH_SIZE = 10
HOURLY_CAP = 50  # 5 batches per hour: the 20 batches span 4 send_at hours
BATCHES = RECIPIENTS // BATCH_SIZE


def first_slot() -> datetime:
    """A whole hour a week ahead: in the future whenever the test runs, and inside one UTC day."""
    return (datetime.now(UTC) + timedelta(days=7)).replace(hour=9, minute=0, second=0, microsecond=0)


def campaign_conf(campaign_id: str, start_at: datetime) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "max_batch_size": BATCH_SIZE,
        "hourly_cap": HOURLY_CAP,
        "daily_cap": 1000,
        "start_at": utc_text(start_at),
        "submit_ahead_minutes": ALL_AT_ONCE,
    }


def expected_send_at(start_at: datetime) -> dict[str, str]:
    """Each valid recipient's address and the send_at its batch must carry.

    Recipients are packed in (recipient_id, email) order, ``HOURLY_CAP`` to an hour; of two
    rows sharing a recipient_id the first in that order (``other<n>``) is the one kept.
    """
    shared_ids = {row[0] for row in sample_rows(RECIPIENTS, BAD_EVERY) if str(row[1]).startswith("other")}
    return {
        f"{'other' if n in shared_ids else 'user'}{n}@example.com": utc_text(
            start_at + timedelta(hours=(n - 1) // HOURLY_CAP)
        )
        for n in range(1, RECIPIENTS + 1)
    }


def assert_each_recipient_sent_once(record: Mapping[str, Any], expected: Mapping[str, str]) -> None:
    received = Counter(r["to"] for b in record["batches"] for r in b["recipients"])
    duplicates = {to: n for to, n in received.items() if n > 1}
    assert not duplicates, f"sent more than once: {duplicates}"
    missing, extra = sorted(set(expected) - set(received)), sorted(set(received) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]}, extra {extra[:10]}"
    wrong = {
        r["to"]: (b["send_at"], expected[r["to"]])
        for b in record["batches"]
        for r in b["recipients"]
        if b["send_at"] != expected[r["to"]]
    }
    assert not wrong, f"recipient: (sent for, expected) {dict(list(wrong.items())[:10])}"


@dataclass(frozen=True)
class RunReport:
    """What the REST API says about a finished run."""

    run: dict[str, Any]
    task_instances: list[dict[str, Any]]
    send_tries: list[dict[str, Any]]  # every try of every mapped send_batch

    @classmethod
    def collect(cls, stack: AirflowStack, run_id: str, run: dict[str, Any]) -> RunReport:
        tis = stack.api.task_instances(DAG_ID, run_id)
        tries = [
            attempt
            for ti in tis
            if ti["task_id"] == "send_batch"
            for attempt in stack.api.task_instance_tries(DAG_ID, run_id, "send_batch", ti["map_index"])
        ]
        return cls(run, tis, tries)

    def states(self, task_id: str) -> list[str]:
        return [ti["state"] for ti in self.task_instances if ti["task_id"] == task_id]

    def mapped_send_batches(self) -> list[dict[str, Any]]:
        return sorted(
            (ti for ti in self.task_instances if ti["task_id"] == "send_batch"),
            key=lambda ti: ti["map_index"],
        )


def assert_mapped_batches_succeeded(report: RunReport) -> None:
    assert report.states("plan") == ["success"]
    assert report.states("close_ledger") == ["success"]
    mapped = report.mapped_send_batches()
    assert [ti["map_index"] for ti in mapped] == list(range(BATCHES))
    assert {ti["state"] for ti in mapped} == {"success"}
    assert {ti["pool"] for ti in mapped} == {POOL}
    assert all(ti["hostname"] and ti["pid"] for ti in mapped), "every batch ran in a real worker process"


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def peak_concurrency(tries: Iterable[Mapping[str, Any]]) -> int:
    """Most tries running at one instant, from their start/end dates (an end frees its slot first)."""
    events = sorted(
        (_instant(t[edge]), delta)
        for t in tries
        if t["start_date"] and t["end_date"]
        for edge, delta in (("start_date", 1), ("end_date", -1))
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak
