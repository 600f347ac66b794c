"""Run the MigoSMTP sandbox as a subprocess for tests and demos.

    with SandboxProcess(tmp_path / "sandbox.db", requests_per_minute=10) as sandbox:
        requests.post(f"{sandbox.url}/v1/email/send/bulk", ...)
        sandbox.set_faults([{"action": "status", "status": 503}])
        assert sandbox.record()["batches"]
        sandbox.advance(3600)  # deliver batches due within the hour
        assert sandbox.events()

The server's stdout and stderr go to a log file next to the database; its
listening line there tells the harness which port it picked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTENING_RE = re.compile(r"MigoSMTP sandbox listening on http://(\S+):(\d+)")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class SandboxError(RuntimeError):
    """The sandbox did not start, or an admin call failed."""


class SandboxProcess:
    """A sandbox server subprocess; restartable on the same database file."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        api_key: str = "test-key",
        **settings: Any,
    ) -> None:
        self.db_path = Path(db_path)
        self.api_key = api_key
        self.settings = settings
        self.log_path = self.db_path.with_suffix(".log")
        self.host: str | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def airflow_connection(self, api_key: str | None = None, **extra: Any) -> dict[str, Any]:
        """The ``migosmtp_default`` connection (JSON form) that points Airflow at this sandbox."""
        return {
            "conn_type": "http",
            "schema": "http",
            "host": self.host,
            "port": self.port,
            "password": self.api_key if api_key is None else api_key,
            **({"extra": extra} if extra else {}),
        }

    @property
    def url(self) -> str:
        if self.host is None or self.port is None:
            raise SandboxError("sandbox is not running")
        return f"http://{self.host}:{self.port}"

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
        if self._proc is not None:
            raise SandboxError("sandbox already started")
        cmd = [
            sys.executable,
            "-m",
            "sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(self.db_path),
            "--api-key",
            self.api_key,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name, value in self.settings.items():
            if name == "webhook_secret":
                env["MIGOSMTP_SANDBOX_WEBHOOK_SECRET"] = str(value)  # not on the command line
            elif value is not None:
                cmd += [f"--{name.replace('_', '-')}", str(value)]
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        # The log is appended to across restarts: only look for this run's listening line.
        offset = self._log.tell()
        self._proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_until_listening(offset)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self, offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = LISTENING_RE.search(self._read_log(offset))
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                return
            if self._proc.poll() is not None:
                raise SandboxError(
                    f"sandbox exited with code {self._proc.returncode} before listening:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise SandboxError(f"sandbox not listening after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def _read_log(self, offset: int = 0) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._read_log().splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate our own process (SIGTERM), killing it if it is not gone in 5 s."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.host = self.port = None

    # --- admin endpoints -----------------------------------------------------

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_sandbox/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise SandboxError(f"{method} /_sandbox/{path} failed: {exc.code} {exc.read().decode()}") from exc

    def health(self) -> dict[str, Any]:
        return self._admin("GET", "health")

    def reset(self) -> None:
        self._admin("POST", "reset")

    def set_faults(self, faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._admin("POST", "faults", {"faults": faults})["faults"]

    def faults(self) -> list[dict[str, Any]]:
        return self._admin("GET", "faults")["faults"]

    def update_settings(self, **changes: Any) -> dict[str, Any]:
        return self._admin("PATCH", "settings", changes)

    def record(self) -> dict[str, Any]:
        return self._admin("GET", "record")

    def requests(self) -> list[dict[str, Any]]:
        return self._admin("GET", "requests")

    def events(self) -> list[dict[str, Any]]:
        """Every event emitted, oldest first, with ``delivered`` (accepted by the receiver)."""
        return self._admin("GET", "events")["events"]

    def webhook_attempts(self) -> list[dict[str, Any]]:
        """Every webhook POST: ``at``, ``event_count``, ``status_code`` or ``error``."""
        return self._admin("GET", "events")["webhook_attempts"]

    def advance(self, seconds: float) -> dict[str, Any]:
        """Move the sandbox clock forward; due batches are delivered within a tick (0.2 s)."""
        return self._admin("POST", "advance", {"seconds": seconds})
