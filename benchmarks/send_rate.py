"""Batches sent per minute against Airflow's own floor, on the deployment tier's stack.

    .venv/bin/python benchmarks/send_rate.py [--batches 300] [--pools 2 4 8] [--repeat 3]
                                             [--parallelism 8] [--json]

One real stack (LocalExecutor, PostgreSQL metadata and warehouse, the MigoSMTP
sandbox at its 300 requests/min: ``demo/airflow_stack.py``, the stack ``tests/deployment`` runs). For each
pool size, the ``migosmtp_api`` pool is set to it, then pairs of runs go
through the REST API, ``--repeat`` pairs, each pair in the other order than
the one before (so a drift in the machine weighs on both):
- the probe DAG (``probe_dags/noop_mapped_probe.py``): N mapped tasks that do
  nothing, in the same pool: what Airflow itself costs per mapped task here;
- a campaign of N batches of 10 recipients, with caps that do not bind.

A rate is tasks / (last mapped task's end - first one's start), in tasks per
minute; one run's rate moves by a fifth from run to run here, which is why
the figures are medians over the repeats (every run is in ``--json``'s
``runs``). Prints both median rates, their ratio, how many sends the sandbox
answered 429, and CPU seconds per task: the task processes' own (the
LocalExecutor workers and the tasks they ran, from /proc/<pid>/stat), and the
whole machine's (every process: the stack, PostgreSQL, the sandbox; from
/proc/stat).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
# The sandbox runs as ``python -m sandbox`` in a subprocess: it needs the repository on its path too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

from demo.airflow_stack import (  # noqa: E402
    DAG_ID,
    AirflowStack,
    fresh_postgres_database,
    postgres_connection,
)
from demo.audience import create_recipients_table  # noqa: E402
from include.campaign.dag_factory import API_POOL  # noqa: E402
from sandbox import SandboxProcess  # noqa: E402

PROBE_DAG_ID = "noop_mapped_probe"
BATCH_SIZE = 10
SEND_PATH = "/v1/email/send/bulk"


def _first_slot() -> datetime:
    """A whole hour a week ahead: in the future whenever the benchmark runs."""
    return (datetime.now(UTC) + timedelta(days=7)).replace(hour=9, minute=0, second=0, microsecond=0)


def _rate(tis: list[dict], task_id: str) -> tuple[int, float]:
    """(tasks, per minute) over the mapped instances of ``task_id``, first start to last end."""
    mapped = [t for t in tis if t["task_id"] == task_id and t["map_index"] >= 0]
    if any(t["state"] != "success" for t in mapped):
        states = sorted({t["state"] for t in mapped})
        raise SystemExit(f"{task_id}: not every mapped task succeeded ({states})")
    start = min(datetime.fromisoformat(t["start_date"]) for t in mapped)
    end = max(datetime.fromisoformat(t["end_date"]) for t in mapped)
    return len(mapped), round(len(mapped) / (end - start).total_seconds() * 60, 1)


def _cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (user + nice + system + irq + softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _task_cpu_seconds() -> float:
    """CPU time so far of the LocalExecutor workers and of the task processes they reaped."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"airflow worker -- LocalExecutor"):
                continue
            stat = (proc / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        utime, stime, cutime, cstime = stat.rsplit(")", 1)[1].split()[11:15]
        total += int(utime) + int(stime) + int(cutime) + int(cstime)
    return total / os.sysconf("SC_CLK_TCK")


def _run_measured(stack: AirflowStack, dag_id: str, conf: dict, task_id: str) -> dict[str, float]:
    """Trigger and wait; tasks per minute, and task-process and machine CPU seconds per task."""
    cpu, task_cpu = _cpu_seconds(), _task_cpu_seconds()
    run_id = stack.api.trigger_dag_run(dag_id, conf)
    run = stack.wait_for_dag_run(dag_id, run_id, timeout=1800)
    if run["state"] != "success":
        raise SystemExit(stack.describe_run(dag_id, run_id))
    tasks, rate = _rate(stack.api.task_instances(dag_id, run_id), task_id)
    return {
        "per_min": rate,
        "task_cpu_s": round((_task_cpu_seconds() - task_cpu) / tasks, 3),
        "machine_cpu_s": round((_cpu_seconds() - cpu) / tasks, 3),
    }


def _wait_for_dag(stack: AirflowStack, dag_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            stack.api.dag(dag_id)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--pools", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs per pool; medians are printed")
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="one JSON object per line per pool size")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="send-rate-"))
    dags = workdir / "dags"
    dags.mkdir()
    probe = Path(__file__).parent / "probe_dags" / "noop_mapped_probe.py"
    for dag_file in [*(REPO_ROOT / "dags").glob("*.py"), probe]:
        shutil.copy(dag_file, dags / dag_file.name)

    with fresh_postgres_database("warehouse") as database:
        warehouse = postgres_connection(database)
        os.environ["AIRFLOW_HOME"] = str(workdir / "seed_home")
        os.environ["AIRFLOW_CONN_WAREHOUSE_DEFAULT"] = json.dumps(warehouse)
        from include.warehouse import get_warehouse_hook

        logging.disable(logging.INFO)  # the seed's progress lines are not the benchmark's output
        create_recipients_table(get_warehouse_hook(), "recipients", args.batches * BATCH_SIZE)
        with (
            SandboxProcess(workdir / "sandbox.db", api_key="bench-key") as sandbox,
            AirflowStack(
                workdir / "stack",
                parallelism=args.parallelism,
                pool_slots=args.pools[0],
                connections={
                    "migosmtp_default": sandbox.airflow_connection(),
                    "warehouse_default": warehouse,
                },
                dags_folder=dags,
            ) as stack,
        ):
            _wait_for_dag(stack, PROBE_DAG_ID)
            # Every run's campaign is new: a quota the runs could use up would refuse the later ones.
            sandbox.update_settings(monthly_limit=1_000_000_000)
            if not args.json:
                print(
                    f"{args.batches} mapped tasks per run, LocalExecutor, parallelism {args.parallelism}; "
                    f"medians of {args.repeat} runs each; CPU s per task (task processes, all)"
                )
                print(
                    f"{'pool':>4} {'no-op/min':>9} {'batches/min':>11} {'ratio':>6} {'429s':>5} "
                    f"{'task:no-op':>8} {'batch':>8} {'all:no-op':>8} {'batch':>8}   runs (no-op  batches)"
                )
            for pool in args.pools:
                stack.api.set_pool_slots(API_POOL, pool)
                noops, batches, sends = [], [], []
                for repeat in range(args.repeat):
                    conf = {
                        "campaign_id": f"send-rate-pool-{pool}-{repeat}",
                        "recipients_table": "recipients",
                        "max_batch_size": BATCH_SIZE,
                        "hourly_cap": 1_000_000,
                        "daily_cap": 10_000_000,
                        "start_at": _first_slot().strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                    for which in ("noop", "batch") if repeat % 2 == 0 else ("batch", "noop"):
                        if which == "noop":
                            noops.append(_run_measured(stack, PROBE_DAG_ID, {"count": args.batches}, "noop"))
                        else:
                            sends_before = len(sandbox.requests())
                            batches.append(_run_measured(stack, DAG_ID, conf, "send_batch"))
                            sends += [r for r in sandbox.requests()[sends_before:] if r["path"] == SEND_PATH]
                result = {
                    "pool": pool,
                    "parallelism": args.parallelism,
                    "tasks": args.batches,
                    "repeats": args.repeat,
                    **{f"noop_{key}": round(median(r[key] for r in noops), 3) for key in noops[0]},
                    **{f"batch_{key}": round(median(r[key] for r in batches), 3) for key in batches[0]},
                    "sends": len(sends),
                    "rate_limited_429": sum(r["status_code"] == 429 for r in sends),
                    "runs": {"noop": noops, "batch": batches},
                }
                result["ratio"] = round(result["batch_per_min"] / result["noop_per_min"], 2)
                if args.json:
                    print(json.dumps(result), flush=True)
                else:
                    print(
                        f"{pool:>4} {result['noop_per_min']:>9} {result['batch_per_min']:>11} "
                        f"{result['ratio']:>6} {result['rate_limited_429']:>5} "
                        f"{result['noop_task_cpu_s']:>8} {result['batch_task_cpu_s']:>8} "
                        f"{result['noop_machine_cpu_s']:>8} {result['batch_machine_cpu_s']:>8}   "
                        f"{'/'.join(str(r['per_min']) for r in noops)}  "
                        f"{'/'.join(str(r['per_min']) for r in batches)}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
