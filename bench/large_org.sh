#!/usr/bin/env bash
# token and status on the large org (docs/design/performance.md) (`orgctl dev seed` defaults: 1,000 roots, 100k
# workspaces, 1M tokens, 5% revoked, 50k allowlist rows). Each measure runs ROUNDS times on a
# fresh copy of the seeded template (revokes change it); prints the median seconds and the
# largest peak RSS per command, after the date and machine.
#
#   bench/large_org.sh [ROUNDS]      (default 3)
#
# Environment: BENCH_DIR (server data, default /tmp/orgctl-bench-large), ORGCTL (binary,
# default the release build), SEED_ARGS (override `orgctl dev seed` sizes for a quick run).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/machine.sh
ROUNDS=${1:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/orgctl-bench-large}
ORGCTL=${ORGCTL:-target/release/orgctl}
[ -x "$ORGCTL" ] || { echo "build first: cargo build --release (or set ORGCTL)" >&2; exit 1; }
BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)
url=$("$ORGCTL" dev up --dir "$BENCH_DIR" 2>/dev/null)
base=${url%/*}
trap '"$ORGCTL" dev down --dir "$BENCH_DIR" >/dev/null 2>&1 || true' EXIT
psql_() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

machine_header "$ORGCTL"
echo "seeding (the large org's sizes unless SEED_ARGS is set)…" >&2
psql_ "$base/postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_tmpl" -c "CREATE DATABASE bench_tmpl" \
      -c "COMMENT ON DATABASE bench_tmpl IS 'orgctl dev database'" >/dev/null
psql_ "$base/bench_tmpl" -f migrations/platform/schema-2026-08.sql >/dev/null
# shellcheck disable=SC2086
"$ORGCTL" dev seed -q --database-url "$base/bench_tmpl" ${SEED_ARGS:-}
psql_ "$base/bench_tmpl" -c "VACUUM ANALYZE" >/dev/null
psql_ -At "$base/bench_tmpl" -c "SELECT 'org: ' || (SELECT count(*) FROM workspaces) || ' workspaces, ' || (SELECT count(*) FROM workspaces WHERE parent_id IS NULL) || ' roots, ' || (SELECT count(*) FROM org_api_tokens) || ' tokens (' || (SELECT count(*) FROM org_api_tokens WHERE revoked_at IS NULL) || ' live, ' || (SELECT count(*) FROM org_api_tokens WHERE created_by = 'session' AND revoked_at IS NULL) || ' live with created_by session)'"
root=$(psql_ -At "$base/bench_tmpl" -c "SELECT id FROM workspaces WHERE parent_id IS NULL ORDER BY id LIMIT 1")
prefix=$(psql_ -At "$base/bench_tmpl" -c "SELECT prefix FROM org_api_tokens WHERE revoked_at IS NULL GROUP BY prefix HAVING count(*) = 1 LIMIT 1")

fresh() { psql_ "$base/postgres" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_r" -c "CREATE DATABASE bench_r TEMPLATE bench_tmpl STRATEGY FILE_COPY" >/dev/null; }
# measure LABEL -- ARGS… : time and peak RSS of `orgctl ARGS` on a fresh copy, stdout discarded
# (exit 0 or 1 accepted: status exits 1 on an org that is not installed).
declare -A T R
measure() {
  local label=$1; shift 2
  local ts=() rs=() i out
  for i in $(seq 1 "$ROUNDS"); do
    fresh
    out=$( { /usr/bin/time -f "%e %M" bash -c '"$@" >/dev/null; [ $? -le 1 ]' _ "$ORGCTL" --database-url "$base/bench_r" "$@"; } 2>&1 | tail -1)
    ts+=("${out% *}"); rs+=("${out#* }")
  done
  T[$label]=$(printf '%s\n' "${ts[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
  R[$label]=$(printf '%s\n' "${rs[@]}" | sort -g | tail -1)
  printf '%-58s %9.2f %9.1f\n' "$label" "${T[$label]}" "$(awk -v k="${R[$label]}" 'BEGIN{print k/1024}')"
}
# The pipe case: time until `head` has its lines and orgctl has exited.
measure_head() {
  local label=$1 ts=() i s e
  for i in $(seq 1 "$ROUNDS"); do
    s=$(date +%s.%N)
    "$ORGCTL" --database-url "$base/bench_tmpl" token list --limit 0 | head -2 >/dev/null
    e=$(date +%s.%N); ts+=("$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f", e-s}')")
  done
  printf '%-58s %9.2f %9s\n' "$label" "$(printf '%s\n' "${ts[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')" "-"
}

printf '\n%-58s %9s %9s\n' "command ($ROUNDS rounds; median s, max peak RSS MiB)" seconds "RSS MiB"
measure "token list --limit 100" -- token list --limit 100
measure "token list --limit 0 -o json (every live token)" -- token list --limit 0 -o json
measure_head "token list --limit 0 | head -2"
# A root of this org holds far more live tokens than the platform's mint ceiling allows:
# --over-ceiling mints past it, so the measured mint still pays for counting them.
measure "token mint --org ROOT" -- token mint --org "$root" --over-ceiling
measure "token revoke PREFIX --yes" -- token revoke "$prefix" --yes
measure "token revoke --created-by session --yes -o json" -- token revoke --created-by session --yes -o json
measure "status" -- status
psql_ "$base/postgres" -c "DROP DATABASE IF EXISTS bench_r" >/dev/null
