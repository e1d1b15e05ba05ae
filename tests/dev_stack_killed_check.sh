#!/usr/bin/env bash
# `deploy/dev up` brings back a part killed with kill -9, at once, even while the killed
# process is an unreaped zombie (containers' PID 1 often reaps late: `kill -0` still answers).
# Runs against a stack started with `deploy/dev up` (same COLLECT_DEV_* variables).
#   1. kill -9 of the CDC reader and of collect connect, then `deploy/dev up`;
#   2. a part's PID file naming a zombie (a killed child its parent never reaps) with the
#      zombie's own start time, then `deploy/dev up`.
# Each time the part must answer its /readyz again.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
state=${COLLECT_DEV_DIR:-$repo/.collect}
stack="$state/stack.json"
[ -f "$stack" ] || { echo "no stack at $stack: run deploy/dev up first" >&2; exit 2; }
ok=0; bad=0
check() { if eval "$2"; then ok=$((ok + 1)); echo "  ok   $1"; else bad=$((bad + 1)); echo "  FAIL $1"; fi; }
ready() { curl -fsS -o /dev/null "$1/readyz"; }

for part in cdc connect; do
  url=$(jq -r ".${part}_url" "$stack")
  read -r pid _ <"$state/$part.pid"
  kill -9 "$pid"
  check "deploy/dev up brings $part back after kill -9" "deploy/dev up >/dev/null 2>&1 && ready $url"
done

# Postgres's postmaster, killed with kill -9: its lock file names a dead (or unreaped)
# process, and its orphaned backends may hold the shared memory for a moment.
pg_port=$(jq -r .database_url "$stack" | sed 's/.*:\([0-9]*\)\/.*/\1/')
pg_pid=$(ss -ltnpH "sport = :$pg_port" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)
if [ -n "$pg_pid" ]; then
  kill -9 "$pg_pid"
  check "deploy/dev up brings postgres back after kill -9 of its postmaster" \
    "deploy/dev up >/dev/null 2>&1 && deploy/dev status >/dev/null 2>&1"
else
  check "postgres is listening" false
fi

# A zombie: the child exits at once, the parent (this Python) never waits for it.
python3 -c 'import os, sys, time
pid = os.fork()
if pid == 0:
    os._exit(0)
print(pid, flush=True)
time.sleep(60)' >"$state/zombie.out" &
keeper=$!
trap 'kill "$keeper" 2>/dev/null || true; rm -f "$state/zombie.out"' EXIT
for _ in $(seq 50); do [ -s "$state/zombie.out" ] && break; sleep 0.1; done
zombie=$(head -n 1 "$state/zombie.out")
for _ in $(seq 50); do grep -q '^[^)]*) Z' "/proc/$zombie/stat" 2>/dev/null && break; sleep 0.1; done
check "the stand-in process is a zombie that answers kill -0" "kill -0 $zombie 2>/dev/null && grep -q ') Z' /proc/$zombie/stat"
start=$(sed 's/.*) //' "/proc/$zombie/stat" | cut -d' ' -f20)
url=$(jq -r .cdc_url "$stack")
read -r pid _ <"$state/cdc.pid"
kill -9 "$pid"
echo "$zombie $start" >"$state/cdc.pid"
check "deploy/dev up brings cdc back while its PID file names a zombie" "deploy/dev up >/dev/null 2>&1 && ready $url"

echo "$(basename "$0"): $ok passed, $bad failed"
[ "$bad" -eq 0 ]
