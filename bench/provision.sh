#!/usr/bin/env bash
# Bringing the agent to life: backfill throughput with --provision against without,
# and the time from a tenant's commit to its agent being `online`, against a loopback stand-in
# of the platform API — side by side, medians of rounds, on one throwaway local server.
#
#   cargo build && bench/provision.sh                       # N=30 tenants, 3 rounds, debug build
#   ORGCTL=target/release/orgctl N=100 bench/provision.sh   # a release build
#
# The stand-in (python3, 127.0.0.1 only) serves every tenant from one port: a tenant's platform
# URL is http://127.0.0.1:PORT/t/DBNAME. On POST …/admin/org/platform-agent/ensure (the
# platform's own provisioning route) it answers 200 `{"status":"repaired",…,"provisioning":true}`
# and, after DELAY seconds (default 0.5), sets the tenant's platform agent `online`, the way the
# platform's registration does. Variants, each on its own N fresh copies of the sample org:
#   plain      backfill run                              (no platform call)
#   provision  backfill run --provision                  (one ensure POST per tenant after its commit)
#   wait       backfill run --provision --wait 60s       (and watch each agent until online)
# The figures are wall-clock tenants/second, and for `wait` the median waited_ms of the
# tenants (commit → online as orgctl sees it: DELAY plus up to one poll interval, 1s).
set -euo pipefail
# A new agent's id is the platform's for the org id (exit 2 without one): a fixed bench org.
export MOLECULE_ORG_ID="${MOLECULE_ORG_ID:-bench-org}"
cd "$(dirname "$0")/.."
. bench/machine.sh

N=${N:-30}
ROUNDS=${ROUNDS:-3}
DELAY=${DELAY:-0.5}
CONC=${CONC:-4}
BIN=${ORGCTL:-target/debug/orgctl}
[ -x "$BIN" ] || { echo "build first: cargo build" >&2; exit 1; }
machine_header "$BIN"
WORK=$(mktemp -d /tmp/orgctl-bench-provision.XXXXXX)
chmod 755 "$WORK"
URL=$("$BIN" dev up --dir "$WORK/pg")
STANDIN_PID=
cleanup() {
  [ -n "$STANDIN_PID" ] && kill "$STANDIN_PID" 2>/dev/null || true
  "$BIN" dev down --dir "$WORK/pg" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
BASE=${URL%/*}                      # postgres://postgres@127.0.0.1:PORT
psql_db() { psql -X -q -v ON_ERROR_STOP=1 -At -d "$BASE/$1"; }

cat >"$WORK/standin.py" <<'PY'
import http.server, re, subprocess, sys, threading, time
base, delay = sys.argv[1], float(sys.argv[2])
PATH = re.compile(r"^/t/([a-z0-9_]+)/admin/org/platform-agent/ensure$")
def later(db):
    time.sleep(delay)
    subprocess.run(["psql", "-X", "-q", "-d", f"{base}/{db}", "-c",
        "UPDATE workspaces SET status = 'online', updated_at = clock_timestamp() WHERE kind = 'platform'"],
        check=False, stdout=subprocess.DEVNULL)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        m = PATH.match(self.path)
        if not m:
            self.send_response(404); self.end_headers(); return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"status":"repaired","kind":"platform","agent_status":"offline","provisioning":true}'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
        threading.Thread(target=later, args=m.groups(), daemon=True).start()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
python3 "$WORK/standin.py" "$BASE" "$DELAY" >"$WORK/standin.port" &
STANDIN_PID=$!
for _ in $(seq 50); do [ -s "$WORK/standin.port" ] && break; sleep 0.1; done
PORT=$(cat "$WORK/standin.port")

echo "server: ${BASE#*@}, stand-in :$PORT (delay ${DELAY}s), $N tenants, concurrency $CONC, $ROUNDS round(s), $(nproc) CPU(s)" >&2
psql_db postgres <<<"CREATE DATABASE bench_tmpl TEMPLATE orgctl_dev" >/dev/null

make_fleet() { # name -> tenants file (each line with its platform URL)
  local name=$1 file="$WORK/$1.tenants"
  : >"$file"
  for i in $(seq -w 1 "$N"); do
    echo "CREATE DATABASE ${name}_$i TEMPLATE bench_tmpl STRATEGY FILE_COPY;"
    echo "$name-$i $BASE/${name}_$i http://127.0.0.1:$PORT/t/${name}_$i" >>"$file"
  done | psql_db postgres >/dev/null
  echo "$file"
}
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A SECS
WAITED=()
for r in $(seq "$ROUNDS"); do
  for v in plain provision wait; do
    fleet=$(make_fleet "${v}_r$r")
    extra=()
    [ "$v" = provision ] && extra=(--provision)
    [ "$v" = wait ] && extra=(--provision --wait 60s)
    s=$(now)
    MOLECULE_ADMIN_TOKEN=bench-token "$BIN" -q backfill run --tenants "$fleet" --concurrency "$CONC" \
      --model claude --yes --report "$WORK/$v-$r.json" "${extra[@]}" >/dev/null
    e=$(now)
    SECS[$v]+="$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f", e-s}') "
    grep -q "\"applied\": $N," "$WORK/$v-$r.json" || { echo "$v: not every tenant applied" >&2; exit 1; }
    if [ "$v" = wait ]; then
      WAITED+=($(grep -o '"waited_ms": [0-9]*' "$WORK/$v-$r.json" | awk '{print $2}'))
      online=$(grep -c '"final_status": "online"' "$WORK/$v-$r.json" || true)
      [ "$online" = "$N" ] || { echo "wait: $online of $N agents online" >&2; exit 1; }
    fi
  done
done

printf '%-44s %9s %10s %9s\n' variant "median s" tenants/s "vs plain"
plain=$(tr ' ' '\n' <<<"${SECS[plain]}" | grep . | median)
for v in plain provision wait; do
  m=$(tr ' ' '\n' <<<"${SECS[$v]}" | grep . | median)
  label="backfill run"
  [ "$v" = provision ] && label="backfill run --provision"
  [ "$v" = wait ] && label="backfill run --provision --wait 60s"
  printf '%-44s %9.2f %10.1f %9s\n' "$label" "$m" "$(awk -v n="$N" -v m="$m" 'BEGIN{print n/m}')" \
    "$(awk -v a="$m" -v b="$plain" 'BEGIN{printf "%.2fx", a/b}')"
done
printf 'commit → online (waited_ms over %d agents): median %s ms, max %s ms\n' "${#WAITED[@]}" \
  "$(printf '%s\n' "${WAITED[@]}" | median)" "$(printf '%s\n' "${WAITED[@]}" | sort -g | tail -1)"
