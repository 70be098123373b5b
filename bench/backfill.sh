#!/usr/bin/env bash
# Backfill throughput (issue 6): `orgctl backfill run` at concurrency 1, 4 and 8 against a
# sequential loop that runs a hand-written single-transaction install through psql once per
# tenant — side by side, in one run, on one throwaway local server.
#
#   cargo build --release && bench/backfill.sh            # N=200 tenants per variant
#   N=50 bench/backfill.sh                                 # quicker
#
# Every variant gets its own N fresh copies of the sample org (`dev up`'s, created from a
# template), so each one does the same work. orgctl does more than the loop per tenant: the
# schema check, creating its own `orgctl` schema (first use), the snapshot and the run-state and
# audit rows. The figures are wall-clock tenants/second.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/machine.sh

N=${N:-200}
BIN=${ORGCTL:-target/release/orgctl}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
WORK=$(mktemp -d /tmp/orgctl-bench-backfill.XXXXXX)
chmod 755 "$WORK"
URL=$("$BIN" dev up --dir "$WORK/pg")
cleanup() { "$BIN" dev down --dir "$WORK/pg" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
BASE=${URL%/*}                      # postgres://postgres@127.0.0.1:PORT
psql_db() { psql -X -q -v ON_ERROR_STOP=1 -At -d "$BASE/$1"; }

machine_header "$BIN"
echo "server: ${BASE#*@}, $N tenants per variant, $(nproc) CPU(s)" >&2
psql_db postgres <<<"CREATE DATABASE bench_tmpl TEMPLATE orgctl_dev" >/dev/null

make_fleet() { # name -> tenants file
  local name=$1 file="$WORK/$1.tenants"
  : >"$file"
  for i in $(seq -w 1 "$N"); do
    echo "CREATE DATABASE ${name}_$i TEMPLATE bench_tmpl STRATEGY FILE_COPY;"
    echo "$name-$i $BASE/${name}_$i" >>"$file"
  done | psql_db postgres >/dev/null
  echo "$file"
}

# The hand-written install: the same statements orgctl plans, for a tenant known to have no
# agent yet, in one transaction under the tenant advisory lock.
cat >"$WORK/install.sql" <<'SQL'
BEGIN;
SELECT pg_advisory_xact_lock(1869768547, 1);
INSERT INTO workspaces (id, name, kind, parent_id, tier)
VALUES ('f1000000-0000-4000-8000-000000000001', 'Platform Agent', 'platform', NULL, 0);
INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
VALUES ('f1000000-0000-4000-8000-000000000001', 'MODEL', 'claude'::bytea, 0);
WITH ranked AS (
  SELECT id, row_number() OVER (PARTITION BY plugin_name ORDER BY enabled_at, id) AS rn
    FROM org_plugin_allowlist
   WHERE org_id IN (SELECT id FROM workspaces WHERE parent_id IS NULL AND kind IS DISTINCT FROM 'platform'))
DELETE FROM org_plugin_allowlist a USING ranked r WHERE a.id = r.id AND r.rn > 1;
UPDATE org_plugin_allowlist SET org_id = 'f1000000-0000-4000-8000-000000000001'
 WHERE org_id IN (SELECT id FROM workspaces WHERE parent_id IS NULL AND kind IS DISTINCT FROM 'platform');
UPDATE org_api_tokens SET org_id = 'f1000000-0000-4000-8000-000000000001'
 WHERE org_id IN (SELECT id FROM workspaces WHERE parent_id IS NULL AND kind IS DISTINCT FROM 'platform');
UPDATE workspaces SET parent_id = 'f1000000-0000-4000-8000-000000000001', updated_at = now()
 WHERE parent_id IS NULL AND kind IS DISTINCT FROM 'platform';
COMMIT;
SQL

now() { date +%s.%N; }
rate() { awk -v n="$N" -v s="$1" -v e="$2" 'BEGIN { printf "%.1f", n / (e - s) }'; }

LOOP=$(make_fleet loop)
C1=$(make_fleet c1)
C4=$(make_fleet c4)
C8=$(make_fleet c8)

s=$(now)
while read -r _ url; do
  psql -X -q -v ON_ERROR_STOP=1 -d "$url" -f "$WORK/install.sql" >/dev/null
done <"$LOOP"
e=$(now); loop_rate=$(rate "$s" "$e"); loop_secs=$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.2f", e-s}')

declare -A RATE SECS
for c in 1 4 8; do
  file=C$c
  s=$(now)
  "$BIN" -q backfill run --tenants "${!file}" --concurrency "$c" --model claude --yes \
    --report "$WORK/c$c.json" >/dev/null
  e=$(now)
  RATE[$c]=$(rate "$s" "$e"); SECS[$c]=$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.2f", e-s}')
  grep -q "\"applied\": $N," "$WORK/c$c.json" || { echo "c$c: not every tenant applied" >&2; exit 1; }
done

printf '%-34s %8s %12s %8s\n' variant seconds tenants/s "vs loop"
printf '%-34s %8s %12s %8s\n' "psql loop (1 tx per tenant)" "$loop_secs" "$loop_rate" "1.00x"
for c in 1 4 8; do
  printf '%-34s %8s %12s %8s\n' "orgctl backfill --concurrency $c" "${SECS[$c]}" "${RATE[$c]}" \
    "$(awk -v a="${RATE[$c]}" -v b="$loop_rate" 'BEGIN{printf "%.2fx", a/b}')"
done
