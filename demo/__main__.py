"""Run one real campaign on the embedded default and print its ledger.

    python -m demo [--recipients 5000] [--bad-every 100] [--start-at 2026-12-01T00:00:00Z]
                   [--dag bulk_email_campaign|weekly_newsletter] [--local-time]

Seeds a SQLite warehouse under ``.demo/``, starts the MigoSMTP sandbox on
loopback, points ``warehouse_default`` and ``migosmtp_default`` at them, runs
the ``bulk_email_campaign`` DAG (or, with ``--dag weekly_newsletter``, last
Monday's newsletter, the run its schedule makes) with ``dag.test()`` in a
project-local AIRFLOW_HOME, then checks the ledger against what the sandbox received.

``--local-time`` is the planner's second act on one campaign: recipients in six time zones
(Kathmandu's +5:45, India's +5:30 and Lord Howe's half-hour DST among them), weekdays
09:00-17:00 in each recipient's own zone, a warm-up ramp in the ``migosmtp_warmup``
Variable (200, then 400 a day, for every campaign of the account), and a frequency cap of one
mail a week after an earlier campaign mailed a tenth of the list.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / ".demo"
DEMO_API_KEY = "demo-key"
DEMO_WEBHOOK_SECRET = "whsec_demo"
MANUAL_DAG, WEEKLY_DAG = "bulk_email_campaign", "weekly_newsletter"
# The article's plan lasts four days; the demo submits it at once (ten days ahead) so that it runs in a
# minute. In production each batch waits, deferred, until submit_ahead_minutes (60) before its slot.
ALL_AT_ONCE = 14_400
# --local-time: a plan of weekdays under a ramp lasts a few weeks; submitted at once all the same.
LOCAL_TIME_AT_ONCE = 60 * 24 * 60
LOCAL_TIME_ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
)


def _wait_for_webhooks(sandbox, done, timeout: float = 180) -> list[dict]:
    """Until every sandbox batch is ``done`` (or the deadline); returns the sandbox's events."""
    deadline = time.monotonic() + timeout
    while not all(done(b) for b in sandbox.record()["batches"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return sandbox.events()


def _airflow_env() -> None:
    os.environ.setdefault("AIRFLOW_HOME", str(REPO_ROOT / ".airflow"))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO_ROOT / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def _next_utc_midnight() -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=5000)
    parser.add_argument("--bad-every", type=int, default=100, help="one bad row after every N good ones")
    parser.add_argument(
        "--start-at",
        default=_next_utc_midnight(),
        help="first slot, ISO-8601 UTC (default: the next UTC midnight, so the days split as in the article)",
    )
    parser.add_argument("--hourly-cap", type=int, default=150)
    parser.add_argument("--daily-cap", type=int, default=1500)
    parser.add_argument(
        "--dag",
        choices=[MANUAL_DAG, WEEKLY_DAG],
        default=MANUAL_DAG,
        help=f"{WEEKLY_DAG}: last Monday's run, its campaign named after that logical date",
    )
    parser.add_argument(
        "--local-time",
        action="store_true",
        help="zones, a weekday 09:00-17:00 window, a warm-up ramp and a frequency cap on one campaign",
    )
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    _airflow_env()
    DEMO_DIR.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)

    from airflow.dag_processing.dagbag import DagBag

    from demo.audience import create_recipients_table
    from demo.receiver import webhook_receiver
    from include.campaign import ledger
    from include.campaign.provider import EVENT_TYPES
    from include.campaign.settings import derive_campaign_id
    from include.warehouse import fetch_dicts, get_warehouse_hook
    from sandbox import SandboxProcess

    warehouse_path = DEMO_DIR / "warehouse.db"
    warehouse_path.unlink(missing_ok=True)
    os.environ["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(
        {"conn_type": "sqlite", "host": str(warehouse_path)}
    )
    hook = get_warehouse_hook()
    conf = {
        "hourly_cap": args.hourly_cap,
        "daily_cap": args.daily_cap,
        "start_at": args.start_at,
        "submit_ahead_minutes": ALL_AT_ONCE,
    }
    if args.dag == WEEKLY_DAG:
        create_recipients_table(hook, "newsletter_subscribers", args.recipients, args.bad_every)
        now = datetime.now(UTC)
        monday = (now - timedelta(days=now.weekday())).replace(hour=9, minute=0, second=0, microsecond=0)
        logical_date = monday if monday <= now else monday - timedelta(weeks=1)  # the latest that passed
        campaign_id = derive_campaign_id(WEEKLY_DAG, logical_date)  # campaign_id is left empty
    else:
        zones = LOCAL_TIME_ZONES if args.local_time else ()
        create_recipients_table(hook, "recipients", args.recipients, args.bad_every, zones=zones)
        logical_date = datetime.now(UTC)
        campaign_id = conf["campaign_id"] = "demo-" + logical_date.strftime("%Y%m%dT%H%M%S")
    earlier = None
    if args.local_time:
        start = datetime.fromisoformat(args.start_at.replace("Z", "+00:00"))
        os.environ["AIRFLOW_VAR_MIGOSMTP_WARMUP"] = json.dumps(
            {"start": start.date().isoformat(), "daily": [200, 400]}
        )
        conf.update(
            # Every Param the earlier run sets too: dag.test() keeps a run's conf in the DAG's params.
            recipients_table="recipients",
            submit_ahead_minutes=LOCAL_TIME_AT_ONCE,
            send_days=["mon", "tue", "wed", "thu", "fri"],
            send_hours="09:00-17:00",
            max_mails_per_recipient=1,
            frequency_days=7,
        )
        # An earlier campaign this week to the first tenth of the list (the same addresses).
        create_recipients_table(hook, "earlier_recipients", args.recipients // 10)
        earlier = {**conf, "campaign_id": f"{campaign_id}-earlier", "recipients_table": "earlier_recipients"}
        earlier.update(send_hours="00:00-24:00", max_mails_per_recipient=0)
    os.environ["AIRFLOW_CONN_MIGOSMTP_WEBHOOK"] = json.dumps(
        {"conn_type": "generic", "password": DEMO_WEBHOOK_SECRET}
    )
    with (
        webhook_receiver() as receiver_url,
        SandboxProcess(
            DEMO_DIR / "sandbox.db",
            api_key=DEMO_API_KEY,
            webhook_url=receiver_url,
            webhook_secret=DEMO_WEBHOOK_SECRET,
            bounce_rate=0.03,
            soft_bounce_rate=0.01,
            defer_rate=0.01,
            complaint_rate=0.002,
            unsubscribe_rate=0.003,
            webhook_retry_base_seconds=0.5,
        ) as sandbox,
    ):
        sandbox.reset()
        os.environ["AIRFLOW_CONN_MIGOSMTP_DEFAULT"] = json.dumps(sandbox.airflow_connection())
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        if bag.import_errors:
            print(bag.import_errors, file=sys.stderr)
            return 1
        print(
            f"Running {args.dag} for {logical_date:%Y-%m-%dT%H:%MZ} {json.dumps(conf)} "
            f"against the sandbox at {sandbox.url} ..."
        )
        if earlier is not None:
            print(
                f"First an earlier campaign, {earlier['campaign_id']}, to {args.recipients // 10} of them ..."
            )
            bag.get_dag(args.dag).test(run_conf=earlier, logical_date=logical_date - timedelta(seconds=1))
        run = bag.get_dag(args.dag).test(run_conf=conf, logical_date=logical_date)
        record = sandbox.record()
        record["batches"] = [b for b in record["batches"] if f"campaign:{campaign_id}" in b["tags"]]
        went = [r for r in ledger.rows(hook, campaign_id) if r["attempts"]]
        ahead = conf["submit_ahead_minutes"]
        print(
            f"{len(went)} batches went to the sandbox at once (submit_ahead_minutes={ahead}: "
            f"{ahead // 1440} days ahead, so the whole plan); none waited."
        )
        # Fast-forward the sandbox past the last send_at: it delivers and posts the signed webhooks.
        days = 60 if args.local_time else 7
        print(f"Fast-forwarding the sandbox {days} days; webhooks go to {receiver_url} ...")
        sandbox.advance(days * 24 * 3600)
        _wait_for_webhooks(sandbox, lambda b: b["status"] != "scheduled")  # sent: first events out
        sandbox.advance(3600)  # and their follow-ups (a delivery after a deferral, a complaint after it)
        events = _wait_for_webhooks(sandbox, lambda b: b["status"] == "delivered")
        bag.get_dag("migosmtp_delivery_reconcile").test()

    entries = ledger.rows(hook, campaign_id)
    rejected = hook.get_records(
        f"SELECT reason, COUNT(*) FROM email_rejected_recipients WHERE campaign_id = {hook.placeholder} "
        "GROUP BY reason",
        parameters=(campaign_id,),
    )
    print(f"\nLedger email_batch_ledger for {campaign_id} (run {run.state}):")
    deliveries = {
        r["batch_number"]: r
        for r in fetch_dicts(
            hook,
            f"SELECT * FROM email_batch_deliveries WHERE campaign_id = {hook.placeholder}",
            (campaign_id,),
        )
    }
    print(
        f"{'batch':>5}  {'send_at':20}  {'count':>5}  {'status':9}  {'attempts':>8}  "
        + " ".join(f"{kind:>{len(kind)}}" for kind in EVENT_TYPES)
        + "  batch_id"
    )
    for row in entries:
        d = deliveries.get(row["batch_number"], {})
        print(
            f"{row['batch_number']:>5}  {row['send_at']:20}  {row['recipient_count']:>5}  {row['status']:9}  "
            f"{row['attempts']:>8}  "
            + " ".join(f"{d.get(kind, 0):>{len(kind)}}" for kind in EVENT_TYPES)
            + f"  {row['batch_id'] or '-'}"
        )
    per_day = Counter()
    for row in entries:
        per_day[row["send_at"][:10]] += row["recipient_count"]
    summary = ledger.summarize(entries)
    print(f"\nRecipients per UTC day: {dict(sorted(per_day.items()))}")
    if args.local_time:
        from include.campaign import preview

        print("Recipients per local hour (each recipient's own clock when the batch goes):")
        for hour, zones in preview.by_local_hour(preview.local_hours(hook, campaign_id)).items():
            print(
                f"  {hour}  {sum(zones.values()):>5}  "
                + ", ".join(f"{z} {n}" for z, n in sorted(zones.items()))
            )
    print(f"Rejected rows: {dict(rejected)} (details in email_rejected_recipients)")
    print(f"Batches by status: {summary.by_status}; recipients in batches: {summary.recipients}")
    received = sum(b["recipient_count"] for b in record["batches"])
    matches = {r["batch_id"] for r in entries if r["batch_id"]} == {b["batch_id"] for b in record["batches"]}
    print(
        f"Sandbox received {len(record['batches'])} batches, {received} recipients, "
        f"{record['requests_total']} API requests; ledger matches sandbox: {matches}"
    )
    totals = Counter()
    for d in deliveries.values():
        for kind in EVENT_TYPES:
            totals[kind] += d[kind]
    print(
        f"Webhook events: {len(events)} emitted by the sandbox, "
        f"{hook.get_first('SELECT COUNT(*) FROM email_events')[0]} stored by the receiver; "
        f"per status after reconcile: {dict(totals)}"
    )
    suppressed = hook.get_records("SELECT reason, COUNT(*) FROM email_suppressions GROUP BY reason")
    print(f"Suppressed for later campaigns: {dict(suppressed)} (email_suppressions)")
    print(f"Warehouse: {warehouse_path}  Sandbox record: {DEMO_DIR / 'sandbox.db'}")
    return 0 if run.state == "success" and matches else 1


if __name__ == "__main__":
    sys.exit(main())
