#!/usr/bin/env bash
# The global secret fan-out on a large org: `orgctl secret set --global` dry run (planning the
# fan-out) and real run (commit + one restart call per inheriting workspace, 8 in flight) against
# the stand-in platform bench/stub_platform.py on loopback. Prints the median seconds and the
# largest peak RSS per command, after the date and machine.
#
#   bench/fanout.sh [ROUNDS]       (default 3; WORKSPACES=20000 ROOTS=100 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/machine.sh
ROUNDS=${1:-3}
WORKSPACES=${WORKSPACES:-20000}
ROOTS=${ROOTS:-100}
BENCH_DIR=${BENCH_DIR:-/tmp/orgctl-bench-fanout}
ORGCTL=${ORGCTL:-target/release/orgctl}
[ -x "$ORGCTL" ] || { echo "build first: cargo build --release (or set ORGCTL)" >&2; exit 1; }
BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)
url=$("$ORGCTL" dev up --dir "$BENCH_DIR" 2>/dev/null)
base=${url%/*}
coproc STUB { exec python3 bench/stub_platform.py; }
read -r port <&"${STUB[0]}"
trap 'kill "$STUB_PID" 2>/dev/null || true; "$ORGCTL" dev down --dir "$BENCH_DIR" >/dev/null 2>&1 || true' EXIT
psql_() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

machine_header "$ORGCTL"
psql_ "$base/postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_f" -c "CREATE DATABASE bench_f" \
      -c "COMMENT ON DATABASE bench_f IS 'orgctl dev database'" >/dev/null
psql_ "$base/bench_f" -f migrations/platform/schema-2026-08.sql >/dev/null
"$ORGCTL" dev seed -q --database-url "$base/bench_f" --roots "$ROOTS" --workspaces "$WORKSPACES" \
  --tokens 1000 --tokens-on-roots 100 --allowlist 100
psql_ "$base/bench_f" -c "VACUUM ANALYZE" >/dev/null
targets=$(psql_ -At "$base/bench_f" -c "SELECT count(*) FROM workspaces WHERE status NOT IN ('removed','paused') AND COALESCE(runtime,'') <> 'external'")
echo "org: $WORKSPACES workspaces, $ROOTS roots; $targets inherit a new global key and run"

run() { # label args… -> "seconds rss"
  local ts=() rs=() i out
  for i in $(seq 1 "$ROUNDS"); do
    out=$( { /usr/bin/time -f "%e %M" bash -c 'echo -n v | "$@" >/dev/null' _ "$ORGCTL" \
             --database-url "$base/bench_f" "$@"; } 2>&1 | tail -1)
    ts+=("${out% *}"); rs+=("${out#* }")
  done
  printf '%s %s\n' "$(printf '%s\n' "${ts[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')" \
    "$(printf '%s\n' "${rs[@]}" | sort -g | tail -1)"
}
printf '\n%-52s %9s %9s %10s\n' "command ($ROUNDS rounds; median s, max peak RSS MiB)" seconds "RSS MiB" "calls/s"
read -r s r < <(run secret set --global BENCH_KEY --dry-run -o json)
printf '%-52s %9.2f %9.1f %10s\n' "secret set --global --dry-run ($targets targets)" "$s" "$(awk -v k="$r" 'BEGIN{print k/1024}')" "-"
read -r s r < <(MOLECULE_ADMIN_TOKEN=bench-token run secret set --global BENCH_KEY --yes -o json \
                  --platform-url "http://127.0.0.1:$port")
printf '%-52s %9.2f %9.1f %10.0f\n' "secret set --global --yes ($targets restart calls)" "$s" "$(awk -v k="$r" 'BEGIN{print k/1024}')" "$(awk -v n="$targets" -v s="$s" 'BEGIN{print n/s}')"
