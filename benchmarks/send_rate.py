"""Batches sent per minute against Airflow's own floor, on the deployment tier's stack.

    .venv/bin/python benchmarks/send_rate.py [--batches 300] [--pools 2 4 8] [--parallelism 8] [--json]

One real stack (LocalExecutor, PostgreSQL metadata and warehouse, the MigoSMTP
sandbox at its 300 requests/min, as ``tests/deployment`` runs it). For each
pool size, the ``migosmtp_api`` pool is set to it, then two runs go through
the REST API one after the other:
- the probe DAG (``probe_dags/noop_mapped_probe.py``): N mapped tasks that do
  nothing, in the same pool: what Airflow itself costs per mapped task here;
- a campaign of N batches of 10 recipients, with caps that do not bind.

A rate is tasks / (last mapped task's end - first one's start), in tasks per
minute. Prints both rates, their ratio, how many sends the sandbox answered
429, and the machine's CPU time per task over each run (every process: the
stack, the tasks, PostgreSQL and the sandbox; from /proc/stat), which says
what a batch costs beyond Airflow's own floor.
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
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from demo.audience import create_recipients_table  # noqa: E402
from include.campaign.dag_factory import API_POOL  # noqa: E402
from include.migosmtp.sandbox import SandboxProcess  # noqa: E402
from tests.deployment.airflow_stack import (  # noqa: E402
    DAG_ID,
    AirflowStack,
    fresh_postgres_database,
    postgres_connection,
)
from tests.deployment.campaign_checks import first_slot  # noqa: E402

PROBE_DAG_ID = "noop_mapped_probe"
BATCH_SIZE = 10
SEND_PATH = "/v1/email/send/bulk"


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


def _run_measured(stack: AirflowStack, dag_id: str, conf: dict, task_id: str) -> tuple[float, float]:
    """Trigger and wait; (tasks per minute, machine CPU seconds per task over the whole run)."""
    cpu = _cpu_seconds()
    run_id = stack.api.trigger_dag_run(dag_id, conf)
    run = stack.wait_for_dag_run(dag_id, run_id, timeout=1800)
    if run["state"] != "success":
        raise SystemExit(stack.describe_run(dag_id, run_id))
    tasks, rate = _rate(stack.api.task_instances(dag_id, run_id), task_id)
    return rate, round((_cpu_seconds() - cpu) / tasks, 3)


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
            if not args.json:
                print(f"{args.batches} mapped tasks per run, LocalExecutor, parallelism {args.parallelism}")
                print(
                    f"{'pool':>4} {'no-op/min':>9} {'batches/min':>11} {'ratio':>6} {'429s':>5} "
                    f"{'CPU s/no-op':>11} {'CPU s/batch':>11}"
                )
            for pool in args.pools:
                stack.api.set_pool_slots(API_POOL, pool)
                noop_rate, noop_cpu = _run_measured(stack, PROBE_DAG_ID, {"count": args.batches}, "noop")
                sends_before = len(sandbox.requests())
                conf = {
                    "campaign_id": f"send-rate-pool-{pool}",
                    "recipients_table": "recipients",
                    "max_batch_size": BATCH_SIZE,
                    "hourly_cap": 1_000_000,
                    "daily_cap": 10_000_000,
                    "start_at": first_slot().strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                batch_rate, batch_cpu = _run_measured(stack, DAG_ID, conf, "send_batch")
                sends = [r for r in sandbox.requests()[sends_before:] if r["path"] == SEND_PATH]
                result = {
                    "pool": pool,
                    "parallelism": args.parallelism,
                    "tasks": args.batches,
                    "noop_per_min": noop_rate,
                    "batches_per_min": batch_rate,
                    "ratio": round(batch_rate / noop_rate, 2),
                    "sends": len(sends),
                    "rate_limited_429": sum(r["status_code"] == 429 for r in sends),
                    "noop_cpu_s_per_task": noop_cpu,
                    "batch_cpu_s_per_task": batch_cpu,
                }
                if args.json:
                    print(json.dumps(result), flush=True)
                else:
                    print(
                        f"{pool:>4} {noop_rate:>9} {batch_rate:>11} {result['ratio']:>6} "
                        f"{result['rate_limited_429']:>5} {noop_cpu:>11} {batch_cpu:>11}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
