#!/usr/bin/env bash
# Run the test suite (and the Airflow 3 lint) on a fresh or existing checkout.
#
# pytest runs twice, and the script fails if either run fails:
#   1. the fast tier, every test not marked `deployment`, on TEST_WORKERS pytest-xdist workers
#      (default 4: most of its time is spent waiting, so more workers than cores pay;
#      TEST_WORKERS=0 runs it in one process);
#   2. the deployment tier (`-m deployment`: real Airflow stacks) in one process, so one stack at
#      a time (a stack alone keeps both cores busy; the LocalExecutor tests share one), at the same
#      time as the first (its output is printed when both are done); TEST_TIERS=one-by-one, or -x,
#      runs it after the first instead.
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
# Each tier has a temp folder of its own: pytest prunes all but the newest three of its default
# ones, which would delete a running tier's files. Kept when a tier fails (the stacks' logs).
temp=$(mktemp -d "${TMPDIR:-/tmp}/bulk-email-tests.XXXXXX")
fast_prefix=()
run_fast() {
  ${fast_prefix[@]+"${fast_prefix[@]}"} .venv/bin/python -m pytest -n "${TEST_WORKERS:-4}" \
    --basetemp "$temp/fast" -m "$fast" ${args[@]+"${args[@]}"}
}
run_deployment() {
  # One process: its session starts the shared LocalExecutor stack once (tests/deployment/conftest.py),
  # and the Celery and webhook tests' own stacks never run beside it.
  .venv/bin/python -m pytest -n 0 --basetemp "$temp/deployment" \
    -m "$deployment" ${args[@]+"${args[@]}"}
}
if [ -n "$fast" ] && [ -n "$deployment" ] && ! $exitfirst && [ "${TEST_TIERS:-together}" = together ]; then
  # Both tiers mostly wait (stacks starting, rate windows, retry delays), so they share the
  # machine well: the deployment tier runs beside the fast tier, its output kept until the end.
  # The deployment tier is the longer one (628 s alone against 316 s here), so the fast tier
  # runs niced: it takes the cores while a stack waits, and does not slow the stack down.
  fast_prefix=(nice -n 10)
  log=$temp/deployment-tier.log
  run_deployment >"$log" 2>&1 &
  deployment_pid=$!
  fast_rc=0
  run_fast || fast_rc=$?
  deployment_rc=0
  wait "$deployment_pid" || deployment_rc=$?
  echo "---- deployment tier (-m \"$deployment\") ----"
  cat "$log"

else
  if [ -n "$fast" ]; then
    fast_rc=0
    run_fast || fast_rc=$?
  fi
  if [ -n "$deployment" ] && ! { $exitfirst && [ "$fast_rc" -ne 0 ] && [ "$fast_rc" -ne 5 ]; }; then
    deployment_rc=0
    run_deployment || deployment_rc=$?
  fi
fi

for rc in "$fast_rc" "$deployment_rc"; do
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    echo "test.sh: a tier failed; its temp files are in $temp" >&2
    exit "$rc"
  fi
done
rm -rf "$temp"
[ "$fast_rc" -eq 5 ] && [ "$deployment_rc" -eq 5 ] && exit 5
exit 0
