"""Run one real campaign on the embedded default and print its ledger.

    python -m include.demo [--recipients 5000] [--bad-every 100] [--start-at 2026-12-01T00:00:00Z]

Seeds a SQLite warehouse under ``.demo/``, starts the MigoSMTP sandbox on
loopback, points ``warehouse_default`` and ``migosmtp_default`` at them, runs
the ``bulk_email_campaign`` DAG with ``dag.test()`` in a project-local
AIRFLOW_HOME, then checks the ledger against what the sandbox received.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / ".demo"
DEMO_API_KEY = "demo-key"


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
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    _airflow_env()
    DEMO_DIR.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)

    from airflow.dag_processing.dagbag import DagBag

    from include import batch_ledger
    from include.migosmtp_sandbox import SandboxProcess
    from include.sample_audience import create_recipients_table
    from include.warehouse import get_warehouse_hook

    warehouse_path = DEMO_DIR / "warehouse.db"
    warehouse_path.unlink(missing_ok=True)
    os.environ["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(
        {"conn_type": "sqlite", "host": str(warehouse_path)}
    )
    hook = get_warehouse_hook()
    create_recipients_table(hook, "recipients", args.recipients, args.bad_every)

    campaign_id = "demo-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    conf = {
        "campaign_id": campaign_id,
        "hourly_cap": args.hourly_cap,
        "daily_cap": args.daily_cap,
        "start_at": args.start_at,
    }
    with SandboxProcess(DEMO_DIR / "sandbox.db", api_key=DEMO_API_KEY) as sandbox:
        sandbox.reset()
        os.environ["AIRFLOW_CONN_MIGOSMTP_DEFAULT"] = json.dumps(
            {
                "conn_type": "http",
                "schema": "http",
                "host": sandbox.host,
                "port": sandbox.port,
                "password": DEMO_API_KEY,
            }
        )
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        if bag.import_errors:
            print(bag.import_errors, file=sys.stderr)
            return 1
        print(f"Running bulk_email_campaign {json.dumps(conf)} against the sandbox at {sandbox.url} ...")
        run = bag.get_dag("bulk_email_campaign").test(run_conf=conf)
        record = sandbox.record()

    ledger = batch_ledger.rows(hook, campaign_id)
    rejected = hook.get_records(
        f"SELECT reason, COUNT(*) FROM email_rejected_recipients WHERE campaign_id = {hook.placeholder} "
        "GROUP BY reason",
        parameters=(campaign_id,),
    )
    print(f"\nLedger email_batch_ledger for {campaign_id} (run {run.state}):")
    print(f"{'batch':>5}  {'send_at':20}  {'count':>5}  {'status':9}  {'attempts':>8}  batch_id")
    for row in ledger:
        print(
            f"{row['batch_number']:>5}  {row['send_at']:20}  {row['recipient_count']:>5}  {row['status']:9}  "
            f"{row['attempts']:>8}  {row['batch_id'] or '-'}"
        )
    per_day = Counter()
    for row in ledger:
        per_day[row["send_at"][:10]] += row["recipient_count"]
    summary = batch_ledger.summarize(ledger)
    print(f"\nRecipients per UTC day: {dict(sorted(per_day.items()))}")
    print(f"Rejected rows: {dict(rejected)} (details in email_rejected_recipients)")
    print(f"Batches by status: {summary.by_status}; recipients in batches: {summary.recipients}")
    received = sum(b["recipient_count"] for b in record["batches"])
    matches = {r["batch_id"] for r in ledger if r["batch_id"]} == {b["batch_id"] for b in record["batches"]}
    print(
        f"Sandbox received {len(record['batches'])} batches, {received} recipients, "
        f"{record['requests_total']} API requests; ledger matches sandbox: {matches}"
    )
    print(f"Warehouse: {warehouse_path}  Sandbox record: {DEMO_DIR / 'sandbox.db'}")
    return 0 if run.state == "success" and matches else 1


if __name__ == "__main__":
    sys.exit(main())
