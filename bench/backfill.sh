#!/usr/bin/env bash
# Backfill throughput per tenant: `orgctl backfill run` against the
# hand-written install run by the real psql binary, side by side in one run, on one throwaway
# local server (`orgctl dev up`), for two org shapes and two latencies.
#
#   ORGCTL=target/release/orgctl bench/backfill.sh          # the defaults below; ~3 min
#   ROUNDS=1 N=20 N_PROXY=8 bench/backfill.sh               # a quick look
#
# Environment (defaults): ROUNDS (3) rounds, N (60) tenants per variant on loopback, N_PROXY
# (24) tenants per variant through the delay proxy, RTT_MS (10) round trip the proxy adds,
# WITH_C1 (1) also run orgctl at --concurrency 1, SHOW_STATEMENTS (0) list the statements of
# orgctl's counted run (first 110 characters each), ORGCTL (target/release/orgctl; copied at the
# start, so a rebuild during the run does not change what is measured).
#
# Variants, each on its own N fresh copies of the shape's template (CREATE DATABASE … TEMPLATE …
# STRATEGY FILE_COPY, made before its timing starts), in an order rotated every round:
#   loop    a sequential shell loop: `psql -X -q -v ON_ERROR_STOP=1 -d URL -f install.sql` per
#           tenant, with the real psql binary ($(pg_config --bindir)/psql, not the Debian Perl
#           wrapper /usr/bin/psql, which adds ~23 ms per call)
#   xargs   the same, eight at a time (`xargs -P8`)
#   c8, c1  `orgctl -q backfill run --tenants FILE --concurrency 8|1 --model claude --yes --report R`
# install.sql (written below) is what orgctl plans for a tenant with no agent yet:
# one transaction under the tenant advisory lock; it does not write orgctl's snapshot, run
# state or audit rows. Every variant is checked afterwards: each tenant ends with exactly one
# root, the platform agent, and orgctl's report says every tenant applied — so a silently
# failing variant cannot look fast.
#
# Shapes: `tiny`, 15 rows (3 roots one removed, 4 children, 4 tokens, 3 allowlist rows with a
# collision, 1 secret) on migrations/platform/schema-2026-08.sql; `sample`, the `dev up` sample
# org (template orgctl_dev: the real schema's shape, 0001 + 0002).
# Latencies: `direct` (loopback) and `proxy`: tenant URLs point at bench/delay_proxy.py, which
# delays every chunk about RTT_MS/2 each way, in order (127.0.0.1 only). The round trip it adds
# is measured with psql (20 more `SELECT 1`s in one session, through it vs direct), the wait
# corrected once if more than 3% off RTT_MS, and printed.
#
# Prints (stdout; progress on stderr): the machine header, the shapes, the proxy's measured
# RTT, then per shape and latency the median over rounds (and the range) of tenants/s, wall ms
# per tenant per concurrency slot (through the proxy, divided by the RTT: about the round trips
# per tenant), server CPU ms per tenant (postmaster's utime+stime+cutime+
# cstime plus its live children's utime+stime, around each variant, after a CHECKPOINT and with
# autovacuum off, so it is the variant's own work) and client CPU ms per tenant (psql/xargs/orgctl
# processes and the loop's shell, from this shell's /proc stat), and each variant's ratio to the
# loop and to xargs.
# Then, untimed, one fresh tenant per shape and client with log_statement = 'all' on its
# database alone, through a counting proxy: statements, connections, client round trips ("turns":
# sends after having received) and client sends, per fresh tenant. Finally a table with the
# issue's targets next to the figures.
set -euo pipefail
# A new agent's id is the platform's for the org id (exit 2 without one): a fixed bench org.
export MOLECULE_ORG_ID="${MOLECULE_ORG_ID:-bench-org}"
cd "$(dirname "$0")/.."
. bench/machine.sh
export LC_ALL=C
unset DATABASE_URL SECRETS_ENCRYPTION_KEY MOLECULE_ENV PGHOST PGPORT PGDATABASE PGUSER \
      PGPASSWORD PGOPTIONS PGSSLMODE PGSERVICE 2>/dev/null || true

ROUNDS=${ROUNDS:-3}
N=${N:-60}
N_PROXY=${N_PROXY:-24}
RTT_MS=${RTT_MS:-10}
WITH_C1=${WITH_C1:-1}
SHOW_STATEMENTS=${SHOW_STATEMENTS:-0}
ORGCTL=${ORGCTL:-target/release/orgctl}
SHAPES=(tiny sample)
LATS=(direct proxy)
VARIANTS=(loop xargs c8)
[ "$WITH_C1" = 1 ] && VARIANTS+=(c1)

[ -x "$ORGCTL" ] || { echo "no orgctl binary at $ORGCTL: cargo build --release (or set ORGCTL)" >&2; exit 1; }
PSQL="$(pg_config --bindir)/psql"
[ "$(head -c4 "$PSQL" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ] \
  || { echo "$PSQL is not the psql binary (pg_config --bindir)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed for bench/delay_proxy.py" >&2; exit 1; }
CLK=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/orgctl-bench-backfill.XXXXXX)
chmod 755 "$WORK"
BIN=$WORK/orgctl
PROXY_PIDS=()
cleanup() {
  local p
  for p in "${PROXY_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ -x "$BIN" ] && "$BIN" dev down --dir "$WORK/pg" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$ORGCTL" "$BIN"

START=$EPOCHREALTIME
URL=$("$BIN" dev up --dir "$WORK/pg" 2>"$WORK/devup.log") || { cat "$WORK/devup.log" >&2; exit 1; }
BASE=${URL%/*}                      # postgres://postgres@127.0.0.1:PORT
PORT=${BASE##*:}
DATA=$WORK/pg/data
PM=$(head -1 "$DATA/postmaster.pid")
LOG=$DATA/server.log

psql_db() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -At -d "$BASE/$1" "${@:2}"; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
minmax() { local f=$1; shift; printf '%s\n' "$@" | sort -g | awk -v f="$f" 'NR==1{lo=$1} {hi=$1} END {printf f "-" f, lo, hi}'; }
say() { echo "$*" >&2; }

machine_header "$ORGCTL"
src=$(cd "$(dirname "$ORGCTL")" && git rev-parse --show-toplevel 2>/dev/null || true)
if [ -n "$src" ]; then
  # What the binary is built from: the last commit that changed what goes into it (a commit
  # of the docs or of this script since does not change the binary), and whether the
  # binary is older than that commit (a stale build).
  read -r last_src last_time <<<"$(git -C "$src" log -1 --format='%h %ct' -- src Cargo.toml Cargo.lock migrations build.rs)"
  stale=""
  [ -n "$last_time" ] && [ "$(date -r "$ORGCTL" +%s)" -lt "$last_time" ] && stale=' (the binary is OLDER than that commit: rebuild)'
  src="$src, whose sources were last changed by $last_src$stale$( [ -z "$(git -C "$src" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock migrations 2>/dev/null)" ] || echo ' + uncommitted changes to them')"
fi
echo "binary:  sha256 $(sha256sum "$BIN" | cut -c1-12), modified $(date -u -r "$ORGCTL" '+%Y-%m-%d %H:%M:%S UTC'), copied at the start${src:+; checkout $src}"
echo "psql:    $PSQL ($("$PSQL" --version))"
echo "run:     ROUNDS=$ROUNDS N=$N N_PROXY=$N_PROXY RTT_MS=$RTT_MS variants: ${VARIANTS[*]} (order rotated per round)"
echo "server:  ${BASE#*@}, dev up settings (fsync off), autovacuum off for the run"

psql_db postgres -c "ALTER SYSTEM SET autovacuum = off" -c "SELECT pg_reload_conf()" >/dev/null

# --- Server and client CPU -------------------------------------------------------------------
children() { # the postmaster's children
  if [ -r "/proc/$PM/task/$PM/children" ]; then cat "/proc/$PM/task/$PM/children"; else ps -o pid= --ppid "$PM"; fi
}
server_ticks() { # postmaster utime+stime+cutime+cstime + live children's utime+stime
  local l c t f
  read -r l <"/proc/$PM/stat"; f=(${l##*) }); t=$(( f[11] + f[12] + f[13] + f[14] ))
  for c in $(children); do
    read -r l 2>/dev/null <"/proc/$c/stat" || continue
    f=(${l##*) }); t=$(( t + f[11] + f[12] ))
  done
  echo "$t"
}
CT=0
client_ticks() { # this shell's own and its waited-for children's CPU; builtins only, no fork
  local l f
  read -r l <"/proc/$$/stat"; f=(${l##*) }); CT=$(( f[11] + f[12] + f[13] + f[14] ))
}
wait_idle() { # until no client backend is left (the variant's connections have ended)
  local c t i
  for i in $(seq 1 200); do
    local busy=0
    for c in $(children); do
      t=; IFS= read -r -d '' t 2>/dev/null <"/proc/$c/cmdline" || true
      case $t in *"127.0.0.1("*) busy=1; break ;; esac
    done
    [ $busy = 0 ] && return 0
    sleep 0.05
  done
  say "warning: client backends still present after 10 s"
}

# --- The delay proxy -------------------------------------------------------------------------
start_proxy() { # name delay_ms [--stats FILE] -> sets PROXY_PORT
  local name=$1 delay=$2 i; shift 2
  # Emptied here, not only by the redirection below: that runs in the background child, and
  # the loop could still read a stopped proxy's "port" line from the file before it does.
  : >"$WORK/$name.out"
  python3 bench/delay_proxy.py --target-port "$PORT" --delay-ms "$delay" "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PROXY_PID=$!
  PROXY_PIDS+=("$PROXY_PID")
  for i in $(seq 1 100); do
    if grep -q '^port ' "$WORK/$name.out" 2>/dev/null; then
      PROXY_PORT=$(awk '/^port /{print $2}' "$WORK/$name.out"); return 0
    fi
    sleep 0.05
  done
  say "the delay proxy did not start: $(cat "$WORK/$name.err")"; exit 1
}
stop_proxy() { # pid
  local p keep=()
  kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true
  for p in "${PROXY_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PROXY_PIDS=("${keep[@]}")
}
url_for() { # lat db
  if [ "$1" = proxy ]; then echo "postgres://postgres@127.0.0.1:$PPORT/$2"; else echo "$BASE/$2"; fi
}

# --- The two shapes ----------------------------------------------------------------------------
psql_db postgres -c "CREATE DATABASE tmpl_tiny" >/dev/null
psql_db tmpl_tiny -f migrations/platform/schema-2026-08.sql >/dev/null
psql_db tmpl_tiny >/dev/null <<'SQL'
INSERT INTO workspaces (id, name, role, tier, status, parent_id, kind, created_at) VALUES
 ('11000000-0000-4000-8000-000000000001', 'Tiny HQ',   'org', 1, 'online',  NULL, 'workspace', '2024-01-01T00:00:00Z'),
 ('12000000-0000-4000-8000-000000000001', 'Tiny Labs', 'org', 1, 'online',  NULL, 'workspace', '2024-02-01T00:00:00Z'),
 ('13000000-0000-4000-8000-000000000001', 'Tiny Old',  'org', 1, 'removed', NULL, 'workspace', '2023-06-01T00:00:00Z');
INSERT INTO workspaces (id, name, role, tier, status, parent_id, created_at) VALUES
 ('11000000-0000-4000-8000-000000000002', 'Team',   'team',  2, 'online',  '11000000-0000-4000-8000-000000000001', '2024-01-02T00:00:00Z'),
 ('11000000-0000-4000-8000-000000000003', 'Worker', 'agent', 3, 'online',  '11000000-0000-4000-8000-000000000002', '2024-01-03T00:00:00Z'),
 ('12000000-0000-4000-8000-000000000002', 'Bridge', 'agent', 2, 'online',  '12000000-0000-4000-8000-000000000001', '2024-02-02T00:00:00Z'),
 ('12000000-0000-4000-8000-000000000003', 'Parked', 'agent', 2, 'paused',  '12000000-0000-4000-8000-000000000001', '2024-02-03T00:00:00Z');
INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by, created_at, revoked_at, org_id) VALUES
 ('71000000-0000-4000-8000-000000000001', sha256('tiny-token-1'::bytea), 'tiny0001', 'hq ci',   'session',     '2024-03-01T00:00:00Z', NULL,                   '11000000-0000-4000-8000-000000000001'),
 ('71000000-0000-4000-8000-000000000002', sha256('tiny-token-2'::bytea), 'tiny0002', 'hq old',  'session',     '2024-03-02T00:00:00Z', '2024-04-01T00:00:00Z', '11000000-0000-4000-8000-000000000001'),
 ('71000000-0000-4000-8000-000000000003', sha256('tiny-token-3'::bytea), 'tiny0003', 'labs',    'admin-token', '2024-03-03T00:00:00Z', NULL,                   '12000000-0000-4000-8000-000000000001'),
 ('71000000-0000-4000-8000-000000000004', sha256('tiny-token-4'::bytea), 'tiny0004', 'loose',   'admin-token', '2024-03-04T00:00:00Z', NULL,                   NULL);
INSERT INTO org_plugin_allowlist (id, org_id, plugin_name, enabled_by, enabled_at) VALUES
 ('e1000000-0000-4000-8000-000000000001', '11000000-0000-4000-8000-000000000001', 'github', 'alice', '2024-01-10T00:00:00Z'),
 ('e1000000-0000-4000-8000-000000000002', '12000000-0000-4000-8000-000000000001', 'github', 'bob',   '2024-03-05T00:00:00Z'),
 ('e1000000-0000-4000-8000-000000000003', '12000000-0000-4000-8000-000000000001', 'slack',  'bob',   '2024-03-06T00:00:00Z');
INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES
 ('11000000-0000-4000-8000-000000000002', 'OPENAI_API_KEY', 'sk-sample-not-a-real-key'::bytea, 0);
SQL
psql_db postgres -c "CREATE DATABASE tmpl_sample TEMPLATE orgctl_dev STRATEGY FILE_COPY" >/dev/null
declare -A DESC
for s in "${SHAPES[@]}"; do
  psql_db "tmpl_$s" -c "VACUUM ANALYZE" >/dev/null
  counts=$(psql_db "tmpl_$s" -F' ' -c "SELECT (SELECT count(*) FROM workspaces), (SELECT count(*) FROM workspaces WHERE parent_id IS NULL),
      (SELECT count(*) FROM org_api_tokens), (SELECT count(*) FROM org_plugin_allowlist),
      (SELECT count(*) FROM workspace_secrets) + (SELECT count(*) FROM global_secrets),
      (SELECT count(*) FROM rescue_bundles), (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r')")
  read -r w r t a sec rb tabs <<<"$counts"
  DESC[$s]="$((w + t + a + sec + rb)) rows: $w workspaces ($r roots), $t tokens, $a allowlist, $sec secrets, $rb other; $tabs tables"
  echo "shape:   $s — ${DESC[$s]}"
done

# The hand-written install: the statements orgctl plans for a tenant with no agent yet:
# the agent upsert, MODEL secret, allowlist merge keeping the earliest enabled_at, both anchors
# moved, every root re-parented — the removed one too) in one transaction under the tenant
# advisory lock (0x6f726763, 1). The MODEL secret is stored as orgctl stores it without
# SECRETS_ENCRYPTION_KEY outside production (encryption_version 0).
SQLF=$WORK/install.sql
cat >"$SQLF" <<'SQL'
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

# --- The proxy's round trip ------------------------------------------------------------------------
selects() { # url count -> seconds for one psql session running COUNT `SELECT 1`s
  local t0 t1
  t0=$EPOCHREALTIME
  printf 'SELECT 1;\n%.0s' $(seq "$2") | "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -d "$1" >/dev/null
  t1=$EPOCHREALTIME
  calc "$t1 - $t0"
}
rtt_of() { # url -> "per-query-ms connect-ms" (medians of 5)
  local i a b q=() c=()
  for i in 1 2 3 4 5; do
    a=$(selects "$1" 1); b=$(selects "$1" 21)
    q+=("$(calc "($b - $a) / 20 * 1000")"); c+=("$(calc "$a * 1000")")
  done
  echo "$(median "${q[@]}") $(median "${c[@]}")"
}
# The proxy waits HALF ms per chunk each way; its wake-ups add a little on top, so the round trip
# it adds is measured (psql: 20 more `SELECT 1`s in one session, through it vs direct; median of
# five) and HALF corrected once if that is more than 3% off RTT_MS.
HALF=$(calc "$RTT_MS / 2")
read -r q_direct c_direct <<<"$(rtt_of "$(url_for direct postgres)")"
start_proxy proxy "$HALF"; PPORT=$PROXY_PORT
read -r q_proxy c_proxy <<<"$(rtt_of "$(url_for proxy postgres)")"
ADDED_RTT=$(calc "$q_proxy - $q_direct")
first=""
if [ "$(awk -v a="$ADDED_RTT" -v t="$RTT_MS" 'BEGIN { print (a > t * 1.03 || a < t * 0.97) }')" = 1 ]; then
  first=$(printf ' (a first try waiting %.2f ms each way added %.2f ms)' "$HALF" "$ADDED_RTT")
  HALF=$(calc "$HALF - ($ADDED_RTT - $RTT_MS) / 2")
  stop_proxy "$PROXY_PID"
  start_proxy proxy "$HALF"; PPORT=$PROXY_PORT
  read -r q_proxy c_proxy <<<"$(rtt_of "$(url_for proxy postgres)")"
  ADDED_RTT=$(calc "$q_proxy - $q_direct")
fi
printf 'proxy:   127.0.0.1:%s -> :%s, waits %.2f ms per chunk each way%s\n' "$PPORT" "$PORT" "$HALF" "$first"
printf 'rtt:     SELECT 1 takes %.2f ms direct, %.2f ms proxied: +%.2f ms per round trip (target %s); a psql session with one query %.1f ms direct, %.1f ms proxied\n' \
  "$q_direct" "$q_proxy" "$ADDED_RTT" "$RTT_MS" "$c_direct" "$c_proxy"

# --- Fleets, variants, verification ----------------------------------------------------------
make_fleet() { # shape lat variant n -> $WORK/fleet/<variant>.{tenants,urls,dbs}
  local shape=$1 lat=$2 v=$3 n=$4 i db f=$WORK/fleet/$3
  mkdir -p "$WORK/fleet"; : >"$f.tenants"; : >"$f.urls"; : >"$f.dbs"
  for i in $(seq -w 1 "$n"); do
    db=${shape:0:1}${lat:0:1}_${v}_$i
    echo "CREATE DATABASE $db TEMPLATE tmpl_$shape STRATEGY FILE_COPY;"
    echo "$db" >>"$f.dbs"
    echo "$v-$i $(url_for "$lat" "$db")" >>"$f.tenants"
    url_for "$lat" "$db" >>"$f.urls"
  done | psql_db postgres >/dev/null
}
drop_fleet() { # variant
  sed 's/.*/DROP DATABASE &;/' "$WORK/fleet/$1.dbs" | psql_db postgres >/dev/null
}
verify_fleet() { # variant n: every tenant has exactly one root, and it is the platform agent
  local v=$1 n=$2 good db
  local sel="SELECT count(*) FILTER (WHERE parent_id IS NULL), count(*) FILTER (WHERE parent_id IS NULL AND kind = 'platform') FROM workspaces;"
  good=$(while read -r db; do printf '\\c %s\n%s\n' "$db" "$sel"; done <"$WORK/fleet/$v.dbs" \
           | psql_db postgres -F' ' | grep -cx '1 1' || true)
  [ "$good" = "$n" ] || { say "$v: only $good of $n tenants ended with exactly one root, the agent"; exit 1; }
}
applied_in() { # report -> tenants applied
  python3 - "$1" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
try:
    print(json.loads(text)["totals"]["applied"])
except (ValueError, KeyError):  # JSON Lines: one tenant per line
    print(sum(1 for l in text.splitlines() if l.strip() and json.loads(l).get("status") == "applied"))
PY
}

declare -A RATE SLOT SRV CLI RL RX
run_variant() { # shape lat variant n
  local shape=$1 lat=$2 v=$3 n=$4 f=$WORK/fleet/$3 s0 s1 c0 t0 t1 secs k slots=1
  psql_db postgres -c CHECKPOINT >/dev/null
  wait_idle
  s0=$(server_ticks)
  client_ticks; c0=$CT
  t0=$EPOCHREALTIME
  case $v in
    loop)
      while read -r _ url; do
        "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$url" -f "$SQLF" >/dev/null
      done <"$f.tenants" ;;
    xargs)
      slots=8
      xargs -P8 -I{} -a "$f.urls" "$PSQL" -X -q -v ON_ERROR_STOP=1 -d {} -f "$SQLF" >/dev/null ;;
    c*)
      slots=${v#c}
      "$BIN" -q backfill run --tenants "$f.tenants" --concurrency "$slots" --model claude --yes \
        --report "$f.json" >/dev/null 2>"$f.err" || { cat "$f.err" >&2; exit 1; } ;;
  esac
  t1=$EPOCHREALTIME
  client_ticks
  wait_idle
  s1=$(server_ticks)
  secs=$(calc "$t1 - $t0")
  [ "$slots" -gt "$n" ] && slots=$n
  k="$shape/$lat/$v"
  RATE[$k]+="$(calc "$n / $secs") "
  SLOT[$k]+="$(calc "$secs * 1000 * $slots / $n") "
  SRV[$k]+="$(calc "($s1 - $s0) * 1000 / $CLK / $n") "
  CLI[$k]+="$(calc "($CT - $c0) * 1000 / $CLK / $n") "
  if [ "$v" != loop ] && [ "$v" != xargs ]; then
    local ap; ap=$(applied_in "$f.json")
    [ "$ap" = "$n" ] || { say "$v: orgctl's report says $ap of $n tenants applied"; exit 1; }
  fi
  verify_fleet "$v" "$n"
}
last() { local a=($1); echo "${a[-1]}"; }

nv=${#VARIANTS[@]}
block=0
for r in $(seq 1 "$ROUNDS"); do
  for shape in "${SHAPES[@]}"; do
    for lat in "${LATS[@]}"; do
      n=$N; [ "$lat" = proxy ] && n=$N_PROXY
      off=$(( (r - 1 + block) % nv )); block=$(( block + 1 ))
      order=("${VARIANTS[@]:off}" "${VARIANTS[@]:0:off}")
      for v in "${VARIANTS[@]}"; do make_fleet "$shape" "$lat" "$v" "$n"; done
      line="round $r/$ROUNDS $shape $lat ($n tenants):"
      for v in "${order[@]}"; do
        run_variant "$shape" "$lat" "$v" "$n"
        line+=" $v $(printf '%.1f' "$(last "${RATE[$shape/$lat/$v]}")")/s"
      done
      k="$shape/$lat"
      RL[$k]+="$(calc "$(last "${RATE[$k/c8]}") / $(last "${RATE[$k/loop]}")") "
      RX[$k]+="$(calc "$(last "${RATE[$k/c8]}") / $(last "${RATE[$k/xargs]}")") "
      for v in "${VARIANTS[@]}"; do drop_fleet "$v"; done
      say "$line"
    done
  done
done

# --- Statements and round trips per fresh tenant (untimed) --------------------------------------
start_proxy counter "$HALF" --stats "$WORK/conns.jsonl"
CPORT=$PROXY_PORT
declare -A STMTS TURNS CONNS SENDS STMT_LIST
for shape in "${SHAPES[@]}"; do
  for who in orgctl psql; do
    db=q_${shape}_$who
    psql_db postgres -c "CREATE DATABASE $db TEMPLATE tmpl_$shape STRATEGY FILE_COPY" \
                     -c "ALTER DATABASE $db SET log_statement = 'all'" >/dev/null
    url="postgres://postgres@127.0.0.1:$CPORT/$db"
    : >"$WORK/conns.jsonl"
    off=$(stat -c %s "$LOG")
    if [ "$who" = orgctl ]; then
      echo "t $url" >"$WORK/one.tenants"
      "$BIN" -q backfill run --tenants "$WORK/one.tenants" --concurrency 1 --model claude --yes \
        --report "$WORK/one.json" >/dev/null 2>"$WORK/one.err" || { cat "$WORK/one.err" >&2; exit 1; }
      [ "$(applied_in "$WORK/one.json")" = 1 ] || { say "counting run: orgctl did not apply"; exit 1; }
    else
      "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$url" -f "$SQLF" >/dev/null
    fi
    wait_idle; sleep 0.3            # the proxy writes a connection's line once both sides closed
    k="$shape/$who"
    tail -c +$((off + 1)) "$LOG" >"$WORK/stmts.log"
    STMTS[$k]=$(grep -cE '\] LOG:  (statement|execute [^:]*): ' "$WORK/stmts.log" || true)
    if [ "$SHOW_STATEMENTS" = 1 ] && [ "$who" = orgctl ]; then
      STMT_LIST[$shape]=$(grep -E '\] LOG:  (statement|execute [^:]*): ' "$WORK/stmts.log" \
        | sed -E 's/.*\] LOG:  //' | cut -c1-110 | nl -w3 -s'  ')
    fi
    read -r CONNS[$k] TURNS[$k] SENDS[$k] < <(python3 - "$WORK/conns.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(len(rows), sum(r["turns"] for r in rows), sum(r["c2s_chunks"] for r in rows))
PY
)
    psql_db postgres -c "DROP DATABASE $db" >/dev/null
  done
done

# --- Report ------------------------------------------------------------------------------------
label() {
  case $1 in
    loop) echo "psql loop (sequential)" ;; xargs) echo "psql xargs -P8" ;;
    c*) echo "orgctl --concurrency ${1#c}" ;;
  esac
}
for shape in "${SHAPES[@]}"; do
  for lat in "${LATS[@]}"; do
    n=$N; lname="direct (loopback)"
    [ "$lat" = proxy ] && { n=$N_PROXY; lname="through the proxy (+$(printf '%.1f' "$ADDED_RTT") ms round trip)"; }
    k="$shape/$lat"
    printf '\n%s org, %s, %s tenants per variant, median of %s rounds [min-max]\n' "$shape" "$lname" "$n" "$ROUNDS"
    printf '%-26s %22s %13s %11s %11s %9s %9s\n' variant "tenants/s" "ms/tenant/slot" "server CPU" "client CPU" "vs loop" "vs xargs"
    printf '%-26s %22s %13s %11s %11s %9s %9s\n' "" "" "" "ms/tenant" "ms/tenant" "" ""
    ml=$(median ${RATE[$k/loop]}); mx=$(median ${RATE[$k/xargs]})
    for v in "${VARIANTS[@]}"; do
      m=$(median ${RATE[$k/$v]})
      printf '%-26s %8.1f %13s %13.1f %11.2f %11.2f %8.2fx %8.2fx\n' "$(label "$v")" "$m" \
        "[$(minmax '%.1f' ${RATE[$k/$v]})]" "$(median ${SLOT[$k/$v]})" "$(median ${SRV[$k/$v]})" \
        "$(median ${CLI[$k/$v]})" "$(calc "$m / $ml")" "$(calc "$m / $mx")"
    done
  done
done

printf '\nper fresh tenant (untimed; log_statement on its database alone, through a counting proxy)\n'
printf '%-8s %-8s %11s %12s %12s %13s\n' shape client statements connections "round trips" "client sends"
for shape in "${SHAPES[@]}"; do
  for who in orgctl psql; do
    k="$shape/$who"
    printf '%-8s %-8s %11s %12s %12s %13s\n' "$shape" "$who" "${STMTS[$k]}" "${CONNS[$k]}" "${TURNS[$k]}" "${SENDS[$k]}"
  done
done
echo "(round trips: times the client sent after having received, including the connection's setup and its final Terminate; client sends: chunks the proxy read from the client)"
if [ "$SHOW_STATEMENTS" = 1 ]; then
  for shape in "${SHAPES[@]}"; do printf '\nstatements orgctl sent for one fresh %s tenant:\n%s\n' "$shape" "${STMT_LIST[$shape]}"; done
fi

met() { awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN { print ((op == ">=" ? a >= b : a <= b) ? "yes" : "NO") }'; }
printf '\n%-44s %10s %16s %8s %5s\n' "targets" figure "[per round]" target met
for shape in "${SHAPES[@]}"; do
  for lat in "${LATS[@]}"; do
    k="$shape/$lat"; ln=direct; [ "$lat" = proxy ] && ln="+$(printf '%.0f' "$ADDED_RTT") ms RTT"
    rl=$(calc "$(median ${RATE[$k/c8]}) / $(median ${RATE[$k/loop]})")
    rx=$(calc "$(median ${RATE[$k/c8]}) / $(median ${RATE[$k/xargs]})")
    want=2; [ "$lat" = proxy ] && want=6
    printf '%-44s %9.2fx %16s %8s %5s\n' "$shape $ln: orgctl c8 / psql loop" "$rl" "[$(minmax '%.2f' ${RL[$k]})]" ">= ${want}x" "$(met "$rl" "$want" '>=')"
    if [ "$lat" = direct ]; then
      printf '%-44s %9.2fx %16s %8s %5s\n' "$shape $ln: orgctl c8 / psql xargs -P8" "$rx" "[$(minmax '%.2f' ${RX[$k]})]" ">= 1.0x" "$(met "$rx" 1 '>=')"
    else
      printf '%-44s %9.2fx %16s %8s %5s\n' "$shape $ln: orgctl c8 / psql xargs -P8" "$rx" "[$(minmax '%.2f' ${RX[$k]})]" "-" "-"
    fi
  done
  printf '%-44s %10s %16s %8s %5s\n' "$shape: statements per fresh tenant (orgctl)" "${STMTS[$shape/orgctl]}" "(psql ${STMTS[$shape/psql]})" "<= 12" "$(met "${STMTS[$shape/orgctl]}" 12 '<=')"
  printf '%-44s %10s %16s %8s %5s\n' "$shape: round trips per fresh tenant (orgctl)" "${TURNS[$shape/orgctl]}" "(psql ${TURNS[$shape/psql]})" "-" "-"
done
echo "(run took $(printf '%.0f' "$(calc "$EPOCHREALTIME - $START")") s; load at the end $(cut -d' ' -f1-3 /proc/loadavg))"
