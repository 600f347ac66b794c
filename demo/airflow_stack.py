"""A real Airflow 3 deployment on loopback, run the way users run it: the deployment tests'
stack and the send-rate benchmark's (development only, like the rest of ``demo/``).

    with AirflowStack(tmp_path, executor="CeleryExecutor", connections=..., variables=...) as stack:
        run_id = stack.api.trigger_dag_run(DAG_ID, {"campaign_id": "c1"})
        run = stack.wait_for_dag_run(DAG_ID, run_id)

Each stack gets a fresh PostgreSQL metadata database (dropped on stop), its own
AIRFLOW_HOME, ``airflow db migrate`` (a process's later stacks get a copy of its first
freshly migrated database instead: the same tables, without 20 s of CPU), the
``migosmtp_api`` and ``campaign_planning`` pools, and then
``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` (and, for
Celery, two ``celery worker``\\ s with their own hostnames) as separate
processes, each in its own process group and with its own log file under
``<workdir>/logs``. Connections and Variables reach every process as
``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` environment variables, as in
``tests/conftest.py``; ``stack.airflow_cli(...)`` runs an ``airflow`` command as a user of
the deployment would (its environment, its metadata database). Nothing listens beyond
127.0.0.1: the log servers that the scheduler, triggerer and workers would start on all
interfaces are skipped (every process shares one AIRFLOW_HOME, so the api-server reads task
logs from disk).
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self, TypeVar

import psycopg
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "bulk_email_campaign"
POOL = "migosmtp_api"
PLANNING_POOL = "campaign_planning"
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379"
API_USER = "deployer"
TERMINAL_RUN_STATES = ("success", "failed")

MIGRATE_TIMEOUT = 300.0
CLI_TIMEOUT = 300.0  # a bound: under the full suite on 2 cores one CLI call took over 120 s
START_TIMEOUT = 120.0
DAG_PARSE_TIMEOUT = 120.0
STOP_GRACE = 15.0
POLL_INTERVAL = 0.5

Executor = Literal["LocalExecutor", "CeleryExecutor"]
T = TypeVar("T")


class StackError(RuntimeError):
    """A stack process failed, or something did not become ready in time."""


class ApiError(StackError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:2000]}")
        self.status = status


# -- PostgreSQL databases (the one definition; tests/conftest.py imports it) ----------------


def postgres_admin(sql: str) -> None:
    """Run one statement as ``postgres`` on the machine's server, outside any transaction
    (CREATE/DROP DATABASE cannot run inside one)."""
    with psycopg.connect(dbname="postgres", autocommit=True, **POSTGRES) as conn:
        conn.execute(sql)


def create_postgres_database(prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(6)}"
    postgres_admin(f'CREATE DATABASE "{name}"')
    return name


def copy_postgres_database(prefix: str, template: str) -> str:
    """A new database with ``template``'s contents. Nobody may be connected to ``template``;
    the backend of a client that just disconnected may outlive it by a moment, so that is waited out."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    for _ in range(50):
        try:
            postgres_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return name
        except psycopg.errors.ObjectInUse:
            time.sleep(0.1)
    raise StackError(f"could not copy the database {template}: still in use after 5 s")


# A copy of this process's first freshly migrated metadata database, dropped when it exits.
_migrated: str | None = None


def _new_metadata_database() -> str:
    return copy_postgres_database("airflow", _migrated) if _migrated else create_postgres_database("airflow")


def drop_postgres_database(name: str) -> None:
    # FORCE: a process killed mid-transaction may leave a backend connected.
    postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    name = create_postgres_database(prefix)
    try:
        yield name
    finally:
        drop_postgres_database(name)


def postgres_connection(database: str) -> dict[str, Any]:
    """An Airflow connection (as AIRFLOW_CONN_* JSON takes it) to one of those databases."""
    return {
        "conn_type": "postgres",
        "host": POSTGRES["host"],
        "port": POSTGRES["port"],
        "login": POSTGRES["user"],
        "schema": database,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the REST API client ---------------------------------------------------------------------


class AirflowApi:
    """The public REST API v2, authenticated as SimpleAuthManager requires.

    ``POST /auth/token`` with a configured user's name and password returns a JWT
    (201 ``{"access_token": ...}``); every API call carries it as a Bearer token.
    """

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self._credentials = {"username": username, "password": password}
        self._timeout = timeout
        self._session = requests.Session()
        self._token: str | None = None

    def _login(self) -> None:
        resp = self._session.post(
            f"{self.base_url}/auth/token", json=self._credentials, timeout=self._timeout
        )
        if resp.status_code != 201:
            raise ApiError("POST", "/auth/token", resp.status_code, resp.text)
        self._token = resp.json()["access_token"]

    def token(self) -> str:
        """A JWT for API_USER, for requests outside the REST API (a plugin's pages, say)."""
        if self._token is None:
            self._login()
        assert self._token is not None
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in (1, 2):
            if self._token is None:
                self._login()
            resp = self._session.request(
                method,
                f"{self.base_url}/api/v2{path}",
                # JSON, not the log endpoint's default NDJSON stream.
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
                timeout=self._timeout,
                **kwargs,
            )
            if resp.status_code == 401 and attempt == 1:
                self._token = None  # expired: log in again, once
                continue
            if not resp.ok:
                raise ApiError(method, path, resp.status_code, resp.text)
            return resp.json() if resp.content else None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._session.close()
        self._token = None

    def health(self) -> dict[str, Any]:
        """The monitor endpoint, which needs no token (it also answers before any user exists)."""
        resp = self._session.get(f"{self.base_url}/api/v2/monitor/health", timeout=self._timeout)
        if not resp.ok:
            raise ApiError("GET", "/monitor/health", resp.status_code, resp.text)
        return resp.json()

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}")

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "/importErrors")["import_errors"]

    def pool(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/pools/{name}")

    def trigger_dag_run(self, dag_id: str, conf: Mapping[str, Any], logical_date: str | None = None) -> str:
        """What the UI's trigger form sends: the conf, and a logical date or none (Airflow 3 manual runs)."""
        body = {"logical_date": logical_date, "conf": dict(conf)}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def set_pool_slots(self, name: str, slots: int) -> None:
        # The body must be a whole pool even though update_mask limits the change to its slots.
        body = {"pool": name, "slots": slots, "include_deferred": self.pool(name)["include_deferred"]}
        self.request("PATCH", f"/pools/{name}", params={"update_mask": "slots"}, json=body)

    def set_connection(self, conn_id: str, conn: Mapping[str, Any]) -> None:
        """Create or replace a connection in the metadata database (``conn`` as AIRFLOW_CONN_* JSON
        takes it); every process reads it from there on its next look-up."""
        self.delete_connection(conn_id)
        extra = conn.get("extra")
        body = {
            "connection_id": conn_id,
            **{k: v for k, v in conn.items() if k != "extra"},
            **({"extra": extra if isinstance(extra, str) else json.dumps(extra)} if extra else {}),
        }
        self.request("POST", "/connections", json=body)

    def set_variable(self, key: str, value: str) -> None:
        """Create or replace an Airflow Variable in the metadata database, as the UI does."""
        self.delete_variable(key)
        self.request("POST", "/variables", json={"key": key, "value": value})

    def delete_variable(self, key: str) -> None:
        try:
            self.request("DELETE", f"/variables/{key}")
        except ApiError as err:
            if err.status != 404:
                raise

    def delete_connection(self, conn_id: str) -> None:
        try:
            self.request("DELETE", f"/connections/{conn_id}")
        except ApiError as err:
            if err.status != 404:
                raise

    def connection_ids(self) -> list[str]:
        page = self.request("GET", "/connections", params={"limit": 100})
        return [c["connection_id"] for c in page["connections"]]

    def set_dag_run_state(self, dag_id: str, run_id: str, state: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": state})

    def clear_dag_run(self, dag_id: str, run_id: str) -> None:
        """What the UI's Clear on a whole run does: every task instance again, in the same run."""
        self.request("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False})

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def create_backfill(
        self, dag_id: str, from_date: str, to_date: str, reprocess_behavior: str, max_active_runs: int = 1
    ) -> dict[str, Any]:
        body = {
            "dag_id": dag_id,
            "from_date": from_date,
            "to_date": to_date,
            "reprocess_behavior": reprocess_behavior,
            "max_active_runs": max_active_runs,
        }
        return self.request("POST", "/backfills", json=body)

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        return self.request("GET", "/backfills", params={"dag_id": dag_id, "limit": 100})["backfills"]

    def backfill(self, backfill_id: int) -> dict[str, Any]:
        return self.request("GET", f"/backfills/{backfill_id}")

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str, page_size: int = 100) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones included (hostname, pid, pool, dates...)."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.request(
                "GET",
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                params={"limit": page_size, "offset": len(found), "order_by": "map_index"},
            )
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def task_instance_tries(
        self, dag_id: str, run_id: str, task_id: str, map_index: int
    ) -> list[dict[str, Any]]:
        """Every try of one (mapped) task instance, each with its own start/end, hostname and pid."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        return self.request("GET", path)["task_instances"]

    def task_log(self, ti: Mapping[str, Any], lines: int = 30) -> str:
        """The last lines of a task instance's current try, as the UI's log view gets them."""
        run = f"/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}"
        path = f"{run}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
        content = self.request("GET", path, params={"map_index": ti["map_index"]})["content"]
        return "\n".join(
            str(entry.get("event", entry)) if isinstance(entry, dict) else str(entry)
            for entry in content[-lines:]
        )


# -- processes -------------------------------------------------------------------------------


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session: the process leads its own group

    def exited(self) -> int | None:
        return self.popen.poll()

    def group_alive(self) -> bool:
        self.popen.poll()  # reap the leader first: a zombie would still count as a member
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 60) -> str:
        self.log_file.flush()
        text = self.log_path.read_bytes().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _process_error(process: _Process, problem: str) -> StackError:
    return StackError(f"{process.name}: {problem}\n--- tail of {process.log_path} ---\n{process.tail()}")


class AirflowStack:
    """Airflow's own processes against a fresh metadata database; a context manager."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        executor: Executor = "LocalExecutor",
        parallelism: int = 4,
        pool_slots: int = 2,
        connections: Mapping[str, Mapping[str, Any]] | None = None,
        variables: Mapping[str, str] | None = None,
        celery_workers: int = 2,
        worker_concurrency: int = 2,
        dags_folder: str | os.PathLike[str] | None = None,
        stored_connections: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if parallelism < 2:
            raise ValueError("parallelism must be > 1: the tier checks tasks that run side by side")
        if executor == "CeleryExecutor" and importlib.util.find_spec("airflow.providers.celery") is None:
            raise StackError(
                "CeleryExecutor needs apache-airflow-providers-celery (with celery[redis]) in this venv; "
                "it is not installed"
            )
        self.workdir = Path(workdir)
        self.executor = executor
        self.parallelism = parallelism
        self.pool_slots = pool_slots
        # ``connections`` reach the processes as AIRFLOW_CONN_* (fixed for the stack's life);
        # ``stored_connections`` are imported into the metadata database before the processes
        # start, where the REST API (``api.set_connection``) can replace them while it runs.
        self.connections = dict(connections or {})
        self.stored_connections = dict(stored_connections or {})
        self.variables = dict(variables or {})
        self.celery_workers = celery_workers if executor == "CeleryExecutor" else 0
        self.worker_concurrency = worker_concurrency
        self.dags_folder = Path(dags_folder) if dags_folder is not None else REPO_ROOT / "dags"
        self.home = self.workdir / "airflow_home"
        self.logs = self.workdir / "logs"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.database: str | None = None
        self.worker_hostnames = [f"worker-{n}" for n in range(1, self.celery_workers + 1)]
        # One queue name and broker database per stack, so stacks (and other Redis users) never share tasks.
        self.queue = f"deploy_{secrets.token_hex(4)}"
        self.redis_db: int | None = None
        self.password = secrets.token_urlsafe(16)  # API_USER's, for the API and the UI's login
        self.env: dict[str, str] = {}  # every process's environment, once started
        self._procs: list[_Process] = []
        self.api = AirflowApi(self.base_url, API_USER, self.password)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.database = _new_metadata_database()
        if self.executor == "CeleryExecutor":
            self.redis_db = _empty_redis_db()
        # The user's password file is written before the api-server starts, so it
        # keeps it instead of generating (and printing) one.
        (self.workdir / "passwords.json").write_text(json.dumps({API_USER: self.password}))
        env = self.env = self._environment()
        self._migrate(env)
        # Both pools in one CLI call: each call is an Airflow import, seconds of CPU.
        pools = self.workdir / "pools.json"
        pools.write_text(
            json.dumps(
                {
                    POOL: {"slots": self.pool_slots, "description": "MigoSMTP API calls"},
                    PLANNING_POOL: {"slots": 1, "description": "One plan at a time"},
                }
            )
        )
        self._run_cli("pools-import", ["pools", "import", str(pools)], env)
        if self.stored_connections:
            stored = self.workdir / "stored_connections.json"
            stored.write_text(json.dumps(self.stored_connections))
            self._run_cli("connections-import", ["connections", "import", str(stored)], env)

        self._spawn(
            "api-server",
            ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env,
        )
        self._spawn("scheduler", ["scheduler", "--skip-serve-logs"], env)
        self._spawn("dag-processor", ["dag-processor"], env)
        self._spawn("triggerer", ["triggerer", "--skip-serve-logs"], env)
        for hostname in self.worker_hostnames:
            self._spawn(hostname, self._worker_command(hostname), self._worker_environment(env, hostname))

        self._wait_for("api-server", "the health endpoint to answer", self._health_answers, START_TIMEOUT)
        for component in ("scheduler", "dag_processor", "triggerer"):
            self._wait_for(
                component.replace("_", "-"),
                f"the {component} heartbeat to be healthy",
                lambda c=component: self._healthy(c),
                START_TIMEOUT,
            )
        for hostname in self.worker_hostnames:
            self._wait_for(
                hostname,
                "the Celery worker to be ready",
                lambda h=hostname: self._worker_ready(h),
                START_TIMEOUT,
            )
        self._wait_for("dag-processor", f"DAG {DAG_ID} to be parsed", self._dag_registered, DAG_PARSE_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM every process group this stack started, SIGKILL what is left after the grace period."""
        for process in reversed(self._procs):
            process.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(p.group_alive() for p in self._procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for process in self._procs:
            if process.group_alive():
                process.signal_group(signal.SIGKILL)
        for process in self._procs:
            process.popen.wait()
            process.log_file.close()
        self._procs.clear()
        self.env = {}
        self.api.close()
        if self.redis_db is not None:
            _delete_redis_queue(self.redis_db, self.queue)
            self.redis_db = None
        if self.database is not None:
            drop_postgres_database(self.database)
            self.database = None

    # -- configuration ---------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        assert self.database is not None
        # Nothing Airflow-related leaks in from the test process (its AIRFLOW_HOME, connections, ...).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "PYTHONPATH"}
        sql_conn = (
            f"postgresql+psycopg2://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{self.database}"
        )
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "PYTHONPATH": str(REPO_ROOT),  # the DAG imports include.*
                "PYTHONUNBUFFERED": "1",  # log files show what a process did before it died
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn,
                # Every process must agree on these: tasks get JWTs from the scheduler that the
                # api-server's execution API verifies.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{API_USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.workdir / "passwords.json"),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            }
        )
        if self.executor == "CeleryExecutor":
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{self.redis_db}",
                    "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{sql_conn.replace('+psycopg2', '')}",
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                }
            )
        for conn_id, conn in self.connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        for key, value in self.variables.items():
            env[f"AIRFLOW_VAR_{key.upper()}"] = value
        return env

    def _worker_command(self, hostname: str) -> list[str]:
        return [
            "celery",
            "worker",
            "--celery-hostname",
            hostname,
            "--queues",
            self.queue,
            "--skip-serve-logs",
            "--pid",
            str(self.workdir / f"{hostname}.pid"),  # the default pid file is shared by both workers
        ]

    def _worker_environment(self, env: dict[str, str], hostname: str) -> dict[str, str]:
        return {
            **env,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "demo.worker_hostname.hostname",
            "DEPLOYMENT_WORKER_HOSTNAME": hostname,
        }

    # -- processes -------------------------------------------------------------------------------

    def _migrate(self, env: dict[str, str]) -> None:
        """``airflow db migrate`` on the process's first stack; a later stack's database is already
        a copy of that result, taken before anything else was written to it."""
        global _migrated
        if _migrated:
            return
        self._run_cli("db-migrate", ["db", "migrate"], env, MIGRATE_TIMEOUT)
        assert self.database is not None
        _migrated = copy_postgres_database("airflow_migrated", self.database)
        atexit.register(drop_postgres_database, _migrated)

    def _airflow(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _run_cli(self, name: str, args: list[str], env: dict[str, str], timeout: float = CLI_TIMEOUT) -> None:
        log_path = self.logs / f"{name}.log"
        with log_path.open("wb") as log:
            try:
                done = subprocess.run(
                    self._airflow(args),
                    cwd=self.workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                problem = f"`airflow {' '.join(args)}` did not finish in {timeout:.0f} s"
            else:
                if done.returncode == 0:
                    return
                problem = f"`airflow {' '.join(args)}` exited with {done.returncode}"
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])
        raise StackError(f"{name}: {problem}\n--- tail of {log_path} ---\n{tail}")

    def airflow_cli(
        self, args: list[str], input: str | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``airflow <args>`` as a user of this deployment runs it (its environment, its metadata
        database), ``input`` typed at its prompts; returns the finished process, output captured."""
        if not self.env:
            raise StackError("the stack is not started")
        return subprocess.run(
            self._airflow(args),
            cwd=self.workdir,
            env=self.env,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_path = self.logs / f"{name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
            self._airflow(args),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches its children too
        )
        self._procs.append(_Process(name, popen, log_path, log_file))

    def process(self, name: str) -> _Process:
        return next(p for p in self._procs if p.name == name)

    def check_processes(self) -> None:
        """Raise, naming the process and showing its log, if any stack process has exited."""
        for process in self._procs:
            code = process.exited()
            if code is not None:
                raise _process_error(process, f"exited with code {code}")

    def _wait_for(
        self,
        blame: str,
        what: str,
        probe: Callable[[], T | None],
        timeout: float,
        detail: Callable[[], str] | None = None,
    ) -> T:
        """Poll ``probe`` until it returns a value; blame the named process if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_processes()
            try:
                value = probe()
            except (requests.ConnectionError, requests.Timeout):
                value = None  # not listening yet
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                extra = f" ({detail()})" if detail else ""
                raise _process_error(self.process(blame), f"waited {timeout:.0f} s for {what}{extra}")
            time.sleep(POLL_INTERVAL)

    # -- readiness probes ------------------------------------------------------------------------

    def _health_answers(self) -> bool | None:
        return True if self.api.health() else None

    def _healthy(self, component: str) -> bool | None:
        return True if (self.api.health().get(component) or {}).get("status") == "healthy" else None

    def _worker_ready(self, hostname: str) -> bool | None:
        return True if f"@{hostname} ready." in self.process(hostname).tail(400) else None

    def _dag_registered(self, dag_id: str = DAG_ID) -> dict[str, Any] | None:
        errors = self.api.import_errors()
        if errors:
            raise _process_error(self.process("dag-processor"), f"import errors: {json.dumps(errors)[:3000]}")
        try:
            return self.api.dag(dag_id)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    # -- runs ------------------------------------------------------------------------------------

    def wait_for_dag_run(self, dag_id: str, run_id: str, timeout: float = 240.0) -> dict[str, Any]:
        """Poll the run through the REST API until it is finished; the scheduler is blamed if not."""

        def finished() -> dict[str, Any] | None:
            run = self.api.dag_run(dag_id, run_id)
            return run if run["state"] in TERMINAL_RUN_STATES else None

        def states() -> str:
            tis = self.api.task_instances(dag_id, run_id)
            counts: dict[str, int] = {}
            for ti in tis:
                key = f"{ti['task_id']}={ti['state']}"
                counts[key] = counts.get(key, 0) + 1
            return f"task instances: {counts}"

        return self._wait_for("scheduler", f"run {run_id} to finish", finished, timeout, states)

    def wait_for_backfill(self, backfill_id: int, timeout: float = 300.0) -> dict[str, Any]:
        """Poll a backfill until the scheduler marks it complete (every one of its runs finished)."""

        def completed() -> dict[str, Any] | None:
            backfill = self.api.backfill(backfill_id)
            return backfill if backfill["completed_at"] else None

        return self._wait_for("scheduler", f"backfill {backfill_id} to complete", completed, timeout)

    def wait_for_runs_to_settle(self, dag_id: str, appear_within: float = 45.0) -> list[dict[str, Any]]:
        """Wait for the runs the scheduler starts on its own (a scheduled DAG's latest interval) to end.

        Gives the scheduler ``appear_within`` seconds to create one; returns the runs, finished.
        """
        deadline = time.monotonic() + appear_within
        while not self.api.dag_runs(dag_id) and time.monotonic() < deadline:
            time.sleep(1)
        for run in self.api.dag_runs(dag_id):
            self.wait_for_dag_run(dag_id, run["dag_run_id"])
        return self.api.dag_runs(dag_id)

    def wait_for_dag(self, dag_id: str) -> dict[str, Any]:
        registered = functools.partial(self._dag_registered, dag_id)
        return self._wait_for("dag-processor", f"DAG {dag_id} to be parsed", registered, DAG_PARSE_TIMEOUT)

    def describe_run(self, dag_id: str, run_id: str) -> str:
        """Every task instance that did not succeed, with the tail of its log: for assertion messages."""
        parts = []
        for ti in self.api.task_instances(dag_id, run_id):
            if ti["state"] != "success":
                label = f"{ti['task_id']}[{ti['map_index']}] {ti['state']} (try {ti['try_number']})"
                try:
                    log = self.api.task_log(ti) if ti["try_number"] else "(never ran)"
                except ApiError as err:
                    log = f"(no log: {err})"
                parts.append(f"--- {label} ---\n{log}")
        return "\n".join(parts) or "every task instance succeeded"


# -- Redis (Celery broker) ---------------------------------------------------------------------


def _empty_redis_db() -> int:
    """A Redis database nobody is using, so this stack's broker keys stand alone."""
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
        try:
            if client.dbsize() == 0:
                return db
        finally:
            client.close()
    raise StackError("no empty Redis database (1-15) for the Celery broker")


def _delete_redis_queue(db: int, queue: str) -> None:
    """Remove the keys Celery made for this stack's queue; other keys in the database are left alone."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
    try:
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
