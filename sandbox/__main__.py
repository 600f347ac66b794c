"""Command line entry point: serve the MigoSMTP sandbox until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import fields

from sandbox.server import SandboxServer, Settings

SECRET_ENV = "MIGOSMTP_SANDBOX_WEBHOOK_SECRET"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025, help="0 picks a free port")
    parser.add_argument("--db", required=True, help="SQLite file holding the durable record")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--requests-per-minute", type=int, default=300, help="per rate window")
    parser.add_argument("--rate-window-seconds", type=float, default=Settings.rate_window_seconds)
    parser.add_argument("--monthly-limit", type=int, default=30000)
    parser.add_argument("--hourly-limit", type=int, default=150)
    parser.add_argument("--daily-limit", type=int, default=1500)
    webhooks = parser.add_argument_group("delivery and webhooks")
    webhooks.add_argument("--webhook-url", type=optional_str, default=None, help="none: no POSTs")
    webhooks.add_argument(
        "--webhook-secret",
        default=os.environ.get(SECRET_ENV, Settings.webhook_secret),
        help=f"default: ${SECRET_ENV} (keeps it out of the process list)",
    )
    for name in Settings.RATES:
        webhooks.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0)
    webhooks.add_argument(
        "--followup-delay-seconds",
        type=float,
        default=Settings.followup_delay_seconds,
        help="sandbox-clock delay of a recipient's second event",
    )
    webhooks.add_argument("--webhook-batch-size", type=int, default=Settings.webhook_batch_size)
    webhooks.add_argument(
        "--webhook-retry-base-seconds", type=float, default=Settings.webhook_retry_base_seconds
    )
    webhooks.add_argument(
        "--webhook-retry-max-seconds", type=float, default=Settings.webhook_retry_max_seconds
    )
    webhooks.add_argument(
        "--webhook-retry-horizon-seconds",
        type=float,
        default=Settings.webhook_retry_horizon_seconds,
    )
    webhooks.add_argument("--webhook-shuffle", type=boolean, default=False)
    webhooks.add_argument("--clock-offset-seconds", type=float, default=0.0)
    return parser.parse_args(argv)


def optional_str(value: str) -> str | None:
    return None if value.lower() in ("", "none", "null") else value


def boolean(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = {f.name for f in fields(Settings)} - {"monthly_used"}
    values = {name: getattr(args, name) for name in names}
    try:
        for name, value in values.items():
            Settings.check(name, value)
        settings = Settings(**values)
        settings.update({})  # cross-field checks (outcome rates summing to at most 1)
    except ValueError as exc:
        print(f"invalid setting: {exc}", file=sys.stderr, flush=True)
        return 2
    server = SandboxServer((args.host, args.port), args.db, settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # serve_forever runs in a thread because shutdown() blocks until the loop exits,
    # which would deadlock if called from a signal handler on the serving thread.
    serving = threading.Thread(target=server.serve_forever, name="sandbox-server", daemon=True)
    serving.start()
    host, port = server.server_address[:2]
    print(f"MigoSMTP sandbox listening on http://{host}:{port}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
