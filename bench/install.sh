#!/usr/bin/env bash
# Benchmark install-platform-agent on the large org (docs/design/performance.md) against a hand-written
# single-transaction SQL script doing the same updates (bench/install.sql), side by side in one
# run, on one local server. Each measurement runs on a fresh copy of the same seeded template.
# Also `backfill rollback` of the same org right after its `backfill run`: autovacuum
# off for the tables involved, so the planner's statistics are as stale as they are on a tenant
# right after a run; target at most 1.5x the install apply's time.
#
#   bench/install.sh [ROUNDS]        (default 3; prints medians and ratios)
#
# Environment: BENCH_DIR (server data, default /tmp/orgctl-bench), ORGCTL (binary, default the
# release build), SEED_ARGS (override `orgctl dev seed` sizes for a quick run).
set -euo pipefail
# A new agent's id is the platform's for the org id (exit 2 without one): a fixed bench org.
export MOLECULE_ORG_ID="${MOLECULE_ORG_ID:-bench-org}"
cd "$(dirname "$0")/.."
. bench/machine.sh
ROUNDS=${1:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/orgctl-bench}
ORGCTL=${ORGCTL:-target/release/orgctl}
[ -x "$ORGCTL" ] || cargo build --release -q
BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)

url=$("$ORGCTL" dev up --dir "$BENCH_DIR" 2>/dev/null)
machine_header "$ORGCTL"
base=${url%/*}
psql_() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

echo "seeding the template (the large org's sizes unless SEED_ARGS is set)…" >&2
psql_ "$base/postgres" -c "DROP DATABASE IF EXISTS bench_tmpl" -c "CREATE DATABASE bench_tmpl" \
      -c "COMMENT ON DATABASE bench_tmpl IS 'orgctl dev database'"
psql_ "$base/bench_tmpl" -f migrations/platform/schema-2026-08.sql
# shellcheck disable=SC2086
"$ORGCTL" dev seed -q --database-url "$base/bench_tmpl" ${SEED_ARGS:-}
psql_ "$base/bench_tmpl" -c "VACUUM ANALYZE"
psql_ -At "$base/bench_tmpl" -c "SELECT 'workspaces=' || (SELECT count(*) FROM workspaces) || ' roots=' || (SELECT count(*) FROM workspaces WHERE parent_id IS NULL) || ' tokens=' || (SELECT count(*) FROM org_api_tokens) || ' on_roots=' || (SELECT count(*) FROM org_api_tokens t JOIN workspaces w ON w.id = t.org_id AND w.parent_id IS NULL) || ' allowlist=' || (SELECT count(*) FROM org_plugin_allowlist)" >&2

fresh() { psql_ "$base/postgres" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1 TEMPLATE bench_tmpl STRATEGY FILE_COPY"; psql_ "$base/$1" -c "CHECKPOINT" >/dev/null; }

TENANTS=$(mktemp /tmp/orgctl-bench-tenants.XXXXXX)
trap 'rm -f "$TENANTS"' EXIT
echo "bench $base/bench_r" >"$TENANTS"
novacuum() { for t in "$@"; do echo "ALTER TABLE $t SET (autovacuum_enabled = off);"; done | psql_ "$base/bench_r"; }

script=(); apply=(); dry=(); rss_apply=(); rss_dry=(); run=(); rollback=(); rss_rb=()
for i in $(seq 1 "$ROUNDS"); do
  fresh bench_s; t0=$(now); psql_ "$base/bench_s" -f bench/install.sql; t1=$(now)
  script+=("$(calc "$t1 - $t0")")

  fresh bench_d
  out=$( { /usr/bin/time -f "%e %M" "$ORGCTL" install-platform-agent --dry-run --model bench-model -q \
           --database-url "$base/bench_d" >/dev/null; } 2>&1 | tail -1)
  dry+=("${out% *}"); rss_dry+=("${out#* }")

  fresh bench_a
  out=$( { /usr/bin/time -f "%e %M" "$ORGCTL" install-platform-agent --model bench-model --yes -q \
           --database-url "$base/bench_a" >/dev/null; } 2>&1 | tail -1)
  apply+=("${out% *}"); rss_apply+=("${out#* }")
  roots=$(psql_ -At "$base/bench_a" -c "SELECT count(*) FROM workspaces WHERE parent_id IS NULL")
  [ "$roots" = 1 ] || { echo "apply did not install (roots=$roots)" >&2; exit 1; }

  # Rollback right after the run, with statistics as the run left them.
  fresh bench_r
  novacuum workspaces org_api_tokens org_plugin_allowlist workspace_secrets
  t0=$(now)
  "$ORGCTL" backfill run --tenants "$TENANTS" --run-id bench --model bench-model --yes -q >/dev/null
  t1=$(now); run+=("$(calc "$t1 - $t0")")
  novacuum orgctl.backfill_rows orgctl.backfill_runs
  out=$( { /usr/bin/time -f "%e %M" "$ORGCTL" backfill rollback --tenants "$TENANTS" --run-id bench \
           --yes -q -o json >"$TENANTS.json"; } 2>&1 | tail -1)
  rollback+=("${out% *}"); rss_rb+=("${out#* }")
  grep -q '"exact": true' "$TENANTS.json" || { echo "rollback not verified exact: $(cat "$TENANTS.json")" >&2; exit 1; }
  roots=$(psql_ -At "$base/bench_r" -c "SELECT count(*) FROM workspaces WHERE parent_id IS NULL")
  [ "$roots" = "$(psql_ -At "$base/bench_tmpl" -c "SELECT count(*) FROM workspaces WHERE parent_id IS NULL")" ] \
    || { echo "rollback did not restore the roots (roots=$roots)" >&2; exit 1; }
  rm -f "$TENANTS.json"
  echo "round $i: script ${script[-1]}s  apply ${apply[-1]}s  dry-run ${dry[-1]}s  rss apply ${rss_apply[-1]}KiB dry ${rss_dry[-1]}KiB  backfill run ${run[-1]}s  rollback ${rollback[-1]}s rss ${rss_rb[-1]}KiB" >&2
done
psql_ "$base/postgres" -c "DROP DATABASE IF EXISTS bench_s" -c "DROP DATABASE IF EXISTS bench_d" -c "DROP DATABASE IF EXISTS bench_a" \
      -c "DROP DATABASE IF EXISTS bench_r"

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }
S=$(median "${script[@]}"); A=$(median "${apply[@]}"); D=$(median "${dry[@]}")
RA=$(max "${rss_apply[@]}"); RD=$(max "${rss_dry[@]}")
BR=$(median "${run[@]}"); RB=$(median "${rollback[@]}"); RR=$(max "${rss_rb[@]}")
printf '\n%-28s %10s %10s %8s\n' "measure ($ROUNDS rounds, median)" "seconds" "ratio" "target"
printf '%-28s %10.3f %10s %8s\n' "hand-written SQL script" "$S" "1.00" "-"
printf '%-28s %10.3f %10.2f %8s\n' "orgctl apply" "$A" "$(calc "$A / $S")" "<= 1.3"
printf '%-28s %10.3f %10.2f %8s\n' "orgctl dry run" "$D" "$(calc "$D / $S")" "<= 0.1"
printf '%-28s %10.1f %10s %8s\n' "orgctl peak RSS apply (MiB)" "$(calc "$RA / 1024")" "-" "<= 50"
printf '%-28s %10.1f %10s %8s\n' "orgctl peak RSS dry (MiB)" "$(calc "$RD / 1024")" "-" "<= 50"
printf '\n%-28s %10s %10s %8s\n' "rollback right after a run" "seconds" "vs apply" "target"
printf '%-28s %10.3f %10.2f %8s\n' "orgctl backfill run" "$BR" "$(calc "$BR / $A")" "-"
printf '%-28s %10.3f %10.2f %8s\n' "orgctl backfill rollback" "$RB" "$(calc "$RB / $A")" "<= 1.5"
printf '%-28s %10.1f %10s %8s\n' "peak RSS rollback (MiB)" "$(calc "$RR / 1024")" "-" "-"
echo "(stop the server with: $ORGCTL dev down --dir $BENCH_DIR)" >&2
