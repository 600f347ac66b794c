"""Planning memory and XCom size against list size: prints one row per run.

    .venv/bin/python benchmarks/plan_memory.py [--sizes 10000 50000 200000] [--warehouse postgres]

Each size runs in a fresh process: seed a warehouse (a SQLite file, or a new
database on the local PostgreSQL) with N recipients
(1% bad rows), time ``plan_campaign`` (stream, screen, stage, write the
planned ledger), then plan again under tracemalloc for its peak traced Python
memory (started after imports and seeding) and report the process's peak RSS. A second table shows
the XCom the plan hands to the mapped tasks, per batch, for small and large
batches: it must not grow with the batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _warehouse_connection(kind: str, workdir: Path) -> dict:
    if kind == "sqlite":
        return {"conn_type": "sqlite", "host": str(workdir / "warehouse.db")}
    import psycopg

    database = f"plan_bench_{workdir.name.replace('-', '_').lower()}"
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    return {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "login": "postgres",
        "schema": database,
    }


def _drop_postgres(connection: dict) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{connection["schema"]}" WITH (FORCE)')


def _one(size: int, max_batch_size: int, kind: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="plan-bench-"))
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow")
    connection = _warehouse_connection(kind, workdir)
    os.environ["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(connection)
    sys.path.insert(0, str(REPO_ROOT))
    from demo.audience import create_recipients_table
    from include.campaign.tasks import plan_campaign
    from include.warehouse import get_warehouse_hook

    create_recipients_table(get_warehouse_hook(), "recipients", size, bad_every=100)
    params = {
        "campaign_id": "bench",
        "recipients_table": "recipients",
        "from_email": "news@example.com",
        "subject": "s",
        "html_body": "<p>h</p>",
        "text_body": "t",
        "hourly_cap": 1_000_000,
        "daily_cap": 10_000_000,
        "max_batch_size": max_batch_size,
        "start_at": "2026-12-01T00:00:00Z",
    }
    started = time.perf_counter()
    plan_campaign(params)
    seconds = time.perf_counter() - started
    # Plan again under tracemalloc (which slows it): the earlier plan sent nothing, so it is replaced.
    tracemalloc.start()
    batches = plan_campaign(params)
    _, peak = tracemalloc.get_traced_memory()
    if kind == "postgres":
        _drop_postgres(connection)
    return {
        "recipients": size,
        "max_batch_size": max_batch_size,
        "batches": len(batches),
        "seconds": round(seconds, 2),
        "traced_peak_mib": round(peak / 2**20, 2),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "xcom_bytes_per_batch": round(len(json.dumps(batches)) / len(batches), 1),
    }


def _run(size: int, max_batch_size: int, kind: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(size), str(max_batch_size), kind],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--warehouse", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import logging

        logging.disable(logging.INFO)
        size, batch, kind = args.child
        print(json.dumps(_one(int(size), int(batch), kind)))
        return
    print(f"{'recipients':>10} {'batch':>6} {'batches':>7} {'seconds':>8} {'traced MiB':>10} {'RSS MiB':>8}")
    for size in args.sizes:
        r = _run(size, 1000, args.warehouse)
        print(
            f"{r['recipients']:>10} {r['max_batch_size']:>6} {r['batches']:>7} {r['seconds']:>8} "
            f"{r['traced_peak_mib']:>10} {r['max_rss_mib']:>8}"
        )
    print(f"\n{'batch size':>10} {'batches':>7} {'XCom bytes/batch':>16}")
    for batch_size in (10, 100, 1000):
        r = _run(10_000, batch_size, args.warehouse)
        print(f"{batch_size:>10} {r['batches']:>7} {r['xcom_bytes_per_batch']:>16}")


if __name__ == "__main__":
    main()
