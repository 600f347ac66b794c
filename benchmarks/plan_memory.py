"""Planning time and memory against list size, beside the naive pandas script.

    .venv/bin/python benchmarks/plan_memory.py [--sizes 10000 100000 1000000]
        [--warehouse sqlite|postgres] [--json] [--no-naive] [--xcom]

For each size: seed a fresh warehouse (a SQLite file, or a new database on the
local PostgreSQL) with N recipients plus 1% bad rows, then, each in a fresh
process so its peak RSS is its own, time ``plan_campaign`` (read, screen,
stage, write the planned ledger) and the naive approach (``naive_plan.py``:
the whole table in pandas, ``to_sql``) on the same table. Prints a table, or
with ``--json`` one JSON object per size (``recipients``, ``seconds``,
``max_rss_mib``, ``rows_per_s``, the naive figures and the ratios). ``--xcom``
adds the XCom handed to the mapped tasks per batch, which must not grow with
the batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLE = "recipients"
PARAMS = {
    "campaign_id": "bench",
    "recipients_table": TABLE,
    "from_email": "news@example.com",
    "subject": "s",
    "html_body": "<p>h</p>",
    "text_body": "t",
    "hourly_cap": 1_000_000,
    "daily_cap": 10_000_000,
    "start_at": "2026-12-01T00:00:00Z",
    # Planning is what is measured: no quota pre-flight (it would need a MigoSMTP connection).
    "quota_policy": "ignore",
}


def _create_warehouse(kind: str, workdir: Path) -> dict:
    if kind == "sqlite":
        return {"conn_type": "sqlite", "host": str(workdir / "warehouse.db")}
    import psycopg

    database = f"plan_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    return {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "login": "postgres",
        "schema": database,
    }


def _drop_warehouse(connection: dict) -> None:
    if connection["conn_type"] != "postgres":
        return
    import psycopg

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{connection["schema"]}" WITH (FORCE)')


def _max_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _child(role: str, size: int, max_batch_size: int) -> dict:
    """Runs in its own process, with the warehouse connection in the environment."""
    import logging

    logging.disable(logging.INFO)
    sys.path.insert(0, str(REPO_ROOT))
    from include.warehouse import get_warehouse_hook

    hook = get_warehouse_hook()
    if role == "seed":
        from demo.audience import create_recipients_table

        create_recipients_table(hook, TABLE, size, bad_every=100)
        return {}
    params = {**PARAMS, "max_batch_size": max_batch_size}
    if role == "plan":
        from include.campaign.plan import plan_campaign
        from include.warehouse import REJECTED_TABLE, STAGING_TABLE, fetch_dicts

        started = time.perf_counter()
        batches = plan_campaign(params)
        seconds = time.perf_counter() - started

        def count(table: str) -> int:
            return int(fetch_dicts(hook, f"SELECT COUNT(*) AS n FROM {table}", ())[0]["n"])

        result = {
            "batches": len(batches),
            "staged": count(STAGING_TABLE),
            "rejected": count(REJECTED_TABLE),
            "xcom_bytes_per_batch": round(len(json.dumps(batches)) / len(batches), 1),
        }
    else:
        from datetime import datetime

        from naive_plan import plan_naive

        from include.campaign.planner import PlanCaps

        caps = PlanCaps(max_batch_size, PARAMS["hourly_cap"], PARAMS["daily_cap"])
        start_at = datetime.fromisoformat(PARAMS["start_at"].replace("Z", "+00:00"))
        engine = hook.get_sqlalchemy_engine()
        started = time.perf_counter()
        result = plan_naive(engine, TABLE, caps, start_at)
        seconds = time.perf_counter() - started
    return {**result, "seconds": round(seconds, 2), "max_rss_mib": _max_rss_mib()}


def _run_child(role: str, size: int, max_batch_size: int, connection: dict, workdir: Path) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": json.dumps(connection),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", role, str(size), str(max_batch_size)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(size: int, kind: str, naive: bool, max_batch_size: int = 1000) -> dict:
    # The work folder (the SQLite warehouse, the children's AIRFLOW_HOME) is removed however this ends.
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        return _measure_in(Path(tmp), size, kind, naive, max_batch_size)


def _measure_in(workdir: Path, size: int, kind: str, naive: bool, max_batch_size: int) -> dict:
    connection = _create_warehouse(kind, workdir)
    try:
        _run_child("seed", size, max_batch_size, connection, workdir)
        plan = _run_child("plan", size, max_batch_size, connection, workdir)
        rows = size + size // 100  # the seed adds one bad row per hundred
        result = {
            "warehouse": kind,
            "recipients": size,
            "rows": rows,
            "max_batch_size": max_batch_size,
            **plan,
            "rows_per_s": round(rows / plan["seconds"]),
        }
        if naive:
            other = _run_child("naive", size, max_batch_size, connection, workdir)
            result.update(
                {
                    "naive_seconds": other["seconds"],
                    "naive_max_rss_mib": other["max_rss_mib"],
                    "naive_staged": other["staged"],
                    "naive_rejected": other["rejected"],
                    "speedup": round(other["seconds"] / plan["seconds"], 2),
                    "rss_ratio_naive_to_planner": round(other["max_rss_mib"] / plan["max_rss_mib"], 2),
                }
            )
        return result
    finally:
        _drop_warehouse(connection)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--warehouse", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per size")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--xcom", action="store_true", help="also measure XCom bytes per batch")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, size, batch = args.child
        print(json.dumps(_child(role, int(size), int(batch))))
        return
    # A SIGTERM ends the run as Ctrl-C does: through the finally blocks that remove its work folders
    # and databases (subprocess.run kills the running child first).
    signal.signal(signal.SIGTERM, _terminate)
    naive = not args.no_naive
    if not args.json:
        print(f"warehouse: {args.warehouse}")
        print(
            f"{'recipients':>10} {'batches':>7} {'seconds':>8} {'rows/s':>8} {'RSS MiB':>8}"
            + (f" {'naive s':>8} {'naive RSS':>9} {'speedup':>7} {'RSS ratio':>9}" if naive else "")
        )
    results = []
    for size in args.sizes:
        r = measure(size, args.warehouse, naive)
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        line = (
            f"{r['recipients']:>10} {r['batches']:>7} {r['seconds']:>8} {r['rows_per_s']:>8} "
            f"{r['max_rss_mib']:>8}"
        )
        if naive:
            line += (
                f" {r['naive_seconds']:>8} {r['naive_max_rss_mib']:>9} {r['speedup']:>6}x"
                f" {r['rss_ratio_naive_to_planner']:>8}x"
            )
        print(line, flush=True)
    if not args.json and len(results) > 1:
        first, last = results[0], results[-1]
        print(
            f"peak RSS at {last['recipients']:,} / at {first['recipients']:,}: "
            f"{last['max_rss_mib'] / first['max_rss_mib']:.2f}"
        )
    if args.xcom and not args.json:
        print(f"\n{'batch size':>10} {'batches':>7} {'XCom bytes/batch':>16}")
        for batch_size in (10, 100, 1000):
            r = measure(10_000, args.warehouse, naive=False, max_batch_size=batch_size)
            print(f"{batch_size:>10} {r['batches']:>7} {r['xcom_bytes_per_batch']:>16}")


if __name__ == "__main__":
    main()
