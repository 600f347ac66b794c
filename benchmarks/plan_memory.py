"""Planning time and memory against list size, beside the naive pandas script and the SQL floor.

    .venv/bin/python benchmarks/plan_memory.py [--sizes 10000 100000 1000000]
        [--warehouse sqlite|postgres] [--json] [--no-naive] [--no-floor] [--xcom]
        [--screen frame|rows|both] [--chunk-rows N] [--profile] [--repeat K] [--zones N] [--window]

For each size: seed a fresh warehouse (a SQLite file, or a new database on the
local PostgreSQL) with N recipients plus 1% bad rows, then, each in a fresh
process so its peak RSS is its own, time ``plan_campaign`` (read, screen,
stage, write the planned ledger), the floor (``_FLOOR_SQL``: the screening and
the duplicates in one set-based statement, what the database does by itself)
and the naive approach (``naive_plan.py``: the whole table in pandas,
``to_sql``) on the same table. ``--repeat K`` plans (on fresh tables) and runs
the floor and the naive script K times in turn and keeps the medians: the plan's
time over the floor's, and the naive script's over the plan's, are the medians of
each turn's ratio. ``--screen both`` also plans the
table with the row-by-row screening (``audience.screen_rows``), ``--chunk-rows``
sets the plan's chunk, and ``--profile`` splits the plan's time per 100,000
rows read into read, screen, waiting for the writer and the rest, and gives its
writer thread's beside it: write and commit (``_Phases``). Prints a table, or
with ``--json`` one JSON object per size (``recipients``, ``seconds``,
``max_rss_mib``, ``rows_per_s``, ``floor_seconds``, ``plan_to_floor``, the naive
figures and ``speedup``, ``per_100k_rows``). ``--xcom`` adds the XCom handed to
the mapped tasks per batch, which must not grow with the batch size.

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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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


# The floor: what the database does by itself in one statement. The screening in SQL (trim,
# lower-case, the address check: PostgreSQL's regex is the planner's own pattern; SQLite has no
# regex, so a GLOB of its shape, "?*@?*.?*", stands in), the duplicates by two window functions (the first
# row of an id, of an email), the variables as JSON, into a new table, committed. No batches, no
# ledger, no indexes: a bound no planner that also writes those can reach.
_FLOOR_SQL = """
CREATE TABLE floor_screened AS
WITH numbered AS (
  SELECT ROW_NUMBER() OVER (ORDER BY recipient_id, email) AS source_row,
         NULLIF({trim}(CAST(recipient_id AS TEXT)), '') AS rid, NULLIF(LOWER({trim}(email)), '') AS em,
         first_name, variables
  FROM recipients),
checked AS (
  SELECT *, CASE WHEN rid IS NULL THEN 'missing_recipient_id' WHEN em IS NULL THEN 'missing_email'
                 WHEN length(em) > 254 OR {not_an_address} THEN 'invalid_email' END AS bad
  FROM numbered),
ranked AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY bad IS NULL, rid ORDER BY source_row) AS rid_n,
            ROW_NUMBER() OVER (PARTITION BY bad IS NULL, em ORDER BY source_row) AS em_n
  FROM checked)
SELECT source_row, rid AS recipient_id, em AS email,
       COALESCE(bad, CASE WHEN rid_n > 1 THEN 'duplicate_recipient_id'
                          WHEN em_n > 1 THEN 'duplicate_email' END) AS reason,
       {variables} AS variables
FROM ranked"""
_FLOOR_DIALECT = {
    "sqlite": {
        "trim": "TRIM",
        "not_an_address": "em NOT GLOB '?*@?*.?*'",
        "variables": "json_patch(json_object('first_name', first_name), COALESCE(variables, '{}'))",
    },
    "postgresql": {
        "trim": "BTRIM",
        "not_an_address": "em !~ %s",
        "variables": "(jsonb_strip_nulls(jsonb_build_object('first_name', first_name))"
        " || COALESCE(variables::jsonb, '{}'))::text",
    },
}


def _floor(hook) -> dict:
    """Time the floor statement on the seeded table; its table is dropped after it is counted."""
    from contextlib import closing

    from include.campaign.audience import EMAIL_PATTERN

    dialect = hook.dialect_name
    with closing(hook.get_conn()) as conn:
        with closing(conn.cursor()) as cur:
            cur.execute("DROP TABLE IF EXISTS floor_screened")
        conn.commit()
        started = time.perf_counter()
        with closing(conn.cursor()) as cur:
            sql = _FLOOR_SQL.format(**_FLOOR_DIALECT[dialect])
            if dialect == "postgresql":
                cur.execute(sql, (f"^{EMAIL_PATTERN}$",))
            else:
                cur.execute(sql)
        conn.commit()
        seconds = time.perf_counter() - started
        with closing(conn.cursor()) as cur:
            cur.execute("SELECT COUNT(*) - COUNT(reason), COUNT(reason) FROM floor_screened")
            staged, rejected = cur.fetchone()
            cur.execute("DROP TABLE floor_screened")
        conn.commit()
    return {"seconds": round(seconds, 2), "staged": int(staged), "rejected": int(rejected)}


class _Phases:
    """Where a plan's time goes, in seconds. The plan's own thread reads the table, screens, waits
    for the writer (blocked in ``PlanWriter.settle``) and does the rest (placing batches, building
    rows); these four add up to the plan's time. Its writer thread meanwhile writes the rows (the
    bulk inserts) and commits (a chunk's finish less its inserts, with the heartbeat UPDATE): time
    that overlaps the first four, except where the plan waits for it."""

    def __init__(self) -> None:
        self.read = self.screen = self.wait = self.write = self.finish = self.finish_writes = 0.0
        self._finishing = False

    def install(self) -> None:
        """Wrap the plan's own functions in timers (this child process only)."""
        import include.campaign.plan as plan
        import include.campaign.staging as staging

        phases = self
        stream_rows, bulk_insert = plan.stream_rows, staging.bulk_insert
        insert_planned = staging.ledger.insert_planned
        writer = staging.PlanWriter

        def timed_stream(*args, **kwargs):
            chunks = stream_rows(*args, **kwargs)
            while True:
                started = time.perf_counter()
                chunk = next(chunks, None)
                phases.read += time.perf_counter() - started
                if chunk is None:
                    return
                yield chunk

        def timed(name, function):
            def run(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    seconds = time.perf_counter() - started
                    setattr(phases, name, getattr(phases, name) + seconds)
                    if name == "write" and phases._finishing:
                        phases.finish_writes += seconds

            return run

        def finishing(*args, **kwargs):
            phases._finishing = True
            try:
                return finish(*args, **kwargs)
            finally:
                phases._finishing = False

        finish = timed("finish", writer._finish_chunk)
        plan.stream_rows = timed_stream
        staging.bulk_insert = timed("write", bulk_insert)
        staging.ledger.insert_planned = timed("write", insert_planned)
        writer.settle = timed("wait", writer.settle)
        writer._finish_chunk = finishing

    def screen_with(self, screen):
        return lambda *args: self._timed_screen(screen, args)

    def _timed_screen(self, screen, args):
        started = time.perf_counter()
        try:
            return screen(*args)
        finally:
            self.screen += time.perf_counter() - started

    def per_100k(self, total: float, rows: int) -> dict:
        """Each phase's seconds per 100,000 rows read: the plan's thread (read, screen, wait,
        rest) and, beside it, its writer's (write, commit)."""
        rest = total - self.read - self.screen - self.wait
        commit = self.finish - self.finish_writes
        scale = 100_000 / rows
        return {
            name: round(value * scale, 3)
            for name, value in (
                ("read", self.read),
                ("screen", self.screen),
                ("wait", self.wait),
                ("rest", rest),
                ("write", self.write),
                ("commit", commit),
            )
        }


def _child(
    role: str,
    size: int,
    max_batch_size: int,
    zones: int = 0,
    window: bool = False,
    chunk_rows: int = 0,
    screen: str = "frame",
    profile: bool = False,
) -> dict:
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

        # The naive script's tables too (naive_plan.py's names; it stays as the issue gave it).
        tables = sorted(OWN_TABLES) + ["naive_staging", "naive_rejected", "naive_ledger"]
        hook.run([f"DROP TABLE IF EXISTS {table}" for table in tables])
        if hook.dialect_name == "sqlite":
            hook.run("VACUUM", autocommit=True)
        return {}
    if role == "floor":
        return _floor(hook)
    params = {**PARAMS, "max_batch_size": max_batch_size, **(WINDOW if window else {})}
    if role == "plan":
        from include.campaign import plan
        from include.campaign.audience import screen_rows
        from include.campaign.screening import screen_frame
        from include.warehouse import REJECTED_TABLE, STAGING_TABLE, fetch_dicts

        phases = _Phases()
        screener = {"frame": screen_frame, "rows": screen_rows}[screen]
        if profile:
            phases.install()
            screener = phases.screen_with(screener)
        started = time.perf_counter()
        batches = plan.plan_campaign(params, chunk_rows=chunk_rows or plan.CHUNK_ROWS, screen=screener)
        seconds = time.perf_counter() - started

        def count(table: str) -> int:
            return int(fetch_dicts(hook, f"SELECT COUNT(*) AS n FROM {table}", ())[0]["n"])

        max_rss_mib = _max_rss_mib()  # the plan's own peak, before the checks below
        result = {
            "chunk_rows": chunk_rows or plan.CHUNK_ROWS,
            "batches": len(batches),
            "staged": count(STAGING_TABLE),
            "rejected": count(REJECTED_TABLE),
            "xcom_bytes_per_batch": round(len(json.dumps(batches)) / len(batches), 1),
        }
        if window:
            result.update(_window_checks(hook))
            result["last_send_at"] = max(b["send_at"] for b in batches)
        if profile:
            read = size + size // 100
            result["per_100k_rows"] = phases.per_100k(seconds, read)
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


def _run_child(connection: dict, workdir: Path, **job: Any) -> dict:
    """``_child(**job)`` in a fresh process, with the warehouse connection in its environment."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": json.dumps(connection),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    size: int,
    kind: str,
    naive: bool,
    max_batch_size: int = 1000,
    zones: int = 0,
    window: bool = False,
    *,
    floor: bool = True,
    chunk_rows: int = 0,
    screen: str = "frame",
    profile: bool = False,
    repeat: int = 1,
) -> dict:
    """One size's figures; ``screen`` "both" also plans the table with the row-by-row screening;
    ``repeat`` plans (each on fresh tables) and floors, in turn, and keeps the median plan."""
    # The work folder (the SQLite warehouse, the children's AIRFLOW_HOME) is removed however this ends.
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        plan = {
            "max_batch_size": max_batch_size,
            "zones": zones,
            "chunk_rows": chunk_rows,
            "profile": profile,
        }
        return _measure_in(
            Path(tmp),
            size,
            kind,
            naive,
            plan,
            window or bool(zones),
            floor=floor,
            screen=screen,
            repeat=repeat,
        )


def _median_run(runs: list[dict]) -> dict:
    """The run of median time (of an even number, the later of the middle two), whole: its RSS
    and counts go with its time."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def _measure_in(
    workdir: Path,
    size: int,
    kind: str,
    naive: bool,
    job: dict,
    window: bool,
    *,
    floor: bool,
    screen: str,
    repeat: int,
) -> dict:
    connection = _create_warehouse(kind, workdir)

    def child(role: str, **more: Any) -> dict:
        return _run_child(connection, workdir, role=role, size=size, **{**job, **more})

    def fresh_plan(**more: Any) -> dict:
        """A plan on tables as fresh as the first plan's."""
        child("reset")
        return child("plan", **more)

    try:
        child("seed")
        first_screen = "frame" if screen == "both" else screen
        # The machine's speed drifts within minutes, so plan, floor and naive script go in turn,
        # A B C A B C, and each ratio is the median of the turns' (a lone pair moved by a sixth
        # between runs here).
        plans, floors, naives = [], [], []
        for turn in range(repeat):
            plans.append(
                fresh_plan(window=window, screen=first_screen)
                if turn
                else child("plan", window=window, screen=first_screen)
            )
            if floor:
                floors.append(child("floor"))
            if naive:
                naives.append(child("naive"))
        plan = _median_run(plans)
        rows = size + size // 100  # the seed adds one bad row per hundred
        result = {
            "warehouse": kind,
            "recipients": size,
            "rows": rows,
            "max_batch_size": job["max_batch_size"],
            "screen": first_screen,
            **(
                {"zones": job["zones"], "window": f"{','.join(WINDOW['send_days'])} {WINDOW['send_hours']}"}
                if window
                else {}
            ),
            **plan,
            "rows_per_s": round(rows / plan["seconds"]),
        }
        if repeat > 1:
            result["plan_seconds_each"] = [p["seconds"] for p in plans]
        if floor:
            pairs = sorted(p["seconds"] / f["seconds"] for p, f in zip(plans, floors, strict=True))
            result.update(
                {
                    "floor_seconds": statistics.median(f["seconds"] for f in floors),
                    "floor_staged": floors[0]["staged"],
                    "floor_rejected": floors[0]["rejected"],
                    "plan_to_floor": round(statistics.median(pairs), 2),
                    **({"floor_seconds_each": [f["seconds"] for f in floors]} if repeat > 1 else {}),
                }
            )
        if screen == "both":  # the same plan with the row-by-row screening
            by_rows = fresh_plan(window=window, screen="rows", profile=False)
            result.update(
                {
                    "rows_screen_seconds": by_rows["seconds"],
                    "rows_screen_max_rss_mib": by_rows["max_rss_mib"],
                    "rows_screen_staged": by_rows["staged"],
                    "rows_screen_to_frame": round(by_rows["seconds"] / plan["seconds"], 2),
                }
            )
        if window:  # the same table's UTC-only plan
            utc = fresh_plan(screen=first_screen, profile=False)
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
            other = _median_run(naives)
            turns = (n["seconds"] / p["seconds"] for n, p in zip(naives, plans, strict=True))
            result.update(
                {
                    "naive_seconds": statistics.median(n["seconds"] for n in naives),
                    "naive_max_rss_mib": other["max_rss_mib"],
                    "naive_staged": other["staged"],
                    "naive_rejected": other["rejected"],
                    "speedup": round(statistics.median(turns), 2),
                    "rss_ratio_naive_to_planner": round(other["max_rss_mib"] / plan["max_rss_mib"], 2),
                    **({"naive_seconds_each": [n["seconds"] for n in naives]} if repeat > 1 else {}),
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
    parser.add_argument("--no-floor", action="store_true", help="skip the set-based SQL floor")
    parser.add_argument(
        "--chunk-rows", type=int, default=0, help="rows per chunk (default: the plan's CHUNK_ROWS)"
    )
    parser.add_argument(
        "--screen",
        choices=["frame", "rows", "both"],
        default="frame",
        help="screen chunks as DataFrames (the plan's way), row by row, or both, one after the other",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="seconds per 100,000 rows: read, screen, wait, rest; the writer's write, commit",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="plans, floors and naive runs per size, in turn; the medians are printed",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(**json.loads(args.child))))
        return
    if args.chunk_rows < 0:
        parser.error("--chunk-rows must be 0 (the default) or more")
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    window = args.window or bool(args.zones)
    # A SIGTERM ends the run as Ctrl-C does: through the finally blocks that remove its work folders
    # and databases (subprocess.run kills the running child first).
    signal.signal(signal.SIGTERM, _terminate)
    naive, floor = not args.no_naive, not args.no_floor
    both = args.screen == "both"
    if not args.json:
        print(f"warehouse: {args.warehouse}; screening: {'frame' if both else args.screen}")
        if window:
            where = f"over {args.zones} zones" if args.zones else "in default_timezone UTC"
            print(f"window: {', '.join(WINDOW['send_days'])} {WINDOW['send_hours']} local, {where}")
        print(
            f"{'recipients':>10} {'batches':>7} {'seconds':>8} {'rows/s':>8} {'RSS MiB':>8}"
            + (f" {'floor s':>8} {'plan/floor':>10}" if floor else "")
            + (f" {'by rows s':>9} {'rows/frame':>10}" if both else "")
            + (
                f" {'UTC bat.':>8} {'UTC s':>8} {'UTC rows/s':>10} {'UTC RSS':>8} {'win/UTC':>7}"
                if window
                else ""
            )
            + (f" {'naive s':>8} {'naive RSS':>9} {'speedup':>7} {'RSS ratio':>9}" if naive else "")
        )
    results = []
    for size in args.sizes:
        r = measure(
            size,
            args.warehouse,
            naive,
            zones=args.zones,
            window=window,
            floor=floor,
            chunk_rows=args.chunk_rows,
            screen=args.screen,
            profile=args.profile,
            repeat=args.repeat,
        )
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        line = (
            f"{r['recipients']:>10} {r['batches']:>7} {r['seconds']:>8} {r['rows_per_s']:>8} "
            f"{r['max_rss_mib']:>8}"
        )
        if floor:
            line += f" {r['floor_seconds']:>8} {r['plan_to_floor']:>9}x"
        if both:
            line += f" {r['rows_screen_seconds']:>9} {r['rows_screen_to_frame']:>9}x"
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
    if floor and not args.json:
        for r in results:
            if (r["floor_staged"], r["floor_rejected"]) != (r["staged"], r["rejected"]):
                print(
                    f"{r['recipients']:,}: the floor's statement staged {r['floor_staged']:,} and rejected "
                    f"{r['floor_rejected']:,}, the plan {r['staged']:,} and {r['rejected']:,}"
                )
    if args.profile and not args.json:
        print(f"\nseconds per 100,000 rows ({', '.join(results[0]['per_100k_rows'])}):")
        for r in results:
            print(f"{r['recipients']:>10} " + " ".join(f"{v:>7}" for v in r["per_100k_rows"].values()))
    if window and not args.json:
        for r in results:
            print(
                f"{r['recipients']:,}: {r['zone_mixed_batches']} batches of more than one zone, "
                f"{r['outside_window']} sent outside the window; the last at {r['last_send_at']}"
            )
    if args.xcom and not args.json:
        print(f"\n{'batch size':>10} {'batches':>7} {'XCom bytes/batch':>16}")
        for batch_size in (10, 100, 1000):
            r = measure(10_000, args.warehouse, naive=False, max_batch_size=batch_size, floor=False)
            print(f"{batch_size:>10} {r['batches']:>7} {r['xcom_bytes_per_batch']:>16}")


if __name__ == "__main__":
    main()
