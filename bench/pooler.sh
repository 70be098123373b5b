#!/usr/bin/env bash
# What the pooler-safe mode costs on a DIRECT connection, side by side in one run on
# one local server: the same binary with `--pooler none` (sqlx's statement cache: named
# prepared statements) and `--pooler transaction` (the default: unnamed statements), and
# optionally a baseline binary from before the change (BASE=path/to/old/orgctl: settings as
# startup options, statements outside transactions).
#
#   bench/pooler.sh [ROUNDS]          (default 7; prints medians and ratios against --pooler none)
#
# Workloads, each variant run interleaved in every round so machine load hits all alike:
#   status         `orgctl status` on the sample org (about twenty read statements), K runs
#   dry-run        `install-platform-agent --dry-run` on a seeded org (SEED_ARGS), K runs
#   mint           `token mint` (one write transaction under the tenant lock), K runs
#   backfill       `backfill run --concurrency 4` over N fresh sample-org tenants
# Round trips (deterministic, unlike time on a shared machine): with strace installed, each
# variant's client->server sends (sendto calls: one per round trip) and Parse messages for one
# run of each command, on fresh copies of the sample org.
# Figures are wall-clock milliseconds: the median of every single command's time over all
# rounds (ROUNDS x K samples), and for backfill the median over rounds of time per tenant.
#
# Environment: ORGCTL (binary, default target/release/orgctl, else target/debug/orgctl), BASE,
# K (runs per round, default 10), N (tenants per backfill round, default 20), SEED_ARGS.
set -euo pipefail
# A new agent's id is the platform's for the org id (exit 2 without one): a fixed bench org.
export MOLECULE_ORG_ID="${MOLECULE_ORG_ID:-bench-org}"
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
K=${K:-10}
# Every round mints K more tokens into one org: turn the platform's mint ceiling off (an older
# orgctl given as BASE ignores it) so a long run never reaches it.
export ORG_TOKEN_MINT_CEILING=0
N=${N:-20}
ORGCTL=${ORGCTL:-$( [ -x target/release/orgctl ] && echo target/release/orgctl || echo target/debug/orgctl)}
[ -x "$ORGCTL" ] || { echo "build first: cargo build --release" >&2; exit 1; }
BASE=${BASE:-}
PGBIN=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)
WORK=$(mktemp -d /tmp/orgctl-bench-pooler.XXXXXX)
chmod 755 "$WORK"
URL=$("$ORGCTL" dev up --dir "$WORK/pg" 2>/dev/null)
cleanup() { "$ORGCTL" dev down --dir "$WORK/pg" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
SRV=${URL%/*}
psql_() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -At "$@"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# Variants: name and command prefix.
VARIANTS=("none" "transaction")
declare -A CMD=(["none"]="$ORGCTL --pooler none" ["transaction"]="$ORGCTL --pooler transaction")
if [ -n "$BASE" ]; then VARIANTS+=("base"); CMD["base"]="$BASE"; fi

echo "server ${SRV#*@}; binary $ORGCTL; base ${BASE:-none}; $ROUNDS rounds, K=$K, N=$N; $(nproc) CPU(s), load $(cut -d' ' -f1 /proc/loadavg)" >&2
psql_ "$SRV/postgres" -c "CREATE DATABASE bench_sample TEMPLATE orgctl_dev" >/dev/null
psql_ "$SRV/postgres" -c "CREATE DATABASE bench_big" -c "COMMENT ON DATABASE bench_big IS 'orgctl dev database'" >/dev/null
psql_ "$SRV/bench_big" -f migrations/platform/schema-2026-08.sql >/dev/null
# shellcheck disable=SC2086
"$ORGCTL" dev seed -q --database-url "$SRV/bench_big" ${SEED_ARGS:---roots 50 --workspaces 5000 --tokens 20000 --tokens-on-roots 10000 --allowlist 5000}
psql_ "$SRV/bench_big" -c "VACUUM ANALYZE" >/dev/null
for v in "${VARIANTS[@]}"; do
  psql_ "$SRV/postgres" -c "CREATE DATABASE bench_mint_$v TEMPLATE orgctl_dev" >/dev/null
  # orgctl's own schema once, so every measured mint does the same work.
  ${CMD[$v]} -q token mint --org a0000000-0000-4000-8000-000000000001 --database-url "$SRV/bench_mint_$v" >/dev/null
done

declare -A RES
run_k() { # variant, args... -> the time of each of K runs, ms
  local v=$1; shift
  local s e
  for _ in $(seq 1 "$K"); do
    s=$(now_ms)
    ${CMD[$v]} -q "$@" >/dev/null || [ $? -le 1 ]
    e=$(now_ms)
    printf '%s ' $((e - s))
  done
}

for r in $(seq 1 "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    RES[status,$v]+="$(run_k "$v" status --database-url "$SRV/bench_sample") "
    RES[dry,$v]+="$(run_k "$v" install-platform-agent --dry-run --model m --database-url "$SRV/bench_big") "
    RES[mint,$v]+="$(run_k "$v" token mint --org a0000000-0000-4000-8000-000000000001 --database-url "$SRV/bench_mint_$v") "
    file="$WORK/fleet_${v}_$r"
    : >"$file"
    for i in $(seq 1 "$N"); do
      echo "CREATE DATABASE f_${v}_${r}_$i TEMPLATE orgctl_dev STRATEGY FILE_COPY;"
      echo "t$i $SRV/f_${v}_${r}_$i" >>"$file"
    done | psql_ "$SRV/postgres" >/dev/null
    s=$(now_ms)
    ${CMD[$v]} -q backfill run --tenants "$file" --concurrency 4 --model m --yes >/dev/null
    e=$(now_ms)
    RES[backfill,$v]+="$(awk -v t=$((e - s)) -v n="$N" 'BEGIN { printf "%.1f\n", t / n }') "
  done
  echo "round $r/$ROUNDS done" >&2
done

declare -A LABEL=(["none"]="--pooler none" ["transaction"]="--pooler txn" ["base"]="before")
printf '%-10s' workload
for v in "${VARIANTS[@]}"; do printf '%16s' "${LABEL[$v]}"; done
printf '%14s\n' "txn vs none"
for w in status dry mint backfill; do
  printf '%-10s' "$w"
  declare -A MED=()
  for v in "${VARIANTS[@]}"; do
    MED[$v]=$(tr ' ' '\n' <<<"${RES[$w,$v]}" | grep . | median)
    printf '%13s ms' "${MED[$v]}"
  done
  printf '%13sx\n' "$(awk -v a="${MED[transaction]}" -v b="${MED[none]}" 'BEGIN { printf "%.3f", a / b }')"
done

if command -v strace >/dev/null 2>&1; then
  echo
  sends() { # variant, args... -> "SENDS/PARSES"
    local v=$1; shift
    strace -f -qq -e trace=sendto -o "$WORK/strace.txt" ${CMD[$v]} -q "$@" >/dev/null 2>&1 || true
    echo "$(grep -c 'sendto(' "$WORK/strace.txt")/$(grep -c 'sendto([0-9]*, "P' "$WORK/strace.txt")"
  }
  printf '%-28s' "round trips/parses"
  for v in "${VARIANTS[@]}"; do printf '%16s' "${LABEL[$v]}"; done
  echo
  for v in "${VARIANTS[@]}"; do
    psql_ "$SRV/postgres" -c "CREATE DATABASE rt_$v TEMPLATE orgctl_dev" >/dev/null
  done
  for w in "status" "install-platform-agent --dry-run --model m" "install-platform-agent --yes --model m" \
           "token mint" "token list --all"; do
    printf '%-28s' "${w/ --model m/}"
    for v in "${VARIANTS[@]}"; do
      # shellcheck disable=SC2086
      printf '%16s' "$(sends "$v" $w --database-url "$SRV/rt_$v")"
    done
    echo
  done
fi
