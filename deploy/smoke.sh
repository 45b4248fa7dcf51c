#!/usr/bin/env bash
# The operator's end-to-end check of an install: everything a production run goes through, on one machine.
#
#   bash deploy/smoke.sh SRC DST [--param KEY=VALUE ...]
#
# 1. starts a Prefect server (`dpe server`) on a free loopback port, with its own database in a temp folder;
# 2. `dpe deploy`: the work pool and every deployment of deploy/prefect.yaml on that server;
# 3. starts a process worker on the pool (`prefect worker start`, DPE_CHECKOUT = this checkout);
# 4. `dpe run enhance-archive/enhance-adhoc --watch` on SRC -> DST through that worker, with a local Dask cluster
#    started by the flow (params.dask_address=null); extra --param options go to `dpe run` (e.g.
#    --param params.workers=1 --param params.mode=paper);
# 5. prints the run's summary, stops everything it started by the process ids it saved (trap on exit, Ctrl-C and
#    SIGTERM: each process group TERM, then KILL after a grace period; never by name; interrupted mid-run, also the
#    run's flow process, by the pid its worker recorded), and exits with the run's code: 0 every photo ok, 1 some
#    photos failed, 2 bad usage, 3 the run or the set-up failed (130/143 when interrupted).
#
# SRC and DST: local folders (made absolute) or URLs the worker can reach (s3://..., with the AWS_* variables in
# this environment). Logs: $DPE_SMOKE_KEEP=1 keeps the temp folder (server, worker and run logs).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
dpe="$root/.venv/bin/dpe"
pool="dpe-smoke"
grace_s=30

say() { echo "smoke: $*" >&2; }

if [ $# -lt 2 ] || [ "${1:0:1}" = "-" ] || [ "${2:0:1}" = "-" ]; then
  echo "usage: bash deploy/smoke.sh SRC DST [--param KEY=VALUE ...]" >&2
  exit 2
fi
if [ ! -x "$dpe" ]; then
  say "no dpe in $root/.venv (run bash deploy/install.sh first)"
  exit 3
fi
cd "$root" || exit 3

absolute() {  # local paths absolute (the worker runs in the checkout), URLs unchanged
  case "$1" in
    *://* | *::*) printf '%s' "$1" ;;
    *) "$py" -c 'import os, sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])), end="")' "$1" ;;
  esac
}
src="$(absolute "$1")"
dst="$(absolute "$2")"
shift 2

work="$(mktemp -d "${TMPDIR:-/tmp}/dpe-smoke.XXXXXX")"
started=()  # "name:pid" of every process group we started, in start order
watching=0 run_pid=""

alive_for() {  # wait up to $2 seconds for pid $1 to end; true while it still runs
  local waited=0
  while kill -0 "$1" 2>/dev/null && [ "$waited" -lt $(($2 * 2)) ]; do
    sleep 0.5
    waited=$((waited + 1))
  done
  kill -0 "$1" 2>/dev/null
}

stop_group() {  # TERM the group led by pid; a second TERM after 5 s; KILL after the grace period
  local name="$1" pid="$2"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  # A Prefect worker answers the first TERM by waiting for its flow runs and the second by ending at once.
  if alive_for "$pid" 5; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  fi
  if alive_for "$pid" "$grace_s"; then
    say "$name (pid $pid) did not stop in ${grace_s} s: KILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  fi
  { wait "$pid"; } 2>/dev/null  # braces: also silences bash's "Killed" notice
  say "stopped $name (pid $pid)"
}

stop_flow_runs() {  # runs still going on our server: their flow processes, by the pid the worker recorded for each
  local entry       # (a process worker starts each run in a process group of its own)
  for entry in $("$py" - 2>/dev/null <<'EOF'
from prefect.client.orchestration import get_client

with get_client(sync_client=True) as client:
    for run in client.read_flow_runs(limit=100):
        if run.state and not run.state.is_final() and run.infrastructure_pid:
            print(f"{run.name}:{str(run.infrastructure_pid).rsplit(':', 1)[-1]}")
EOF
  ); do
    stop_group "flow-run-${entry%%:*}" "${entry##*:}"
  done
}

cleanup() {
  local code=$? i entry
  trap - EXIT INT TERM
  if [ "$watching" = 1 ]; then  # interrupted while the run was going: stop watching, then the run itself
    kill -TERM "$run_pid" 2>/dev/null
    stop_flow_runs
  fi
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do  # the worker first, the server last
    entry="${started[$i]}"
    stop_group "${entry%%:*}" "${entry##*:}"
  done
  if [ "${DPE_SMOKE_KEEP:-0}" = 1 ]; then
    say "logs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Our own server, client home and dpe home: nothing of the operator's Prefect profile or server is touched.
unset PREFECT_API_URL PREFECT_UI_API_URL PREFECT_PROFILE
export DPE_HOME="$work/dpe-home" PREFECT_HOME="$work/prefect-client" PREFECT_SERVER_ANALYTICS_ENABLED=false
export PYTHONUNBUFFERED=1

port="$("$py" -c 'from flows.server import free_port; print(free_port())')" || exit 3
api="http://127.0.0.1:$port/api"
t0=$SECONDS
# setsid: each started process leads its own process group, so its children (the server's uvicorn, the worker's
# flow-run processes and their Dask workers) are stopped with it.
setsid "$dpe" server --port "$port" >"$work/server.log" 2>&1 &
started+=("prefect-server:$!")
say "started prefect-server (pid $!) on $api"
until "$py" -c 'import sys; from flows.server import healthy; sys.exit(0 if healthy(sys.argv[1]) else 1)' "$api"; do
  if ! kill -0 "${started[0]##*:}" 2>/dev/null || [ $((SECONDS - t0)) -gt 180 ]; then
    say "the Prefect server did not come up; its log:"
    tail -n 40 "$work/server.log" >&2
    exit 3
  fi
  sleep 1
done
say "server ready after $((SECONDS - t0)) s"
export PREFECT_API_URL="$api"

if ! "$dpe" deploy --pool "$pool" >"$work/deploy.log" 2>&1; then
  say "dpe deploy failed:"
  tail -n 40 "$work/deploy.log" >&2
  exit 3
fi
say "deployed to pool $pool after $((SECONDS - t0)) s"

DPE_CHECKOUT="$root" PREFECT_WORKER_QUERY_SECONDS=2 setsid "$py" -m prefect worker start --pool "$pool" \
  --name "smoke-$$" >"$work/worker.log" 2>&1 &
started+=("prefect-worker:$!")
say "started prefect-worker (pid $!) on pool $pool"

# In the background and waited for, so that Ctrl-C or SIGTERM reach the trap at once, not after the run.
"$dpe" run enhance-archive/enhance-adhoc --watch --json --poll 1 \
  --param "params.source_url=$src" --param "params.dest_url=$dst" --param "params.dask_address=null" "$@" \
  >"$work/run.json" &
run_pid=$!
watching=1
wait "$run_pid"
code=$?
watching=0
if ! kill -0 "${started[1]##*:}" 2>/dev/null; then
  say "the worker exited early; its log:"
  tail -n 40 "$work/worker.log" >&2
fi

# The run's summary: its final state, then the figures of DST/.dpe/runs/<run>/summary.json.
"$py" - "$work/run.json" "$dst" "$api" <<'EOF' || true
import json, sys

from tasks.jsonl import read_json
from tasks.manifest import run_url

run_file, dest, api = sys.argv[1:4]
try:
    run = json.loads(open(run_file).read())
except ValueError:
    print("smoke: no run summary (dpe run printed none)", file=sys.stderr)
    sys.exit(0)
print(f"run {run['name']} ({run['id']}): {run['state']} - {run['message']}")
print(f"UI: {api.removesuffix('/api')}/runs/flow-run/{run['id']}")
try:
    import fsspec

    fs, path = fsspec.core.url_to_fs(run_url(dest, ""))  # run folders are named <time>-<flow run name>
    mine = sorted(p for p in fs.ls(path, detail=False) if p.rstrip("/").endswith("-" + run["name"]))
    summary = read_json(run_url(dest, mine[-1].rstrip("/").rsplit("/", 1)[-1]) + "/summary.json") if mine else None
except Exception as exc:  # no report (the run failed before writing one)
    print(f"no summary.json under {dest}: {type(exc).__name__}: {exc}")
    summary = None
if summary:
    counts = summary["counts"]
    print(f"photos {summary['total']}: {counts.get('ok', 0)} enhanced, {counts.get('skipped', 0)} skipped, "
          f"{counts.get('error', 0)} failed; {summary.get('photos_per_s')} photos/s; Dask workers: {summary.get('workers')}; "
          f"run {summary.get('total_s')} s")
    print(f"report: {summary.get('report_url')}")
EOF
say "run finished after $((SECONDS - t0)) s with exit code $code"
exit "$code"
