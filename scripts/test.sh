#!/usr/bin/env bash
# Run the test suite (and the Airflow 3 lint) on a fresh or existing checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/install-chromium.sh
.venv/bin/ruff check --select AIR3 dags include plugins
exec .venv/bin/python -m pytest "$@"
