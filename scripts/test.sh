#!/usr/bin/env bash
# Run the test suite (and the Airflow 3 lint) on a fresh or existing checkout.
#
# pytest runs twice, and the script fails if either run fails:
#   1. the fast tier, every test not marked `deployment`, on TEST_WORKERS pytest-xdist workers
#      (default `auto`: one per core; TEST_WORKERS=0 runs it in one process);
#   2. the deployment tier (`-m deployment`: real Airflow stacks), in one process, after the first.
# Arguments pass through to both runs. A `-m EXPR` of yours narrows each tier (`-m "not deployment"`
# runs only the first, `-m deployment` only the second); a path or node id selects as usual. A tier
# that selects no test is passed over (pytest's exit code 5); when neither selects one, exit code 5.
# With -x / --exitfirst the deployment tier does not start after a failure in the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/install-chromium.sh
.venv/bin/ruff check --select AIR3 dags include plugins

args=()
marks=""
exitfirst=false
while [ $# -gt 0 ]; do
  case $1 in
    -m | --markexpr)
      [ $# -ge 2 ] || { echo "test.sh: $1 needs an expression" >&2; exit 4; }
      marks=$2
      shift 2
      ;;
    --markexpr=*) marks=${1#--markexpr=}; shift ;;
    -m?*) marks=${1#-m}; shift ;;
    *)
      case $1 in -x | --exitfirst) exitfirst=true ;; esac
      args+=("$1")
      shift
      ;;
  esac
done

fast="not deployment"
deployment="deployment"
case $marks in
  "") ;;
  "not deployment") deployment="" ;;
  deployment) fast="" ;;
  *)
    fast="($marks) and not deployment"
    deployment="($marks) and deployment"
    ;;
esac

fast_rc=5
deployment_rc=5
if [ -n "$fast" ]; then
  fast_rc=0
  .venv/bin/python -m pytest -n "${TEST_WORKERS:-auto}" --dist loadgroup -m "$fast" ${args[@]+"${args[@]}"} || fast_rc=$?
fi
if [ -n "$deployment" ] && ! { $exitfirst && [ "$fast_rc" -ne 0 ] && [ "$fast_rc" -ne 5 ]; }; then
  deployment_rc=0
  .venv/bin/python -m pytest -m "$deployment" ${args[@]+"${args[@]}"} || deployment_rc=$?
fi

for rc in "$fast_rc" "$deployment_rc"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    exit "$rc"
  fi
done
[ "$fast_rc" -eq 5 ] && [ "$deployment_rc" -eq 5 ] && exit 5
exit 0
