"""The README's ``airflow`` commands, exactly as printed, against a real stack.

The commands are read from README.md itself (its ```bash blocks and its inline code), so the
README and this test cannot drift: the runbook's commands and those of the two DAGs' sections
are run one by one with ``stack.airflow_cli`` (the stack's environment and metadata database,
as a user of that deployment runs them), each with ``y`` typed at its prompt, and what the
README says each does is checked through the REST API and against the sandbox. The README
prints every command in full (real DAG ids and dates, no placeholders), so nothing is
substituted. Every ``airflow`` command anywhere in the README must also parse with Airflow's own
CLI parser, and every date it gives a run-selecting option has a time of day.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from demo.airflow_stack import DAG_ID, AirflowStack
from demo.audience import create_recipients_table
from include.campaign.ledger import rows as ledger_rows
from include.campaign.settings import derive_campaign_id
from sandbox import SandboxProcess
from tests.deployment.campaign_checks import API_KEY
from tests.deployment.conftest import WEEKLY

README = Path(__file__).resolve().parents[2] / "README.md"
# The sections whose commands this test runs: the two DAGs' and the runbook.
RUNBOOK_SECTIONS = (
    "### DAG `bulk_email_campaign`",
    "### DAG `weekly_newsletter` (a recurring campaign)",
    "## Runbook: resuming and backfilling",
)
DATE_OPTIONS = ("-s", "--start-date", "-e", "--end-date", "--from-date", "--to-date")
SUBSCRIBERS = 20
RECIPIENTS = 30


# -- reading the README --------------------------------------------------------------------------


def _sections(text: str) -> dict[str, str]:
    """Each heading line and the text up to the next heading of any level."""
    parts = re.split(r"(?m)^(#{2,4} .*)$", text)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def commands_in(text: str) -> list[list[str]]:
    """Every ``airflow ...`` command in ``text``, as argv, in order: one per line of a ```bash block
    (``\\`` continuations joined, ``#`` comments dropped, as the shell does), and every inline code
    span that starts with ``airflow `` (a span may wrap across lines)."""
    found: list[tuple[int, list[str]]] = []
    for block in re.finditer(r"(?ms)^```bash\n(.*?)^```", text):
        for line in block.group(1).replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["airflow"]:
                found.append((block.start(), argv))
    prose = re.sub(r"(?ms)^```.*?^```", lambda m: " " * len(m.group(0)), text)
    for span in re.finditer(r"`([^`]+)`", prose):
        code = " ".join(span.group(1).split())
        if code.startswith("airflow "):
            found.append((span.start(), shlex.split(code)))
    return [argv for _, argv in sorted(found, key=lambda item: item[0])]


def runbook_commands() -> list[list[str]]:
    sections = _sections(README.read_text())
    missing = [title for title in RUNBOOK_SECTIONS if title not in sections]
    assert not missing, f"README.md has no section {missing}"
    return [argv for title in RUNBOOK_SECTIONS for argv in commands_in(sections[title])]


def option(argv: list[str], *names: str) -> str | None:
    for n, arg in enumerate(argv):
        if arg in names:
            return argv[n + 1]
    return None


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the README's commands as Airflow's CLI reads them (no stack) ---------------------------------


def test_every_airflow_command_in_the_readme_parses_and_selects_runs_by_full_timestamps():
    from airflow.cli.cli_parser import get_parser

    commands = commands_in(README.read_text())
    assert len(commands) >= 10, commands  # the parser above really finds them
    for argv in commands:
        try:
            get_parser().parse_args(argv[1:])
        except SystemExit as exit_:
            raise AssertionError(f"Airflow's CLI refuses {shlex.join(argv)} (exit {exit_.code})") from None
        for name in DATE_OPTIONS:
            value = option(argv, name)
            # A date alone is 00:00: it misses a 09:00 run (see the README's runbook).
            assert value is None or "T" in value, f"{shlex.join(argv)}: {name} {value} has no time of day"


# -- the runbook on a real stack ------------------------------------------------------------------


def _kind(argv: list[str]) -> str:
    if argv[1:3] == ["backfill", "create"]:
        return "backfill"
    if argv[1:3] == ["tasks", "clear"]:
        return "clear_batches" if {"-f", "--only-failed"} & set(argv) else "clear_run"
    if argv[1:3] == ["dags", "trigger"]:
        conf = json.loads(option(argv, "--conf", "-c") or "{}")
        return "retry_failed" if conf.get("mode") == "retry_failed" else "trigger"
    raise AssertionError(f"the runbook prints a command this test does not know: {shlex.join(argv)}")


@pytest.mark.deployment
def test_the_runbook_commands_as_printed_do_what_the_readme_says(
    tmp_path, postgres_warehouse, local_stack: AirflowStack
):
    stack, hook = local_stack, postgres_warehouse.hook
    commands: dict[str, list[list[str]]] = {}
    for argv in runbook_commands():
        commands.setdefault(_kind(argv), []).append(argv)
    assert set(commands) == {"backfill", "clear_run", "clear_batches", "trigger", "retry_failed"}, commands
    # The two backfills the README prints (the DAG's section, the runbook) are the same command.
    [backfill] = {shlex.join(argv) for argv in commands["backfill"]}
    backfill = shlex.split(backfill)
    [clear_run], [clear_batches] = commands["clear_run"], commands["clear_batches"]
    [trigger], [retry_failed] = commands["trigger"], commands["retry_failed"]
    assert {option(argv, "--dag-id") or argv[3] for argv in (backfill, clear_run, clear_batches)} == {WEEKLY}

    from_date, to_date = instant(option(backfill, "--from-date")), instant(option(backfill, "--to-date"))
    weeks = [from_date + timedelta(weeks=n) for n in range((to_date - from_date).days // 7 + 1)]
    assert weeks[-1] == to_date and all((w.weekday(), w.hour) == (0, 9) for w in weeks), weeks
    cleared_week = instant(option(clear_run, "-s"))
    batch_week = instant(option(clear_batches, "-s"))
    assert instant(option(clear_run, "-e")) == cleared_week
    assert instant(option(clear_batches, "-e")) == batch_week
    assert {cleared_week, batch_week} < set(weeks) and cleared_week != batch_week

    def run(argv: list[str]):
        done = stack.airflow_cli(argv[1:], input="y\n")
        output = f"{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{output}"
        return done

    def weekly_runs() -> dict[datetime, dict]:
        return {
            instant(r["logical_date"]): r
            for r in stack.api.dag_runs(WEEKLY)
            if r["run_type"] == "backfill" and instant(r["logical_date"]) in weeks
        }

    def tries(run_: dict) -> dict[str, int]:
        tis = stack.api.task_instances(WEEKLY, run_["dag_run_id"])
        return {ti["task_id"]: ti["try_number"] for ti in tis}

    def wait_for_backfill() -> None:
        latest = max(stack.api.backfills(WEEKLY), key=lambda b: b["id"])
        stack.wait_for_backfill(latest["id"])

    create_recipients_table(hook, "newsletter_subscribers", SUBSCRIBERS)
    create_recipients_table(hook, "recipients", RECIPIENTS)
    with SandboxProcess(tmp_path / "sandbox.db", api_key=API_KEY) as sandbox:
        stack.api.set_connection("migosmtp_default", sandbox.airflow_connection())

        # The dates as printed cover the end date's 09:00 run; the same dates without a time do not.
        dry = run([*backfill, "--dry-run"]).stdout
        dates_only = [a[:10] if a[:1].isdigit() else a for a in backfill]
        dry_dates_only = run([*dates_only, "--dry-run"]).stdout
        assert all(f"{w:%Y-%m-%d %H:%M:%S}" in dry for w in weeks), dry
        assert f"{to_date:%Y-%m-%d %H:%M:%S}" not in dry_dates_only, dry_dates_only
        assert f"{weeks[0]:%Y-%m-%d %H:%M:%S}" in dry_dates_only, dry_dates_only

        # The provider refuses every week's batch once (one batch of 20 a week): every run fails.
        sandbox.set_faults([{"action": "status", "status": 400, "message": "refused", "times": len(weeks)}])
        run(backfill)
        wait_for_backfill()
        runs = weekly_runs()
        assert sorted(runs) == weeks, sorted(runs)  # every Monday 09:00, the end date's included
        assert {r["state"] for r in runs.values()} == {"failed"}, stack.describe_run(
            WEEKLY, runs[weeks[0]]["dag_run_id"]
        )
        before = {week: tries(r) for week, r in runs.items()}

        # A date alone matches no task of a 09:00 run: nothing is cleared, and nothing is said.
        silent = run([a[:10] if a[:1].isdigit() else a for a in clear_run])
        assert "You are about to" not in silent.stdout
        assert {week: tries(r) for week, r in weekly_runs().items()} == before
        assert weekly_runs()[cleared_week]["state"] == "failed"

        # Clearing the run (its logical date in full) clears its tasks, plan included: it finishes.
        assert "You are about to delete" in run(clear_run).stdout
        assert stack.wait_for_dag_run(WEEKLY, runs[cleared_week]["dag_run_id"])["state"] == "success"
        assert {t: n - 1 for t, n in tries(runs[cleared_week]).items()} == before[cleared_week]

        # Narrowed with -t as a regex, it clears nothing (Airflow 3.3's -t matches by substring).
        narrowed = run([*clear_batches[:4], "-t", "send_batch|close_ledger", *clear_batches[4:]])
        assert "You are about to" not in narrowed.stdout
        assert tries(runs[batch_week]) == before[batch_week]
        # Clearing the failed tasks of one run: send_batch and close_ledger again, plan not.
        run(clear_batches)
        assert stack.wait_for_dag_run(WEEKLY, runs[batch_week]["dag_run_id"])["state"] == "success"
        after = tries(runs[batch_week])
        assert after == {**before[batch_week], "send_batch": 2, "close_ledger": 2}, before[batch_week]
        assert before[batch_week]["plan"] == after["plan"] == 1
        # Neither clear touched another run.
        untouched = [w for w in weeks if w not in (cleared_week, batch_week)]
        assert {w: tries(runs[w]) for w in untouched} == {w: before[w] for w in untouched}
        assert {weekly_runs()[w]["state"] for w in untouched} == {"failed"}

        # The runbook's backfill again, reprocess failed: the failed week is rerun and finished.
        run(backfill)
        wait_for_backfill()
        assert {r["state"] for r in weekly_runs().values()} == {"success"}
        posts_after_reprocess = _posts(sandbox)
        # ...and once more: nothing new is sent.
        run(backfill)
        wait_for_backfill()
        assert _posts(sandbox) == posts_after_reprocess

        # A manual campaign from the CLI: a run without a logical date, sent.
        run(trigger)
        [manual] = _runs_of(stack, "summer-2026")
        assert manual["logical_date"] is None  # what the runbook says of clearing such a run
        assert stack.wait_for_dag_run(DAG_ID, manual["dag_run_id"])["state"] == "success"
        posts_after_manual = _posts(sandbox)
        # mode=retry_failed on a campaign with nothing unsent: a new run, which sends nothing.
        run(retry_failed)
        [retry] = [r for r in _runs_of(stack, "summer-2026") if r["dag_run_id"] != manual["dag_run_id"]]
        assert stack.wait_for_dag_run(DAG_ID, retry["dag_run_id"])["state"] == "success"
        assert _posts(sandbox) == posts_after_manual
        record = sandbox.record()

    # Each week's campaign: every subscriber once, refused once and then accepted.
    for week in weeks:
        campaign_id = derive_campaign_id(WEEKLY, week)
        batches = [b for b in record["batches"] if f"campaign:{campaign_id}" in b["tags"]]
        received = Counter(r["to"] for b in batches for r in b["recipients"])
        assert len(received) == SUBSCRIBERS and set(received.values()) == {1}, campaign_id
        assert {r["status"] for r in ledger_rows(hook, campaign_id)} == {"scheduled"}
        statuses = [r["status_code"] for r in posts_after_manual if campaign_id in r["idempotency_key"]]
        assert statuses == [400, 202], (campaign_id, statuses)
    manual_batches = [b for b in record["batches"] if "campaign:summer-2026" in b["tags"]]
    assert sum(b["recipient_count"] for b in manual_batches) == RECIPIENTS
    assert {r["status"] for r in ledger_rows(hook, "summer-2026")} == {"scheduled"}


def _runs_of(stack: AirflowStack, campaign_id: str) -> list[dict]:
    return [r for r in stack.api.dag_runs(DAG_ID) if (r["conf"] or {}).get("campaign_id") == campaign_id]


def _posts(sandbox: SandboxProcess) -> list[dict]:
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"].startswith("/v1/")]
