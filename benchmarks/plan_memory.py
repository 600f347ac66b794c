"""Planning time and memory against list size, beside the naive pandas script.

    .venv/bin/python benchmarks/plan_memory.py [--sizes 10000 100000 1000000]
        [--warehouse sqlite|postgres] [--json] [--no-naive] [--xcom] [--zones N] [--window]

For each size: seed a fresh warehouse (a SQLite file, or a new database on the
local PostgreSQL) with N recipients plus 1% bad rows, then, each in a fresh
process so its peak RSS is its own, time ``plan_campaign`` (read, screen,
stage, write the planned ledger) and the naive approach (``naive_plan.py``:
the whole table in pandas, ``to_sql``) on the same table. Prints a table, or
with ``--json`` one JSON object per size (``recipients``, ``seconds``,
``max_rss_mib``, ``rows_per_s``, the naive figures and the ratios). ``--xcom``
adds the XCom handed to the mapped tasks per batch, which must not grow with
the batch size.

``--zones N`` seeds the table with a ``timezone`` column, the recipients (bad rows
too) cycling over the first N of ``ZONES``: real IANA zones with whole, half- and
45-minute offsets (Asia/Kolkata, Asia/Kathmandu, Australia/Adelaide, Pacific/Chatham)
and DST (Europe/Berlin, America/New_York). ``--window`` plans within a sending window,
weekdays 09:00-17:00 in each recipient's zone (``WINDOW``); ``--zones`` implies it. With
a window the UTC-only plan of the same table (no window: zones change nothing) is timed
too, in its own child, after the window plan's tables are dropped, and printed beside
it with the ratio of the times, windowed / UTC-only (in JSON: ``zones``, ``window``,
``utc_seconds``, ``utc_max_rss_mib``, ``utc_rows_per_s``, ``utc_batches``,
``window_to_utc``, and ``zone_mixed_batches`` and ``outside_window`` for the windowed plan,
both 0 when each batch is one zone's with its send_at inside that zone's window); the
naive baseline knows no window and is unchanged. Each zone fills its own batches, so the
windowed plan has at most N more batches than the UTC-only one (each zone's last one
partial): 1,000,000 recipients over 20 zones make at most 1,020, within Airflow's default
``[core] max_map_length`` of 1,024, which the children use as the plain run does.
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
# --window: weekdays, office hours, in each recipient's own zone.
WINDOW = {"send_days": ["mon", "tue", "wed", "thu", "fri"], "send_hours": "09:00-17:00"}
# --zones N takes the first N. Whole, half-hour (Kolkata, Tehran, Kabul, St John's, Adelaide),
# 45-minute (Kathmandu, Eucla, Chatham) and DST (Berlin, New York, Lord Howe's half hour) offsets.
ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "Europe/London",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/St_Johns",
    "Asia/Tehran",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kabul",
    "Australia/Eucla",
    "Pacific/Auckland",
    "Africa/Lagos",
    "America/Chicago",
    "Asia/Singapore",
)


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


def _window_checks(hook) -> dict:
    """Of the windowed plan just made: batches holding more than one zone, and batches whose
    send_at is outside the window in their zone (both 0 when the plan is right)."""
    from include.campaign import ledger
    from include.campaign.windows import SendWindow, zone
    from include.warehouse import STAGING_TABLE, fetch_dicts, parse_utc

    mixed = fetch_dicts(
        hook,
        f"SELECT COUNT(*) AS n FROM (SELECT batch_number FROM {STAGING_TABLE} "
        "GROUP BY batch_number HAVING COUNT(DISTINCT timezone) > 1) AS mixed",
        (),
    )[0]["n"]
    window = SendWindow.parse(WINDOW["send_days"], WINDOW["send_hours"])
    outside = sum(
        not window.allows(parse_utc(r["send_at"]).astimezone(zone(r["timezone"] or "UTC")))
        for r in ledger.rows(hook, PARAMS["campaign_id"])
    )
    return {"zone_mixed_batches": int(mixed), "outside_window": outside}


def _child(role: str, size: int, max_batch_size: int, zones: int = 0, window: bool = False) -> dict:
    """Runs in its own process, with the warehouse connection in the environment."""
    import logging

    logging.disable(logging.INFO)
    sys.path.insert(0, str(REPO_ROOT))
    from include.warehouse import get_warehouse_hook

    hook = get_warehouse_hook()
    if role == "seed":
        from demo.audience import create_recipients_table

        create_recipients_table(hook, TABLE, size, bad_every=100, zones=ZONES[:zones])
        return {}
    if role == "reset":  # drop the last plan's tables, so the next plan starts as the first did
        from include.warehouse.schema import OWN_TABLES

        hook.run([f"DROP TABLE IF EXISTS {table}" for table in sorted(OWN_TABLES)])
        if hook.dialect_name == "sqlite":
            hook.run("VACUUM", autocommit=True)
        return {}
    params = {**PARAMS, "max_batch_size": max_batch_size, **(WINDOW if window else {})}
    if role == "plan":
        from include.campaign.plan import plan_campaign
        from include.warehouse import REJECTED_TABLE, STAGING_TABLE, fetch_dicts

        started = time.perf_counter()
        batches = plan_campaign(params)
        seconds = time.perf_counter() - started

        def count(table: str) -> int:
            return int(fetch_dicts(hook, f"SELECT COUNT(*) AS n FROM {table}", ())[0]["n"])

        max_rss_mib = _max_rss_mib()  # the plan's own peak, before the checks below
        result = {
            "batches": len(batches),
            "staged": count(STAGING_TABLE),
            "rejected": count(REJECTED_TABLE),
            "xcom_bytes_per_batch": round(len(json.dumps(batches)) / len(batches), 1),
        }
        if window:
            result.update(_window_checks(hook))
            result["last_send_at"] = max(b["send_at"] for b in batches)
        return {**result, "seconds": round(seconds, 2), "max_rss_mib": max_rss_mib}
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


def _run_child(
    role: str,
    size: int,
    max_batch_size: int,
    connection: dict,
    workdir: Path,
    zones: int = 0,
    window: bool = False,
) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": json.dumps(connection),
    }
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            role,
            str(size),
            str(max_batch_size),
            str(zones),
            str(int(window)),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    size: int, kind: str, naive: bool, max_batch_size: int = 1000, zones: int = 0, window: bool = False
) -> dict:
    # The work folder (the SQLite warehouse, the children's AIRFLOW_HOME) is removed however this ends.
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        return _measure_in(Path(tmp), size, kind, naive, max_batch_size, zones, window or bool(zones))


def _measure_in(
    workdir: Path, size: int, kind: str, naive: bool, max_batch_size: int, zones: int, window: bool
) -> dict:
    connection = _create_warehouse(kind, workdir)
    try:
        _run_child("seed", size, max_batch_size, connection, workdir, zones)
        plan = _run_child("plan", size, max_batch_size, connection, workdir, zones, window)
        rows = size + size // 100  # the seed adds one bad row per hundred
        result = {
            "warehouse": kind,
            "recipients": size,
            "rows": rows,
            "max_batch_size": max_batch_size,
            **(
                {"zones": zones, "window": f"{','.join(WINDOW['send_days'])} {WINDOW['send_hours']}"}
                if window
                else {}
            ),
            **plan,
            "rows_per_s": round(rows / plan["seconds"]),
        }
        if window:  # the same table's UTC-only plan, on tables as fresh as the first plan's
            _run_child("reset", size, max_batch_size, connection, workdir)
            utc = _run_child("plan", size, max_batch_size, connection, workdir, zones)
            result.update(
                {
                    "utc_batches": utc["batches"],
                    "utc_staged": utc["staged"],
                    "utc_seconds": utc["seconds"],
                    "utc_max_rss_mib": utc["max_rss_mib"],
                    "utc_rows_per_s": round(rows / utc["seconds"]),
                    "window_to_utc": round(plan["seconds"] / utc["seconds"], 2),
                }
            )
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
    parser.add_argument(
        "--zones",
        type=int,
        default=0,
        choices=range(1, len(ZONES) + 1),
        metavar=f"1..{len(ZONES)}",
        help="seed a timezone column cycling over N real zones; implies --window",
    )
    parser.add_argument(
        "--window",
        action="store_true",
        help="plan within mon-fri 09:00-17:00 local, beside the same table's UTC-only plan",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, size, batch, zones, window = args.child
        print(json.dumps(_child(role, int(size), int(batch), int(zones), window == "1")))
        return
    window = args.window or bool(args.zones)
    # A SIGTERM ends the run as Ctrl-C does: through the finally blocks that remove its work folders
    # and databases (subprocess.run kills the running child first).
    signal.signal(signal.SIGTERM, _terminate)
    naive = not args.no_naive
    if not args.json:
        print(f"warehouse: {args.warehouse}")
        if window:
            where = f"over {args.zones} zones" if args.zones else "in default_timezone UTC"
            print(f"window: {', '.join(WINDOW['send_days'])} {WINDOW['send_hours']} local, {where}")
        print(
            f"{'recipients':>10} {'batches':>7} {'seconds':>8} {'rows/s':>8} {'RSS MiB':>8}"
            + (
                f" {'UTC bat.':>8} {'UTC s':>8} {'UTC rows/s':>10} {'UTC RSS':>8} {'win/UTC':>7}"
                if window
                else ""
            )
            + (f" {'naive s':>8} {'naive RSS':>9} {'speedup':>7} {'RSS ratio':>9}" if naive else "")
        )
    results = []
    for size in args.sizes:
        r = measure(size, args.warehouse, naive, zones=args.zones, window=window)
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        line = (
            f"{r['recipients']:>10} {r['batches']:>7} {r['seconds']:>8} {r['rows_per_s']:>8} "
            f"{r['max_rss_mib']:>8}"
        )
        if window:
            line += (
                f" {r['utc_batches']:>8} {r['utc_seconds']:>8} {r['utc_rows_per_s']:>10}"
                f" {r['utc_max_rss_mib']:>8} {r['window_to_utc']:>6}x"
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
            + (f" (UTC-only: {last['utc_max_rss_mib'] / first['utc_max_rss_mib']:.2f})" if window else "")
        )
    if window and not args.json:
        for r in results:
            print(
                f"{r['recipients']:,}: {r['zone_mixed_batches']} batches of more than one zone, "
                f"{r['outside_window']} sent outside the window; the last at {r['last_send_at']}"
            )
    if args.xcom and not args.json:
        print(f"\n{'batch size':>10} {'batches':>7} {'XCom bytes/batch':>16}")
        for batch_size in (10, 100, 1000):
            r = measure(10_000, args.warehouse, naive=False, max_batch_size=batch_size)
            print(f"{batch_size:>10} {r['batches']:>7} {r['xcom_bytes_per_batch']:>16}")


if __name__ == "__main__":
    main()
