#!/usr/bin/env bash
# Benchmark `orgctl secret rekey` on 200k secret rows against a plain SQL UPDATE that
# rewrites encrypted_value of the same rows (one transaction), side by side in one run, on one
# local server; `secret verify` and the rekey dry run are timed too. Each measurement runs on a
# fresh copy of the same seeded template.
#
#   bench/rekey.sh [ROUNDS]        (default 3; prints medians, ratios and peak RSS)
#
# Environment: BENCH_DIR (server data, default /tmp/orgctl-bench-rekey), ORGCTL (binary, default
# the release build), WORKSPACES (default 20000; 8 secrets each) and GLOBALS (default 40000):
# 160k workspace secrets + 40k global secrets = 200k rows, half of each table version 1 under
# the old key, half version 0.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/orgctl-bench-rekey}
ORGCTL=${ORGCTL:-target/release/orgctl}
WORKSPACES=${WORKSPACES:-20000}
GLOBALS=${GLOBALS:-40000}
[ -x "$ORGCTL" ] || cargo build --release -q
BIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)

url=$("$ORGCTL" dev up --dir "$BENCH_DIR" 2>/dev/null)
base=${url%/*}
psql_() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
# Two random keys, never on a command line: exported for orgctl only.
OLD_KEY=$(head -c 32 /dev/urandom | base64)
NEW_KEY=$(head -c 32 /dev/urandom | base64)

echo "seeding the template ($WORKSPACES workspaces x 8 secrets + $GLOBALS global secrets)…" >&2
psql_ "$base/postgres" -c "DROP DATABASE IF EXISTS rekey_tmpl" -c "CREATE DATABASE rekey_tmpl" \
      -c "COMMENT ON DATABASE rekey_tmpl IS 'orgctl dev database'"
psql_ "$base/rekey_tmpl" -f migrations/platform/schema-2026-08.sql
# Half of the rows first, as plaintext; orgctl encrypts them (version 1 under OLD_KEY); then the
# other half as plaintext (version 0). Values are 64-byte strings, like API keys.
seed() { # $1 = workspace key numbers, $2 = global range
  psql_ "$base/rekey_tmpl" <<SQL
INSERT INTO workspaces (id, name, parent_id)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'ws ' || g, NULL
  FROM generate_series(1, $WORKSPACES) g
ON CONFLICT (id) DO NOTHING;
INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
SELECT w.id, 'KEY_' || k, convert_to(md5(w.id::text || k) || md5(k || w.id::text), 'UTF8'), 0
  FROM workspaces w, unnest(ARRAY[$1]) k;
INSERT INTO global_secrets (key, encrypted_value, encryption_version)
SELECT 'GLOBAL_' || g, convert_to(md5(g::text) || md5('x' || g), 'UTF8'), 0
  FROM generate_series($2) g;
SQL
}
seed "1,2,3,4" "1, $((GLOBALS / 2))"
SECRETS_ENCRYPTION_KEY=$OLD_KEY "$ORGCTL" secret rekey --plaintext-only --yes -q \
  --database-url "$base/rekey_tmpl" >/dev/null
seed "5,6,7,8" "$((GLOBALS / 2 + 1)), $GLOBALS"
psql_ "$base/rekey_tmpl" -c "VACUUM ANALYZE"
psql_ -At "$base/rekey_tmpl" -c "SELECT 'rows: ' || string_agg(t || ' v' || v || '=' || n, ' ' ORDER BY t, v) FROM (
  SELECT 'workspace_secrets' t, encryption_version v, count(*) n FROM workspace_secrets GROUP BY 2
  UNION ALL SELECT 'global_secrets', encryption_version, count(*) FROM global_secrets GROUP BY 2) s" >&2

fresh() { psql_ "$base/postgres" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1 TEMPLATE rekey_tmpl STRATEGY FILE_COPY"; psql_ "$base/$1" -c "CHECKPOINT" >/dev/null; }

sql=(); rekey=(); dry=(); verify=(); rss_rekey=(); rss_dry=(); rss_verify=()
for i in $(seq 1 "$ROUNDS"); do
  fresh rekey_s; t0=$(now)
  psql_ "$base/rekey_s" <<'SQL'
BEGIN;
UPDATE workspace_secrets SET encrypted_value = encrypted_value || '\x'::bytea, encryption_version = 1;
UPDATE global_secrets SET encrypted_value = encrypted_value || '\x'::bytea, encryption_version = 1;
COMMIT;
SQL
  t1=$(now); sql+=("$(calc "$t1 - $t0")")

  fresh rekey_a
  t0=$(now)
  out=$( { SECRETS_ENCRYPTION_KEY=$OLD_KEY SECRETS_ENCRYPTION_KEY_NEW=$NEW_KEY /usr/bin/time -f "%e %M" \
           "$ORGCTL" secret rekey --yes -q --database-url "$base/rekey_a" >/dev/null; } 2>&1 | tail -1)
  t1=$(now)
  rekey+=("$(calc "$t1 - $t0")"); rss_rekey+=("${out#* }")
  # Correctness: everything reads with the new key, nothing with the old.
  SECRETS_ENCRYPTION_KEY=$NEW_KEY "$ORGCTL" secret verify -q --database-url "$base/rekey_a" >/dev/null \
    || { echo "after rekey, verify with the new key failed" >&2; exit 1; }
  if SECRETS_ENCRYPTION_KEY=$OLD_KEY "$ORGCTL" secret verify -q --database-url "$base/rekey_a" >/dev/null; then
    echo "after rekey, the old key still decrypts" >&2; exit 1
  fi

  fresh rekey_d
  t0=$(now)
  out=$( { SECRETS_ENCRYPTION_KEY=$OLD_KEY SECRETS_ENCRYPTION_KEY_NEW=$NEW_KEY /usr/bin/time -f "%e %M" \
           "$ORGCTL" secret rekey --dry-run -q --database-url "$base/rekey_d" >/dev/null; } 2>&1 | tail -1)
  t1=$(now)
  dry+=("$(calc "$t1 - $t0")"); rss_dry+=("${out#* }")
  t0=$(now)
  out=$( { SECRETS_ENCRYPTION_KEY=$OLD_KEY /usr/bin/time -f "%e %M" \
           "$ORGCTL" secret verify -q --database-url "$base/rekey_d" >/dev/null; } 2>&1 | tail -1)
  t1=$(now)
  verify+=("$(calc "$t1 - $t0")"); rss_verify+=("${out#* }")
  echo "round $i: sql ${sql[-1]}s  rekey ${rekey[-1]}s  dry-run ${dry[-1]}s  verify ${verify[-1]}s  rss rekey ${rss_rekey[-1]}KiB dry ${rss_dry[-1]}KiB verify ${rss_verify[-1]}KiB" >&2
done
psql_ "$base/postgres" -c "DROP DATABASE IF EXISTS rekey_s" -c "DROP DATABASE IF EXISTS rekey_a" -c "DROP DATABASE IF EXISTS rekey_d"

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }
S=$(median "${sql[@]}"); R=$(median "${rekey[@]}"); D=$(median "${dry[@]}"); V=$(median "${verify[@]}")
RR=$(max "${rss_rekey[@]}"); RD=$(max "${rss_dry[@]}"); RV=$(max "${rss_verify[@]}")
printf '\n%-30s %10s %10s %8s\n' "measure ($ROUNDS rounds, median)" "seconds" "ratio" "target"
printf '%-30s %10.3f %10s %8s\n' "plain SQL UPDATE" "$S" "1.00" "-"
printf '%-30s %10.3f %10.2f %8s\n' "orgctl secret rekey" "$R" "$(calc "$R / $S")" "<= 3"
printf '%-30s %10.3f %10.2f %8s\n' "orgctl secret rekey --dry-run" "$D" "$(calc "$D / $S")" "-"
printf '%-30s %10.3f %10.2f %8s\n' "orgctl secret verify" "$V" "$(calc "$V / $S")" "-"
printf '%-30s %10.1f %10s %8s\n' "peak RSS rekey (MiB)" "$(calc "$RR / 1024")" "-" "<= 64"
printf '%-30s %10.1f %10s %8s\n' "peak RSS dry run (MiB)" "$(calc "$RD / 1024")" "-" "-"
printf '%-30s %10.1f %10s %8s\n' "peak RSS verify (MiB)" "$(calc "$RV / 1024")" "-" "-"
echo "(stop the server with: $ORGCTL dev down --dir $BENCH_DIR)" >&2
