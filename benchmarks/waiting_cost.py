"""What batches that wait cost a real deployment: getting them deferred, keeping them waiting, cancelling.

    .venv/bin/python benchmarks/waiting_cost.py [--batches 1000] [--minutes 3] [--pool 8]
                                                [--parallelism 8] [--json]

One real stack, as ``send_rate.py`` starts it (LocalExecutor, PostgreSQL metadata and warehouse,
the MigoSMTP sandbox: ``demo/airflow_stack.py``), with ``bulk_email_campaign`` and the probe DAG
(``probe_dags/deferred_probe.py``) as its only DAGs (the reconcile's runs every 15 minutes would
land in the windows at random) and ``[triggerer] capacity`` raised above N (the default, 1,000,
would leave tasks past it unassigned). Then, in that order:
- idle: the stack with nothing to do, ``--minutes`` long;
- probe: Airflow's own cost of N deferred mapped tasks in one running DAG run, whatever they wait
  for: the probe DAG's N mapped tasks, in the same pool, each deferring at once to Airflow's
  ``DateTimeTrigger`` a week ahead; its defer (from the trigger until all N are ``deferred``,
  counted over the REST API) and ``--minutes`` of waiting, then its end: the run set ``failed``
  over the REST API, until the metadata database has none of its triggers left, and 10 s more;
- campaign: one campaign of N batches of 10 recipients, a week ahead, ``submit_ahead_minutes`` 0
  (every batch waits the whole benchmark); its defer, until all N ``send_batch`` are deferred, and
  ``--minutes`` of waiting, as the probe's;
- cancel: ``mode=cancel`` for the campaign, until the waiting run has ended (a cancelled batch ends
  in the triggerer, ``skipped``, without a worker start).
The marginal cost of one waiting task is (waiting - idle) / N, given per hour of waiting, for the
probe and the campaign alike, and the campaign's over the probe's is the ratio printed (scheduler,
triggerer, machine). The triggerer's memory per waiting task is over the idle window's for both;
the campaign's starts from what the probe's end left (``probe ended``: an allocator keeps some).

CPU seconds are utime + stime from /proc/<pid>/stat, summed over each stack process's tree (the
process and its live descendants) with the reaped children's cutime + cstime, so a task process
that ended inside a LocalExecutor worker counts. ``scheduler`` is the scheduler without its
LocalExecutor workers, ``workers`` those workers with the tasks they ran; ``machine`` is every
process (the stack, PostgreSQL, the sandbox, and whatever else the machine runs) from /proc/stat.
Database figures are pg_stat_database's transactions (xact_commit + xact_rollback) and sessions
of the warehouse database (the campaign's status reads) and the metadata database (every Airflow
process, this script's REST calls included); pg_stat_statements is not loaded on this server, so
there are no statement counts. The warehouse's connections close after each read, which flushes
their counters at once; the metadata database's pooled ones flush within 10 s, alike at both ends
of a window. The triggerer's memory is its tree's VmRSS (pages its processes share count in each)
and Pss (shared pages split between them), at the end of the idle and of each waiting window, and
after the probe's end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
# The sandbox runs as ``python -m sandbox`` in a subprocess: it needs the repository on its path too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
# This process's Airflow logs (the seed's progress lines) go to stdout, which is the benchmark's; the
# stack's processes get no AIRFLOW_* setting of this process.
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"

import psycopg  # noqa: E402

from benchmarks.send_rate import _cpu_seconds  # noqa: E402
from benchmarks.send_rate import _first_slot as first_slot  # noqa: E402
from demo.airflow_stack import (  # noqa: E402
    DAG_ID,
    POSTGRES,
    TERMINAL_RUN_STATES,
    AirflowStack,
    fresh_postgres_database,
    postgres_connection,
)
from demo.audience import create_recipients_table  # noqa: E402
from include.campaign.dag_factory import API_POOL  # noqa: E402
from include.campaign.triggers import POLL_SECONDS  # noqa: E402
from sandbox import SandboxProcess  # noqa: E402

BATCH_SIZE = 10
CAMPAIGN_ID = "waiting-cost"
PROBE_DAG_ID, PROBE_TASK_ID = "deferred_probe", "wait"
SEND_PATH = "/v1/email/send/bulk"
COMPONENTS = ("scheduler", "triggerer", "dag-processor", "api-server")
WORKER_TITLE = b"airflow worker -- LocalExecutor"
CPU_KEYS = ("scheduler", "workers", "triggerer", "dag-processor", "api-server", "machine")
DB_KEYS = ("warehouse_xacts", "warehouse_sessions", "metadata_xacts")
RATIO_KEYS = ("scheduler", "triggerer", "machine")
SETTLE_SECONDS = 30  # after start-up, before the idle window: the first parse and scheduler loops
TRIGGERS_GONE_SECONDS = 10  # after the probe's trigger rows are gone: the triggerer's loops drop them
PROBE_SECONDS = 5
TICK = os.sysconf("SC_CLK_TCK")
# A structlog level (``[warning  ]``), a stdlib one (``WARNING``), a traceback, or the triggerer's
# "async thread was blocked" (logged at info).
LOG_PROBLEM = re.compile(
    r"\[(warning|error|critical) *\]|\b(WARNING|ERROR|CRITICAL)\b|(Traceback)|async thread was (blocked)"
)


class WaitingStack(AirflowStack):
    """The stack with extra Airflow settings: it passes none of this process's AIRFLOW_* through."""

    def __init__(self, *args, settings: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def _environment(self) -> dict[str, str]:
        return {**super()._environment(), **self.settings}


def _processes() -> dict[int, tuple[int, bytes, int]]:
    """pid -> (parent pid, command line, CPU ticks: its own and its reaped children's)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile
            continue
        found[int(proc.name)] = (int(fields[1]), cmdline, sum(int(f) for f in fields[11:15]))
    return found


def _tree(procs: dict[int, tuple[int, bytes, int]], root: int) -> set[int]:
    children = defaultdict(list)
    for pid, (parent, _, _) in procs.items():
        children[parent].append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            tree.add(pid)
            todo += children[pid]
    return tree


def _workers(procs: dict[int, tuple[int, bytes, int]], scheduler: int) -> dict[int, set[int]]:
    """Each LocalExecutor worker the scheduler forked -> its tree (the task it runs, if any)."""
    return {
        pid: _tree(procs, pid)
        for pid, (parent, cmdline, _) in procs.items()
        if parent == scheduler and cmdline.startswith(WORKER_TITLE)
    }


def _busy_workers(stack: AirflowStack) -> int:
    """Workers running a task: a child process, or a title other than ``<idle>``."""
    procs = _processes()
    workers = _workers(procs, stack.process("scheduler").popen.pid)
    return sum(len(tree) > 1 or b"<idle>" not in procs[pid][1] for pid, tree in workers.items())


def _memory_mib(pids: set[int]) -> dict[str, float]:
    """VmRSS and Pss summed over ``pids``, in MiB."""
    rss = pss = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        pss += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)}


class Probe:
    """Snapshots of the stack's CPU, its databases' counters and the triggerer's memory."""

    def __init__(self, stack: AirflowStack, warehouse: str) -> None:
        self.stack, self.warehouse = stack, warehouse
        # On the ``postgres`` database, so that these reads count in neither of the measured ones.
        self.pg = psycopg.connect(dbname="postgres", autocommit=True, **POSTGRES)

    def snapshot(self) -> dict:
        procs = _processes()
        roots = {name: self.stack.process(name).popen.pid for name in COMPONENTS}
        trees = {name: _tree(procs, pid) for name, pid in roots.items()}
        workers = set().union(*_workers(procs, roots["scheduler"]).values())
        cpu = {name: sum(procs[p][2] for p in tree) / TICK for name, tree in trees.items()}
        cpu["workers"] = sum(procs[p][2] for p in workers) / TICK
        cpu["scheduler"] -= cpu["workers"]
        cpu["machine"] = _cpu_seconds()
        self.pg.execute("SELECT pg_stat_clear_snapshot()")
        stats = dict.fromkeys((self.warehouse, self.stack.database), (0, 0))
        for name, xacts, sessions in self.pg.execute(
            "SELECT datname, xact_commit + xact_rollback, sessions FROM pg_stat_database"
            " WHERE datname = ANY(%s)",
            [list(stats)],
        ):
            stats[name] = (xacts, sessions)
        return {
            "t": time.monotonic(),
            **cpu,
            "warehouse_xacts": stats[self.warehouse][0],
            "warehouse_sessions": stats[self.warehouse][1],
            "metadata_xacts": stats[self.stack.database][0],
            "triggerer_memory": _memory_mib(trees["triggerer"]),
        }

    def triggers(self) -> dict[str, int]:
        """The metadata database's trigger rows, and how many a triggerer has taken on."""
        with psycopg.connect(dbname=self.stack.database, autocommit=True, **POSTGRES) as conn:
            total, assigned = conn.execute("SELECT count(*), count(triggerer_id) FROM trigger").fetchone()
        return {"rows": total, "assigned": assigned}


def _delta(start: dict, end: dict) -> dict:
    return {"wall_s": round(end["t"] - start["t"], 1)} | {
        key: round(end[key] - start[key], 2) for key in (*CPU_KEYS, *DB_KEYS)
    }


def _per_minute(delta: dict) -> dict:
    return {key: round(delta[key] / delta["wall_s"] * 60, 3) for key in (*CPU_KEYS, *DB_KEYS)}


def _per_batch(delta: dict, batches: int) -> dict:
    return {key: round(delta[key] / batches, 4) for key in (*CPU_KEYS, *DB_KEYS)}


def _window(probe: Probe, minutes: float) -> tuple[dict, dict, int]:
    """(start, end snapshot, most workers busy at once) over ``minutes``, the stack checked meanwhile."""
    start = probe.snapshot()
    deadline, busy = start["t"] + minutes * 60, 0
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, PROBE_SECONDS))
        probe.stack.check_processes()
        busy = max(busy, _busy_workers(probe.stack))
    return start, probe.snapshot(), busy


def _count(stack: AirflowStack, dag_id: str, task_id: str, run_id: str, state: str) -> int:
    """``task_id`` instances of the run in ``state``: one filtered REST call, its total only."""
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    params = {"task_id": task_id, "state": state, "limit": 1}
    return stack.api.request("GET", path, params=params)["total_entries"]


def _wait_until_deferred(
    stack: AirflowStack, dag_id: str, task_id: str, run_id: str, n: int, timeout: float = 3600
) -> None:
    deadline = time.monotonic() + timeout
    while _count(stack, dag_id, task_id, run_id, "deferred") < n:
        stack.check_processes()
        if stack.api.dag_run(dag_id, run_id)["state"] in TERMINAL_RUN_STATES or time.monotonic() > deadline:
            raise SystemExit(stack.describe_run(dag_id, run_id))
        time.sleep(PROBE_SECONDS)


def _deferred(
    probe: Probe, dag_id: str, task_id: str, conf: dict, n: int, minutes: float
) -> tuple[str, dict]:
    """Trigger a run whose N mapped ``task_id`` defer: (its run id, its figures from the trigger until all
    N are deferred, and over ``minutes`` of them waiting)."""
    stack = probe.stack
    defer_start = probe.snapshot()
    run_id = stack.api.trigger_dag_run(dag_id, conf)
    _wait_until_deferred(stack, dag_id, task_id, run_id, n)
    defer_end = probe.snapshot()
    pool_before = stack.api.pool(API_POOL)
    wait_start, wait_end, busy = _window(probe, minutes)
    pool_after = stack.api.pool(API_POOL)
    defer, waiting = _delta(defer_start, defer_end), _delta(wait_start, wait_end)
    return run_id, {
        "defer": {**defer, "per_min": round(n / defer["wall_s"] * 60, 1), "per_batch": _per_batch(defer, n)},
        "waiting": {
            **waiting,
            "per_min": _per_minute(waiting),
            "busy_workers": busy,
            "pool": {
                when: {k: pool[k] for k in ("occupied_slots", "deferred_slots", "running_slots")}
                for when, pool in (("start", pool_before), ("end", pool_after))
            },
            "triggers": probe.triggers(),
            "triggerer_memory": wait_end["triggerer_memory"],
        },
    }


def _end_probe(probe: Probe, run_id: str, n: int, timeout: float = 600) -> dict:
    """Set the probe's run ``failed``, then wait until its triggers are gone from the metadata database
    and the triggerer has had ``TRIGGERS_GONE_SECONDS`` to drop them; the figures of that."""
    stack, start = probe.stack, probe.snapshot()
    stack.api.set_dag_run_state(PROBE_DAG_ID, run_id, "failed")
    while probe.triggers()["rows"]:
        stack.check_processes()
        if time.monotonic() > start["t"] + timeout:
            raise SystemExit(f"the probe's triggers outlived its run by {timeout:.0f} s: {probe.triggers()}")
        time.sleep(1)
    triggers_gone_s = round(time.monotonic() - start["t"], 1)
    time.sleep(TRIGGERS_GONE_SECONDS)
    end = probe.snapshot()
    tis, end_delta = stack.api.task_instances(PROBE_DAG_ID, run_id), _delta(start, end)
    return {
        **end_delta,
        "per_batch": _per_batch(end_delta, n),
        "triggers_gone_s": triggers_gone_s,
        "run_state": stack.api.dag_run(PROBE_DAG_ID, run_id)["state"],
        "wait_states": dict(Counter(t["state"] for t in tis if t["task_id"] == PROBE_TASK_ID)),
        "triggerer_memory": end["triggerer_memory"],
    }


def _log_problems(stack: AirflowStack) -> dict[str, dict[str, int]]:
    """Per log of the stack, its lines at warning level or above, tracebacks and triggerer blocks (the
    task logs are in the scheduler's: LocalExecutor's task processes write to its stdout)."""
    found = {}
    for log in sorted(stack.logs.glob("*.log")):
        counts = Counter(
            next(group for group in match.groups() if group).lower()
            for match in map(LOG_PROBLEM.search, log.read_text(errors="replace").splitlines())
            if match
        )
        if counts:
            found[log.name] = dict(counts)
    return found


def _over_idle(run: dict, idle: dict, n: int) -> None:
    """Add to a probe's or a campaign's figures the marginal per task and hour of waiting, and the
    triggerer's memory per waiting task, both over the idle window's."""
    rates, memory = run["waiting"]["per_min"], run["waiting"]["triggerer_memory"]
    run["marginal_per_batch_hour"] = {
        key: round((rate - idle["per_min"][key]) / n * 60, 5) for key, rate in rates.items()
    }
    run["triggerer_kib_per_batch"] = {
        key: round((memory[f"{key}_mib"] - idle["triggerer_memory"][f"{key}_mib"]) * 1024 / n, 1)
        for key in ("rss", "pss")
    }


def _ratios(probe: dict, campaign: dict) -> dict[str, float | None]:
    """Campaign / probe of the marginal per batch-hour; none where the probe's is not above idle."""
    ours, airflows = campaign["marginal_per_batch_hour"], probe["marginal_per_batch_hour"]
    return {key: round(ours[key] / airflows[key], 2) if airflows[key] > 0 else None for key in RATIO_KEYS}


def _row(label: str, *values) -> str:
    return f"{label:<22}" + "".join(f"{'' if v is None else v:>17}" for v in values)


def _print(result: dict) -> None:
    n, idle, probe, campaign = result["batches"], result["idle"], result["probe"], result["campaign"]
    cancel, ratio = campaign["cancel"], result["ratio_campaign_probe"]
    print(
        f"{n} mapped tasks waiting deferred: the probe's (DateTimeTrigger a week ahead) and a campaign's "
        f"batches of {BATCH_SIZE} (BatchDueTrigger); LocalExecutor, parallelism {result['parallelism']}, "
        f"pool {result['pool']}, triggerer capacity {result['triggerer_capacity']}; "
        f"windows of {result['minutes']} min"
    )
    print(
        _row(
            "", "idle/min", "probe/min", "campaign/min", "probe/batch-h", "campaign/batch-h", "campaign/probe"
        )
    )
    for key in (*CPU_KEYS, *DB_KEYS):
        label = f"{key} CPU s" if key in CPU_KEYS else key
        values = [idle["per_min"][key], probe["waiting"]["per_min"][key], campaign["waiting"]["per_min"][key]]
        values += [probe["marginal_per_batch_hour"][key], campaign["marginal_per_batch_hour"][key]]
        print(_row(label, *values, ratio.get(key)))
    print(_row("per task", "probe defer", "campaign defer", "probe end", "campaign cancel"))
    for key in (*CPU_KEYS, *DB_KEYS):
        label = f"{key} CPU s" if key in CPU_KEYS else key
        phases = (probe["defer"], campaign["defer"], probe["end"], cancel)
        print(_row(label, *(phase["per_batch"][key] for phase in phases)))
    runs = {"probe": probe, "campaign": campaign}
    defers = (
        f"{name} {run['defer']['wall_s']} s ({run['defer']['per_min']}/min)" for name, run in runs.items()
    )
    print(f"defer, from the trigger to all {n} deferred: {'; '.join(defers)}")
    end = probe["end"]
    print(
        f"probe end (run set failed): its triggers gone after {end['triggers_gone_s']} s, {end['wall_s']} s "
        f"with the settle ({end['run_state']}; wait {end['wait_states']})"
    )
    print(
        f"cancel: {cancel['cancel_run_s']} s to the cancel run's end, {cancel['wall_s']} s to the waiting "
        f"run's end ({cancel['run_state']}; send_batch {cancel['send_batch_states']}; ledger "
        f"{cancel['ledger_statuses']}; campaign {cancel['campaign_status']}; {cancel['sends']} sends)"
    )
    memory = {"idle": idle["triggerer_memory"], "probe": probe["waiting"]["triggerer_memory"]}
    memory |= {"probe ended": end["triggerer_memory"], "campaign": campaign["waiting"]["triggerer_memory"]}
    per_task = (f"{name} {run['triggerer_kib_per_batch']}" for name, run in runs.items())
    print(f"triggerer memory: {memory}; KiB per waiting task over idle: {'; '.join(per_task)}")
    for name, run in runs.items():
        waiting = run["waiting"]
        print(
            f"{name} waiting: warehouse status reads {waiting['per_min']['warehouse_sessions']}/min; pool "
            f"{API_POOL} {waiting['pool']}; LocalExecutor workers busy at most {waiting['busy_workers']}; "
            f"triggers {waiting['triggers']}"
        )
    print(f"(campaign: 1 status read/min expected, one campaign, POLL_SECONDS {POLL_SECONDS}; probe: 0)")
    print(f"log lines (warning and above, tracebacks, triggerer blocked): {result['log_problems']}")
    print(f"benchmark wall time {result['benchmark_wall_s']} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=3.0, help="the idle and each waiting window")
    parser.add_argument("--pool", type=int, default=8, help=f"{API_POOL} slots")
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="one JSON object with every figure")
    args = parser.parse_args()
    began, n = time.monotonic(), args.batches

    workdir = Path(tempfile.mkdtemp(prefix="waiting-cost-"))
    dags = workdir / "dags"
    dags.mkdir()
    shutil.copy(REPO_ROOT / "dags" / f"{DAG_ID}.py", dags)
    shutil.copy(Path(__file__).parent / "probe_dags" / f"{PROBE_DAG_ID}.py", dags)
    capacity = max(1000, 2 * n)
    settings = {
        "AIRFLOW__TRIGGERER__CAPACITY": str(capacity),
        "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, n)),
    }

    with fresh_postgres_database("warehouse") as database:
        warehouse = postgres_connection(database)
        os.environ["AIRFLOW_HOME"] = str(workdir / "seed_home")
        os.environ["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(warehouse)
        from include.campaign import definition
        from include.campaign.ledger import rows as ledger_rows
        from include.warehouse import get_warehouse_hook

        hook = get_warehouse_hook()
        create_recipients_table(hook, "recipients", n * BATCH_SIZE)
        with (
            SandboxProcess(workdir / "sandbox.db", api_key="bench-key") as sandbox,
            WaitingStack(
                workdir / "stack",
                parallelism=args.parallelism,
                pool_slots=args.pool,
                connections={
                    "migosmtp_default": sandbox.airflow_connection(),
                    "warehouse_default": warehouse,
                },
                dags_folder=dags,
                settings=settings,
            ) as stack,
        ):
            environ = Path(f"/proc/{stack.process('triggerer').popen.pid}/environ").read_bytes()
            if f"AIRFLOW__TRIGGERER__CAPACITY={capacity}".encode() not in environ.split(b"\0"):
                raise SystemExit("the triggerer did not get the capacity setting")
            stack.wait_for_dag(PROBE_DAG_ID)
            sandbox.update_settings(monthly_limit=1_000_000_000)  # the quota pre-flight must not refuse
            probe = Probe(stack, database)
            time.sleep(SETTLE_SECONDS)
            idle_start, idle_end, idle_busy = _window(probe, args.minutes)

            probe_run, probe_phases = _deferred(
                probe, PROBE_DAG_ID, PROBE_TASK_ID, {"count": n}, n, args.minutes
            )
            probe_phases["end"] = _end_probe(probe, probe_run, n)

            conf = {
                "campaign_id": CAMPAIGN_ID,
                "recipients_table": "recipients",
                "max_batch_size": BATCH_SIZE,
                "hourly_cap": 1_000_000,
                "daily_cap": 10_000_000,
                "submit_ahead_minutes": 0,
                "start_at": first_slot().strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            run_id, campaign = _deferred(probe, DAG_ID, "send_batch", conf, n, args.minutes)

            cancel_start = probe.snapshot()
            cancel_id = stack.api.trigger_dag_run(DAG_ID, {"campaign_id": CAMPAIGN_ID, "mode": "cancel"})
            cancel_run = stack.wait_for_dag_run(DAG_ID, cancel_id, timeout=600)
            cancel_run_s = round(time.monotonic() - cancel_start["t"], 1)
            ended = stack.wait_for_dag_run(DAG_ID, run_id, timeout=3600)
            cancel_end = probe.snapshot()
            if cancel_run["state"] != "success":
                raise SystemExit(stack.describe_run(DAG_ID, cancel_id))
            tis = stack.api.task_instances(DAG_ID, run_id)
            sends = [r for r in sandbox.requests() if r["path"] == SEND_PATH]
            log_problems = _log_problems(stack)

        idle = _delta(idle_start, idle_end)
        idle |= {"per_min": _per_minute(idle), "busy_workers": idle_busy}
        idle["triggerer_memory"] = idle_end["triggerer_memory"]
        for run in (probe_phases, campaign):
            _over_idle(run, idle, n)
        cancel = _delta(cancel_start, cancel_end)
        campaign["cancel"] = {
            **cancel,
            "cancel_run_s": cancel_run_s,
            "run_state": ended["state"],
            "per_batch": _per_batch(cancel, n),
            "send_batch_states": dict(Counter(t["state"] for t in tis if t["task_id"] == "send_batch")),
            "ledger_statuses": dict(Counter(r["status"] for r in ledger_rows(hook, CAMPAIGN_ID))),
            "campaign_status": definition.read(hook, CAMPAIGN_ID)["status"],
            "sends": len(sends),
        }
        result = {
            "batches": n,
            "minutes": args.minutes,
            "pool": args.pool,
            "parallelism": args.parallelism,
            "triggerer_capacity": capacity,
            "idle": idle,
            "probe": probe_phases,
            "campaign": campaign,
            "ratio_campaign_probe": _ratios(probe_phases, campaign),
            "log_problems": log_problems,
            "benchmark_wall_s": round(time.monotonic() - began, 1),
        }
        probe.pg.close()
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)


if __name__ == "__main__":
    main()
