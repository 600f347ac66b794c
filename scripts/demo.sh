#!/usr/bin/env bash
# Run a real 5,000-recipient campaign on the embedded default: a local MigoSMTP sandbox and a SQLite warehouse.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m demo "$@"
