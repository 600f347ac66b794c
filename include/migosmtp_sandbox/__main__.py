"""Command line entry point: serve the MigoSMTP sandbox until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading

from include.migosmtp_sandbox.server import SandboxServer, Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.migosmtp_sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025, help="0 picks a free port")
    parser.add_argument("--db", required=True, help="SQLite file holding the durable record")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--requests-per-minute", type=int, default=300)
    parser.add_argument("--monthly-limit", type=int, default=30000)
    parser.add_argument("--hourly-limit", type=int, default=150)
    parser.add_argument("--daily-limit", type=int, default=1500)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        api_key=args.api_key,
        requests_per_minute=args.requests_per_minute,
        monthly_limit=args.monthly_limit,
        hourly_limit=args.hourly_limit,
        daily_limit=args.daily_limit,
    )
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
