#!/usr/bin/env bash
# Reading a large audit log: `orgctl audit -o json` (list, streamed) and
# `orgctl audit verify` (every hash recomputed) against the plainest baseline there is —
# psql's COPY of the same columns, newest first, to /dev/null — side by side, in one run, on
# one throwaway local server, with peak RSS.
#
#   cargo build --release && bench/audit.sh          # N=200000 chained rows, 3 rounds
#   N=1000000 ROUNDS=5 bench/audit.sh
#
# The log is generated in SQL with the canonical content of docs/reference/audit-chain.md (and
# `audit verify` must call it intact before anything is timed, which checks the generator against orgctl).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
ROUNDS=${ROUNDS:-3}
BIN=${ORGCTL:-target/release/orgctl}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
WORK=$(mktemp -d /tmp/orgctl-bench-audit.XXXXXX)
chmod 755 "$WORK"
export DATABASE_URL
DATABASE_URL=$("$BIN" dev up --dir "$WORK/pg")
cleanup() { "$BIN" dev down --dir "$WORK/pg" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
psql_db() { psql -X -q -v ON_ERROR_STOP=1 -At -d "$DATABASE_URL" "$@"; }

# orgctl's schema (and the chain's first link) through orgctl itself.
"$BIN" token mint --name bench --org a0000000-0000-4000-8000-000000000001 >/dev/null 2>&1
echo "generating $N chained audit rows…" >&2
psql_db <<SQL >/dev/null
DO \$\$
DECLARE
  h_seq BIGINT; h_hash BYTEA; i BIGINT; new_id BIGINT; t TIMESTAMPTZ := now();
  content TEXT;
BEGIN
  SELECT seq, row_hash INTO h_seq, h_hash FROM orgctl.audit_head FOR UPDATE;
  FOR i IN 1..$N LOOP
    new_id := nextval(pg_get_serial_sequence('orgctl.audit_log', 'id'));
    h_seq := h_seq + 1;
    content := '["orgctl-audit-v1",' || h_seq || ',' || new_id || ',"'
      || to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
      || '","bench","' || current_user || '","token mint",{"n":' || i
      || ',"name":"bench token"},"BENCH-1","minted","0.1.0"]';
    INSERT INTO orgctl.audit_log (id, at, os_user, db_user, command, args, reason, outcome,
                                  orgctl_version, seq, prev_hash, row_hash)
    VALUES (new_id, t, 'bench', current_user, 'token mint',
            jsonb_build_object('n', i, 'name', 'bench token'), 'BENCH-1', 'minted', '0.1.0',
            h_seq, h_hash, sha256(h_hash || convert_to(content, 'UTF8')));
    h_hash := sha256(h_hash || convert_to(content, 'UTF8'));
  END LOOP;
  UPDATE orgctl.audit_head SET seq = h_seq, row_hash = h_hash;
END
\$\$;
VACUUM ANALYZE orgctl.audit_log;
SQL
"$BIN" audit verify >/dev/null || { echo "the generated log does not verify" >&2; exit 1; }
rows=$(psql_db -c "SELECT count(*) FROM orgctl.audit_log")
echo "rows=$rows rounds=$ROUNDS $(nproc) CPU(s)" >&2

timed() { # out-file cmd… -> "seconds kib"
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || {
    cat "$WORK/err" >&2; exit 1; }
  cat "$WORK/time"
}
declare -a B L V LR VR
for r in $(seq 1 "$ROUNDS"); do
  read -r b _ < <(timed psql -X -q -d "$DATABASE_URL" -c "COPY (SELECT id, at, os_user, db_user, command, args, reason, outcome, orgctl_version FROM orgctl.audit_log ORDER BY id DESC) TO STDOUT")
  read -r l lr < <(timed "$BIN" audit -o json --limit 0)
  read -r v vr < <(timed "$BIN" audit verify)
  echo "round $r: copy ${b}s  audit ${l}s (${lr}KiB)  verify ${v}s (${vr}KiB)" >&2
  B+=("$b"); L+=("$l"); V+=("$v"); LR+=("$lr"); VR+=("$vr")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(median "${B[@]}"); ml=$(median "${L[@]}"); mv=$(median "${V[@]}")
mlr=$(median "${LR[@]}"); mvr=$(median "${VR[@]}")
awk -v b="$mb" -v l="$ml" -v v="$mv" -v lr="$mlr" -v vr="$mvr" -v n="$rows" -v k="$ROUNDS" 'BEGIN {
  printf "\nmeasure (%d rows, %d rounds, median)   seconds   ratio\n", n, k
  printf "psql COPY to /dev/null              %8.3f    1.00\n", b
  printf "orgctl audit -o json --limit 0      %8.3f  %6.2f\n", l, l / b
  printf "orgctl audit verify                 %8.3f  %6.2f\n", v, v / b
  printf "peak RSS audit / verify (MiB)       %8.1f / %.1f\n", lr / 1024, vr / 1024
}'
