#!/usr/bin/env bash
# Benchmark: notary cache hits with the PostgreSQL store vs SQLite, one
# `homeport serve` instance vs two behind nginx, in the same run, with wrk.
#
#   bash bench/scaling.sh
#
# In one run, on loopback only (127.0.0.250-254 and the lab's addresses),
# nothing leaves the machine and nothing is looked up in the system resolver:
#   1. cargo build --release -p homeport (target/release/homeport);
#   2. `homeport lab --serve`: its DNS server, CA and lab domains are the
#      origin key servers; the first lab name (wk-srv.lab, else the others it
#      prints) whose keys the notary fetches is the one queried;
#   3. a throwaway PostgreSQL cluster (the highest /usr/lib/postgresql/*/bin;
#      initdb and postgres as the `postgres` OS user) on 127.0.0.254:55432,
#      fsync on, scram-sha-256 over TCP, a role and a database homeport_bench;
#   4. homeport serve, notary on, one plain listener each on port 8008 with
#      x_forwarded (trusted_proxies 127.0.0.0/8: nginx and wrk), resources
#      federation + metrics, log level warn, one signing key for all:
#        S1 127.0.0.250, SQLite store (a WAL file in the work dir);
#        P1 127.0.0.251 and P2 127.0.0.252, the PostgreSQL database;
#   5. nginx (Debian nginx-light) on 127.0.0.253, one worker, access log off,
#      upstreams with keepalive 64 (HTTP/1.1, Connection ""), the client's
#      X-Forwarded-For passed through unchanged:
#        :8081 sqlite_one = {S1}, :8082 one = {P1}, :8083 two = {P1, P2};
#   6. warm-up: one notary POST per instance (S1 and P1 fetch from the lab,
#      P2 finds P1's row in PostgreSQL), then one through each nginx port, so
#      that every row measures cache hits (the notary refetches only after
#      half the answer's validity, 12 h for the lab's keys);
#   7. wrk --latency (keep-alive; 2 threads, 50 connections, 10 s by default)
#      with bench/notary.lua, an X-Forwarded-For pool so that the notary's
#      per-client limit (600 a minute) stays out of the way; wrk on one CPU
#      and every server (homeport, postgres, nginx) on the other (taskset).
#      Rows, interleaved over the rounds: SQLite 1 instance direct, SQLite 1
#      via nginx, PostgreSQL 1 direct, PostgreSQL 1 via nginx, PostgreSQL 2
#      via nginx. For each: requests/s, p50/p99, non-2xx, the CPU time of
#      homeport, postgres, nginx and wrk, and the notary hits per instance;
#   8. a markdown table with the machine, the versions and the ratios
#      PostgreSQL/SQLite, nginx/direct and two/one instances.
#
# The script fails when the set-up fails, and (after printing the table) when
# any row had a non-2xx answer: then the rows did not all measure cache hits.
# The results also go to target/bench/scaling.md (BENCH_OUT=FILE elsewhere).
#
# Environment:
#   BENCH_DURATION=10s    wrk -d per row
#   BENCH_THREADS=2       wrk -t
#   BENCH_CONNECTIONS=50  wrk -c
#   BENCH_PIN=1           taskset: wrk on CPU 0, servers on CPU 1 (0: no pinning)
#   BENCH_NICE=-10        nice value of everything benchmarked (0: leave it)
#   BENCH_ROUNDS=2        run every row this many times, interleaved; the table
#                         shows the best round of each (least disturbed)
#   BENCH_QUIET_WAIT=60   seconds, over the whole run, that the rows may wait
#                         for the machine to be nearly idle (at most 10 s per
#                         row; 0: never wait)
#   BENCH_XFF_POOL=6000   X-Forwarded-For addresses per wrk run (bench/notary.lua;
#                         keep it under 10000)
#   BENCH_PG_POOL=10:10   homeport's PostgreSQL pool per instance, cp_min:cp_max
#                         (homeport's default is 5:10; cp_min = cp_max opens
#                         every connection at start, none during a row)
#   BENCH_SKIP_BUILD=1    use target/release/homeport as it is
#   HOMEPORT_BIN=PATH     benchmark this binary (implies BENCH_SKIP_BUILD)
#   HOMEPORT_INTEROP_KEEP=1  keep the work directory (configs, logs, wrk output)
#
# Needs root (apt-get, the postgres OS user), python3, curl, taskset, setpriv
# and runuser (util-linux), PostgreSQL's server binaries (Debian's
# postgresql); installs wrk and nginx-light when missing.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=../interop/lib/common.sh
source "$root/interop/lib/common.sh"

DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNECTIONS:-50}
PIN=${BENCH_PIN:-1}
NICE=${BENCH_NICE:--10}
ROUNDS=${BENCH_ROUNDS:-2}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
# shellcheck source=lib.sh
source "$here/lib.sh"
XFF_POOL=${BENCH_XFF_POOL:-6000}
PG_POOL=${BENCH_PG_POOL:-10:10}
OUT=${BENCH_OUT:-$root/target/bench/scaling.md}
CP_MIN=${PG_POOL%%:*} CP_MAX=${PG_POOL##*:}
if ! [[ "$CP_MIN" =~ ^[0-9]+$ && "$CP_MAX" =~ ^[0-9]+$ ]] || ((CP_MIN > CP_MAX || CP_MAX < 1)); then
  echo "BENCH_PG_POOL must be MIN:MAX with 0 <= MIN <= MAX, MAX >= 1" >&2
  exit 2
fi
# Two instances' pools, psql and the reserved superuser slots must fit.
PG_MAX_CONN=$((2 * CP_MAX + 20 > 100 ? 2 * CP_MAX + 20 : 100))
if ! [[ "$XFF_POOL" =~ ^[0-9]+$ ]] || ((XFF_POOL < 1 || XFF_POOL > 9999)); then
  echo "BENCH_XFF_POOL must be in 1..9999" >&2
  exit 2
fi

# 127.0.0.250-254: next_loopback() (the lab, the test suites) stays in
# 127.0.0.10-249, bench/serve.sh uses 127.0.0.170-172.
S1_IP=127.0.0.250 P1_IP=127.0.0.251 P2_IP=127.0.0.252
NGX_IP=127.0.0.253 PG_IP=127.0.0.254
HP_PORT=8008 PG_PORT=55432
NGX_SQLITE_ONE=8081 NGX_ONE=8082 NGX_TWO=8083
NOTARY_NAME=notary.bench
PG_DB=homeport_bench PG_USER=homeport_bench

bench_start=$SECONDS

# ---- tools -------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
((EUID == 0)) || die "run as root (apt-get, postgres as the postgres OS user)"
apt_ensure wrk:wrk nginx:nginx-light
pg_bin_dir() { # the highest /usr/lib/postgresql/VERSION/bin with the server programs
  local d
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [[ -x "$d/initdb" && -x "$d/postgres" && -x "$d/psql" ]] && { printf '%s\n' "$d"; return 0; }
  done
  return 1
}
pg_bin_dir >/dev/null || apt_install postgresql # initdb and postgres are not on PATH
PG_BIN=$(pg_bin_dir) || die "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin"
id postgres >/dev/null 2>&1 || die "no postgres OS user (Debian's postgresql package creates it)"
for c in curl python3 taskset setpriv runuser ss; do
  command -v "$c" >/dev/null 2>&1 || die "$c is missing"
done
# The caller's PGHOST, PGPORT, ... would redirect psql.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^PG' || true)

ncpu=$(nproc)
if [[ "$PIN" == 1 ]] && ((ncpu < 2)); then
  log "one CPU only: no pinning"
  PIN=0
fi
if [[ "$PIN" == 1 ]]; then
  CLIENT_CPU=0 SERVER_CPU=1
  PIN_SERVER=(taskset -c "$SERVER_CPU")
  PIN_CLIENT=(taskset -c "$CLIENT_CPU")
else
  PIN_SERVER=()
  PIN_CLIENT=()
fi

# Nothing may be listening on our addresses already (another run?).
for a in "$S1_IP:$HP_PORT" "$P1_IP:$HP_PORT" "$P2_IP:$HP_PORT" "$PG_IP:$PG_PORT" \
  "$NGX_IP:$NGX_SQLITE_ONE" "$NGX_IP:$NGX_ONE" "$NGX_IP:$NGX_TWO"; do
  if ss -Hltn "( sport = :${a##*:} )" 2>/dev/null | awk '{print $4}' | grep -qx -e "$a" -e "0.0.0.0:${a##*:}" -e "\*:${a##*:}"; then
    die "$a is already in use (another benchmark running?)"
  fi
done

# ---- 1. build ------------------------------------------------------------------
if [[ -n "${HOMEPORT_BIN:-}" ]]; then
  [[ -x "$HOMEPORT_BIN" ]] || die "HOMEPORT_BIN=$HOMEPORT_BIN is not executable"
elif [[ "${BENCH_SKIP_BUILD:-0}" == 1 ]]; then
  HOMEPORT_BIN="$root/target/release/homeport"
  [[ -x "$HOMEPORT_BIN" ]] || die "no $HOMEPORT_BIN (BENCH_SKIP_BUILD=1)"
else
  log "cargo build --release -p homeport"
  (cd "$root" && cargo build --release -p homeport) >&2 ||
    die "cargo build --release -p homeport failed"
  HOMEPORT_BIN="$root/target/release/homeport"
fi
export HOMEPORT_BIN
setup_start=$SECONDS
if [[ "$NICE" != 0 ]]; then
  renice -n "$NICE" -p "$$" >/dev/null || die "renice $NICE"
fi

make_workdir bench-scaling WORK
chmod 755 "$WORK" # postgres (its own user) and nginx's workers reach below it
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS"
CURL=(curl -sS --noproxy '*' --max-time 30)

# ---- 2. the lab: origin key servers, DNS, CA ----------------------------------------
mkdir -p "$WORK/lab"
NO_COLOR=1 "$HOMEPORT_BIN" lab --serve >"$WORK/lab/lab.out" 2>"$WORK/lab/lab.err" &
LAB_PID=$!
register_pid "$LAB_PID" lab
log "started homeport lab --serve (pid $LAB_PID, output $WORK/lab/lab.out)"
for _ in $(seq 1 400); do
  (($(wc -l <"$WORK/lab/lab.out") >= 3)) && break
  kill -0 "$LAB_PID" 2>/dev/null || { sed 's/^/    /' "$WORK/lab/lab.err" >&2; die "homeport lab --serve exited early"; }
  sleep 0.05
done
word() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -n 1; }
lab_first=$(sed -n 1p "$WORK/lab/lab.out")
lab_ports=$(sed -n 2p "$WORK/lab/lab.out")
LAB_DNS=$(word dns "$lab_first")
LAB_CA=$(word ca "$lab_first")
LAB_WK=$(word well_known_port "$lab_ports")
LAB_DEF=$(word default_port "$lab_ports")
[[ -n "$LAB_DNS" && -n "$LAB_CA" && -n "$LAB_WK" && -n "$LAB_DEF" ]] ||
  die "cannot parse the lab's first two lines: '$lab_first' / '$lab_ports'"
[[ "${LAB_DNS%:*}" == 127.* ]] || die "the lab's DNS $LAB_DNS is not on 127.0.0.0/8"
mapfile -t LAB_NAMES < <(sed -n '3,$p' "$WORK/lab/lab.out")
log "lab: dns=$LAB_DNS ca=$LAB_CA well_known_port=$LAB_WK default_port=$LAB_DEF, ${#LAB_NAMES[@]} names"

# ---- 3. PostgreSQL -------------------------------------------------------------------
PG_DIR="$WORK/pg"
mkdir -p "$PG_DIR/sock"
chown postgres: "$PG_DIR" "$PG_DIR/sock"
chmod 755 "$PG_DIR"
PG_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
as_pg() { (cd "$PG_DIR" && runuser -u postgres -- "$@"); }
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -E UTF8 --no-locale \
  --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 ||
  { sed 's/^/    /' "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
cat >>"$PG_DIR/data/postgresql.conf" <<EOF

# bench/scaling.sh
listen_addresses = '$PG_IP'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/sock'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = $PG_MAX_CONN
password_encryption = 'scram-sha-256'
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
# setpriv execs postgres itself: the registered PID is the postmaster's, and
# the SIGTERM at exit is its smart shutdown (homeport is stopped before).
start_bg postgres "${PIN_SERVER[@]}" setpriv --reuid=postgres --regid=postgres --init-groups -- \
  "$PG_BIN/postgres" -D "$PG_DIR/data"
PG_PID=$INTEROP_LAST_PID
psql_pg() { as_pg "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$PG_DIR/sock" -p "$PG_PORT" -U postgres "$@"; }
pg_up=0
for _ in $(seq 1 200); do
  kill -0 "$PG_PID" 2>/dev/null || { show_log postgres; die "postgres exited"; }
  if psql_pg -d postgres -c 'select 1' >/dev/null 2>&1; then pg_up=1; break; fi
  sleep 0.1
done
((pg_up == 1)) || { show_log postgres; die "postgres does not answer on $PG_DIR/sock"; }
psql_pg -d postgres -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'" >/dev/null ||
  die "cannot create the role $PG_USER"
psql_pg -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'" >/dev/null ||
  die "cannot create the database $PG_DB"
PG_VERSION=$(psql_pg -d postgres -c 'show server_version' | awk '{ print $1 }')
[[ "$(psql_pg -d postgres -c 'show fsync')" == on ]] || die "fsync is not on"
log "PostgreSQL $PG_VERSION on $PG_IP:$PG_PORT (pid $PG_PID), database $PG_DB"

# ---- 4. homeport serve: S1 (SQLite), P1 and P2 (PostgreSQL) ----------------------------
mkdir -p "$WORK/hp"
"$HOMEPORT_BIN" keygen -o "$WORK/hp/notary.signing.key" >/dev/null 2>&1 || die "homeport keygen failed"
NOTARY_KID=$(awk 'NR == 1 { print $1 ":" $2 }' "$WORK/hp/notary.signing.key")
write_config() { # write_config NAME IP DATABASE-YAML
  local name=$1 ip=$2 db=$3
  mkdir -p "$WORK/hp/$name"
  cat >"$WORK/hp/$name/homeport.yaml" <<EOF
# bench/scaling.sh: instance $name
server_name: $NOTARY_NAME
signing_key_path: '$WORK/hp/notary.signing.key'
notary:
  enabled: true
dns: {nameservers: ['$LAB_DNS'], lab_well_known_port: $LAB_WK, lab_default_port: $LAB_DEF}
federation_custom_ca_list: ['$LAB_CA']
ip_range_whitelist: ['127.0.0.0/8']
# nginx ($NGX_IP) and, for the direct rows, wrk (127.0.0.1): their
# X-Forwarded-For (bench/notary.lua's pool) is the client address.
trusted_proxies: ['127.0.0.0/8']
$db
listeners:
  - port: $HP_PORT
    bind_addresses: ['$ip']
    tls: false
    x_forwarded: true
    resources: [{names: [federation, metrics]}]
log:
  level: warn
EOF
  if ! "$HOMEPORT_BIN" serve --config "$WORK/hp/$name/homeport.yaml" --check-config >"$WORK/hp/$name/check.log" 2>&1; then
    sed 's/^/    /' "$WORK/hp/$name/check.log" >&2
    die "homeport serve --check-config refused $name's config"
  fi
}
start_instance() { # start_instance NAME IP: sets INSTANCE_PID
  local name=$1 ip=$2
  start_bg "homeport-$name" "${PIN_SERVER[@]}" "$HOMEPORT_BIN" serve --config "$WORK/hp/$name/homeport.yaml"
  INSTANCE_PID=$INTEROP_LAST_PID
  wait_port "$ip" "$HP_PORT" 30 "$INSTANCE_PID" || { show_log "homeport-$name"; die "$name did not listen on $ip:$HP_PORT"; }
}
PG_YAML="database:
  name: psycopg2
  args: {user: $PG_USER, password: '$PG_PASSWORD', dbname: $PG_DB, host: '$PG_IP', port: $PG_PORT, cp_min: $CP_MIN, cp_max: $CP_MAX}"
write_config s1 "$S1_IP" "database:
  name: sqlite3
  args: {database: '$WORK/hp/s1/homeport.db'}"
write_config p1 "$P1_IP" "$PG_YAML"
write_config p2 "$P2_IP" "$PG_YAML"
start_instance s1 "$S1_IP"
S1_PID=$INSTANCE_PID
start_instance p1 "$P1_IP" # P1 creates the schema; P2 then finds it current
P1_PID=$INSTANCE_PID
start_instance p2 "$P2_IP"
P2_PID=$INSTANCE_PID
HP_PIDS=("$S1_PID" "$P1_PID" "$P2_PID")

# ---- 5. nginx ----------------------------------------------------------------------------
mkdir -p "$WORK/nginx"
nginx_user=nobody
id www-data >/dev/null 2>&1 && nginx_user=www-data
cat >"$WORK/nginx/nginx.conf" <<EOF
# bench/scaling.sh: one worker (every server shares one CPU when pinned),
# access log off, keep-alive to the clients and to the upstreams (no
# connection is closed mid-run), the client's X-Forwarded-For unchanged.
user $nginx_user;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_timeout 65;
    keepalive_requests 10000000;
    upstream sqlite_one {
        server $S1_IP:$HP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    upstream one {
        server $P1_IP:$HP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    upstream two {
        server $P1_IP:$HP_PORT;
        server $P2_IP:$HP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$http_x_forwarded_for;
    server {
        listen $NGX_IP:$NGX_SQLITE_ONE;
        location / { proxy_pass http://sqlite_one; }
    }
    server {
        listen $NGX_IP:$NGX_ONE;
        location / { proxy_pass http://one; }
    }
    server {
        listen $NGX_IP:$NGX_TWO;
        location / { proxy_pass http://two; }
    }
}
EOF
nginx -t -q -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx/" 2>"$WORK/nginx/t.log" ||
  { sed 's/^/    /' "$WORK/nginx/t.log" >&2; die "nginx -t refused $WORK/nginx/nginx.conf"; }
start_bg nginx "${PIN_SERVER[@]}" nginx -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
  -p "$WORK/nginx/" -g 'daemon off;'
NGX_PID=$INTEROP_LAST_PID
for p in "$NGX_SQLITE_ONE" "$NGX_ONE" "$NGX_TWO"; do
  wait_port "$NGX_IP" "$p" 20 "$NGX_PID" || { show_log nginx; die "nginx did not listen on $NGX_IP:$p"; }
done

# ---- 6. warm-up: the lab name, then one query per instance and per nginx port --------------
query_of() { printf '{"server_keys":{"%s":{}}}' "$1"; }
# notary_check URL NAME: 200 with exactly one server_keys entry, NAME's,
# countersigned by the notary's key.
notary_check() {
  local url=$1 name=$2 out="$WORK/notary.$RANDOM.json" code
  code=$("${CURL[@]}" -o "$out" -w '%{http_code}' -H 'Content-Type: application/json' \
    -X POST --data "$(query_of "$name")" "$url") || return 1
  [[ "$code" == 200 ]] || { log "$url: HTTP $code: $(head -c 300 "$out")"; return 1; }
  python3 - "$out" "$name" "$NOTARY_NAME" "$NOTARY_KID" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
keys = doc.get("server_keys", [])
if len(keys) != 1 or keys[0].get("server_name") != sys.argv[2]:
    sys.exit("not one entry for %s: %s" % (sys.argv[2], json.dumps(doc)[:300]))
if sys.argv[4] not in keys[0].get("signatures", {}).get(sys.argv[3], {}):
    sys.exit("no %s %s signature: %s" % (sys.argv[3], sys.argv[4], json.dumps(doc)[:300]))
EOF
}
# wk-srv.lab first (delegation through .well-known, then SRV), then srv.lab
# (SRV only), then whatever the lab lists. A name the notary cannot fetch is
# reported in the notes: when .well-known is involved, the likely cause is
# that the notary's client connects to 8448 instead of the lab's ports.
LAB_NAME="" LAB_SKIPPED=""
for n in wk-srv.lab srv.lab "${LAB_NAMES[@]}"; do
  if notary_check "http://$S1_IP:$HP_PORT/_matrix/key/v2/query" "$n" 2>>"$WORK/lab-names.log"; then
    LAB_NAME=$n
    break
  fi
  LAB_SKIPPED="${LAB_SKIPPED:+$LAB_SKIPPED, }$n"
  log "the notary cannot fetch $n's keys; trying the next lab name"
done
[[ -n "$LAB_NAME" ]] || { show_log homeport-s1; die "the notary fetched none of the lab names' keys"; }
log "lab name queried: $LAB_NAME"
QUERY=$(query_of "$LAB_NAME")
for u in "http://$P1_IP:$HP_PORT" "http://$P2_IP:$HP_PORT" "http://$S1_IP:$HP_PORT" \
  "http://$NGX_IP:$NGX_SQLITE_ONE" "http://$NGX_IP:$NGX_ONE" "http://$NGX_IP:$NGX_TWO" "http://$NGX_IP:$NGX_TWO"; do
  notary_check "$u/_matrix/key/v2/query" "$LAB_NAME" || die "notary query through $u failed"
done
PG_ROWS=$(PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -X -q -A -t -h "$PG_IP" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
  -c "select count(*) from server_keys where server_name = '$LAB_NAME'") || die "cannot read server_keys over TCP"
[[ "$PG_ROWS" == 1 ]] || die "server_keys has $PG_ROWS rows for $LAB_NAME in PostgreSQL"

metric() { # metric IP NAME{LABELS}: a counter from homeport's /metrics, 0 if absent
  "${CURL[@]}" "http://$1:$HP_PORT/metrics" | awk -v m="$2" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'
}
declare -A WARM_MISSES
for ip in "$S1_IP" "$P1_IP" "$P2_IP"; do
  WARM_MISSES[$ip]=$(metric "$ip" 'homeport_notary_requests_total{result="miss"}')
done
# The answer's size, and the same bytes from every instance (one signing key).
"${CURL[@]}" -o "$WORK/answer.s1.json" -H 'Content-Type: application/json' -X POST --data "$QUERY" \
  "http://$S1_IP:$HP_PORT/_matrix/key/v2/query"
ANSWER_SIZE=$("${CURL[@]}" -o "$WORK/answer.p1.json" -w '%{size_header}+%{size_download}' -H 'Content-Type: application/json' \
  -X POST --data "$QUERY" "http://$P1_IP:$HP_PORT/_matrix/key/v2/query")
"${CURL[@]}" -o "$WORK/answer.p2.json" -H 'Content-Type: application/json' -X POST --data "$QUERY" \
  "http://$P2_IP:$HP_PORT/_matrix/key/v2/query"
cmp -s "$WORK/answer.p1.json" "$WORK/answer.p2.json" || die "P1 and P2 answer different bytes"
SAME_BYTES=$(cmp -s "$WORK/answer.s1.json" "$WORK/answer.p1.json" && echo yes || echo no)
# Two seconds of load on each instance (not measured): every pooled
# connection in use once, the allocators and caches warm.
for ip in "$S1_IP" "$P1_IP" "$P2_IP"; do
  BENCH_BODY=$QUERY BENCH_XFF_POOL=$XFF_POOL "${PIN_CLIENT[@]}" wrk -t "$THREADS" -c "$CONNS" -d 2s \
    -s "$here/notary.lua" "http://$ip:$HP_PORT/_matrix/key/v2/query" >"$WORK/wrk-warm-$ip.txt" 2>&1 ||
    { cat "$WORK/wrk-warm-$ip.txt" >&2; die "wrk warm-up against $ip failed"; }
done
log "set-up done in $((SECONDS - setup_start))s"

# ---- measuring helpers --------------------------------------------------------------------------
children() { printf '%s\n' "$1"; ps -o pid= --ppid "$1" | tr -d ' '; }
pg_ticks() { # the postmaster, its live children and the children it reaped
  local s f t kids
  s=$(<"/proc/$PG_PID/stat")
  read -ra f <<<"${s##*) }"
  t=$((f[11] + f[12] + f[13] + f[14]))
  mapfile -t kids < <(ps -o pid= --ppid "$PG_PID" | tr -d ' ')
  printf '%s\n' $((t + $(cpu_ticks "${kids[@]}")))
}
# Non-200 answers counted by the instances (cumulative): route status count.
non200() {
  local ip
  for ip in "$S1_IP" "$P1_IP" "$P2_IP"; do
    "${CURL[@]}" "http://$ip:$HP_PORT/metrics" | awk -v i="$ip" -F'[{}]' \
      '/^homeport_http_requests_total\{/ && $2 !~ /status="200"/ { split($3, v, " "); if (v[1] > 0) print i, $2, v[1] }'
  done
}
pct() { awk -v d="$1" -v hz="$CLK_TCK" -v w="$2" 'BEGIN { printf "%.0f", 100 * d / hz / w }'; }


# run_row ID LABEL STORE INSTANCES PATH URL: one wrk run; appends a line to
# $WORK/rows.tsv: id label store instances path rps p50 p99 non2xx errors
# homeport% postgres% nginx% wrk% other% hits_s1 hits_p1 hits_p2 misses
ROWS="$WORK/rows.tsv"
: >"$ROWS"
run_row() {
  local id=$1 label=$2 store=$3 instances=$4 path=$5 url=$6 out
  wait_quiet
  out="$WORK/wrk-$id.txt"
  local ngx_pids ip
  mapfile -t ngx_pids < <(children "$NGX_PID")
  local -A h0 m0
  for ip in "$S1_IP" "$P1_IP" "$P2_IP"; do
    h0[$ip]=$(metric "$ip" 'homeport_notary_requests_total{result="hit"}')
    m0[$ip]=$(metric "$ip" 'homeport_notary_requests_total{result="miss"}')
  done
  local b0 b1 hp0 hp1 pg0 pg1 ng0 ng1 start_ns end_ns
  b0=$(busy_ticks)
  hp0=$(cpu_ticks "${HP_PIDS[@]}")
  pg0=$(pg_ticks)
  ng0=$(cpu_ticks "${ngx_pids[@]}")
  start_ns=$(date +%s%N)
  TIMEFORMAT='%U %S'
  { time BENCH_BODY=$QUERY BENCH_XFF_POOL=$XFF_POOL "${PIN_CLIENT[@]}" \
    wrk --latency -t "$THREADS" -c "$CONNS" -d "$DURATION" -s "$here/notary.lua" "$url" >"$out" 2>&1; } 2>"$out.time" ||
    { cat "$out" >&2; die "wrk failed for $label"; }
  end_ns=$(date +%s%N)
  hp1=$(cpu_ticks "${HP_PIDS[@]}")
  pg1=$(pg_ticks)
  ng1=$(cpu_ticks "${ngx_pids[@]}")
  b1=$(busy_ticks)
  local -A hits
  local misses=0
  for ip in "$S1_IP" "$P1_IP" "$P2_IP"; do
    hits[$ip]=$(($(metric "$ip" 'homeport_notary_requests_total{result="hit"}') - ${h0[$ip]}))
    misses=$((misses + $(metric "$ip" 'homeport_notary_requests_total{result="miss"}') - ${m0[$ip]}))
  done
  local wall wrk_u wrk_s rps p50 p99 non2xx errs hp_cpu pg_cpu ngx_cpu wrk_cpu other_cpu
  wall=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  read -r wrk_u wrk_s <"$out.time"
  rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
  [[ -n "$rps" ]] || { cat "$out" >&2; die "no Requests/sec in wrk's output for $label"; }
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  errs=$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$out")
  hp_cpu=$(pct $((hp1 - hp0)) "$wall")
  pg_cpu=$(pct $((pg1 - pg0)) "$wall")
  ngx_cpu=$(pct $((ng1 - ng0)) "$wall")
  wrk_cpu=$(awk -v u="$wrk_u" -v s="$wrk_s" -v w="$wall" 'BEGIN { printf "%.0f", 100 * (u + s) / w }')
  # Everything else the machine ran meanwhile (other processes, the kernel's
  # softirq work for loopback, steal), in % of one CPU.
  other_cpu=$(awk -v b=$((b1 - b0)) -v d=$((hp1 - hp0 + pg1 - pg0 + ng1 - ng0)) -v hz="$CLK_TCK" -v u="$wrk_u" -v s="$wrk_s" -v w="$wall" \
    'BEGIN { x = 100 * ((b - d) / hz - u - s) / w; if (x < 0) x = 0; printf "%.0f", x }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$label" "$store" "$instances" "$path" \
    "$rps" "$p50" "$p99" "${non2xx:-0}" "${errs:-0}" "$hp_cpu" "$pg_cpu" "$ngx_cpu" "$wrk_cpu" "$other_cpu" \
    "${hits[$S1_IP]}" "${hits[$P1_IP]}" "${hits[$P2_IP]}" "$misses" >>"$ROWS"
  if [[ "${non2xx:-0}" != 0 ]]; then
    { printf '%s: %s non-2xx; non-200 counters of the instances so far:\n' "$label" "$non2xx"; non200; } | tee -a "$WORK/non2xx.txt" >&2
  fi
  log "$label: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, non-2xx ${non2xx:-0}, errors ${errs:-0}; CPU: homeport ${hp_cpu}%, postgres ${pg_cpu}%, nginx ${ngx_cpu}%, wrk ${wrk_cpu}%, other ${other_cpu}%; hits S1/P1/P2 ${hits[$S1_IP]}/${hits[$P1_IP]}/${hits[$P2_IP]}, misses $misses"
}

# ---- 7. the runs ---------------------------------------------------------------------------------------
Q=/_matrix/key/v2/query
log "wrk: -t $THREADS -c $CONNS -d $DURATION per row, $ROUNDS round(s); pinning: $([[ "$PIN" == 1 ]] && echo "wrk CPU $CLIENT_CPU, servers CPU $SERVER_CPU" || echo off)"
runs_start=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r of $ROUNDS"
  run_row "sqlite_direct.$r" "SQLite, 1 instance, direct" SQLite 1 direct "http://$S1_IP:$HP_PORT$Q"
  run_row "sqlite_nginx.$r" "SQLite, 1 instance, via nginx" SQLite 1 nginx "http://$NGX_IP:$NGX_SQLITE_ONE$Q"
  run_row "pg_direct.$r" "PostgreSQL, 1 instance, direct" PostgreSQL 1 direct "http://$P1_IP:$HP_PORT$Q"
  run_row "pg_nginx.$r" "PostgreSQL, 1 instance, via nginx" PostgreSQL 1 nginx "http://$NGX_IP:$NGX_ONE$Q"
  run_row "pg_two.$r" "PostgreSQL, 2 instances, via nginx" PostgreSQL 2 nginx "http://$NGX_IP:$NGX_TWO$Q"
done
runs_time=$((SECONDS - runs_start))

# ---- 8. the report ---------------------------------------------------------------------------------------
# Warnings and errors the servers logged during the whole run.
HP_LOG_LINES=0
for n in s1 p1 p2; do
  HP_LOG_LINES=$((HP_LOG_LINES + $(grep -c -E 'WARN|ERROR' "$INTEROP_LOGS/homeport-$n.log" || true)))
done
NGX_LOG_LINES=$(grep -c -E '\[(warn|error|crit|alert|emerg)\]' "$WORK/nginx/error.log" || true)
PG_LOG_LINES=$(grep -c -E '(WARNING|ERROR|FATAL|PANIC):' "$INTEROP_LOGS/postgres.log" || true)
mkdir -p "$(dirname "$OUT")"
R_PIN=$([[ "$PIN" == 1 ]] && echo "wrk pinned to CPU $CLIENT_CPU; every server (the homeport instances, postgres, nginx) to CPU $SERVER_CPU (taskset)" ||
  echo "no pinning: wrk and the servers share every CPU")
R_MACHINE="$(nproc) vCPUs ($(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
R_VERSIONS="homeport $("$HOMEPORT_BIN" --version 2>/dev/null | awk '{ print $NF }') (release build of $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')), PostgreSQL $PG_VERSION ($PG_BIN), $(nginx -v 2>&1 | sed 's/^nginx version: //'), wrk $({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }')"
export R_ROWS=$ROWS R_OUT=$OUT R_THREADS=$THREADS R_CONNS=$CONNS R_DURATION=$DURATION R_ROUNDS=$ROUNDS \
  R_RUNS_TIME=$runs_time R_XFF_POOL=$XFF_POOL R_NICE=$NICE R_PIN R_MACHINE R_VERSIONS R_NCPU=$ncpu \
  R_LAB_NAME=$LAB_NAME R_LAB_SKIPPED=$LAB_SKIPPED R_ANSWER_SIZE=$ANSWER_SIZE R_SAME_BYTES=$SAME_BYTES R_CP_MIN=$CP_MIN R_CP_MAX=$CP_MAX \
  R_NON2XX="$WORK/non2xx.txt" R_HP_LOG=$HP_LOG_LINES R_NGX_LOG=$NGX_LOG_LINES R_PG_LOG=$PG_LOG_LINES R_PINNED=$PIN \
  R_WARM_MISSES="${WARM_MISSES[$S1_IP]}/${WARM_MISSES[$P1_IP]}/${WARM_MISSES[$P2_IP]}"
rc=0
python3 - <<'EOF' || rc=$?
import collections, os, sys
E = os.environ
rows = collections.OrderedDict()
for line in open(E["R_ROWS"]):
    f = line.rstrip("\n").split("\t")
    rid = f[0].rsplit(".", 1)[0]
    r = dict(id=rid, label=f[1], store=f[2], inst=int(f[3]), path=f[4], rps=int(f[5]),
             p50=float(f[6]), p99=float(f[7]), non2xx=int(f[8]), errs=int(f[9]),
             hp=int(f[10]), pg=int(f[11]), ngx=int(f[12]), wrk=int(f[13]), other=int(f[14]),
             hits=(int(f[15]), int(f[16]), int(f[17])), misses=int(f[18]))
    prev = rows.get(rid)
    r["all"] = (prev["all"] if prev else []) + [r["rps"]]
    r["bad"] = (prev["bad"] if prev else 0) + r["non2xx"]
    r["allerrs"] = (prev["allerrs"] if prev else 0) + r["errs"]
    r["allmisses"] = (prev["allmisses"] if prev else 0) + r["misses"]
    # Several rounds: show the best (least disturbed) one, list them all.
    if prev is None or r["rps"] > prev["rps"]:
        rows[rid] = r
    else:
        prev["all"], prev["bad"], prev["allerrs"], prev["allmisses"] = r["all"], r["bad"], r["allerrs"], r["allmisses"]
def srv(r):
    return r["hp"] + r["pg"] + r["ngx"]
o = []
p = o.append
p("Command: `bash bench/scaling.sh` — wrk -t %s -c %s -d %s --latency (keep-alive, HTTP/1.1) with "
  "bench/notary.lua (POST /_matrix/key/v2/query for `%s`, X-Forwarded-For over %s addresses), "
  "%s round(s) of every row, interleaved; the best round is shown. Runs took %ss."
  % (E["R_THREADS"], E["R_CONNS"], E["R_DURATION"], E["R_LAB_NAME"], E["R_XFF_POOL"], E["R_ROUNDS"], E["R_RUNS_TIME"]))
p("")
p("Machine: %s. %s; nice %s for all of them." % (E["R_MACHINE"], E["R_PIN"], E["R_NICE"]))
p("")
p("Versions: %s." % E["R_VERSIONS"])
p("")
p("| store | instances | path | requests/s | p50 ms | p99 ms | non-2xx | homeport CPU | postgres CPU | nginx CPU | requests per server core-second | wrk CPU | other CPU |")
p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows.values():
    allr = "" if len(r["all"]) == 1 else " (%s)" % " / ".join(str(x) for x in r["all"])
    bad = "%d" % r["bad"] if r["bad"] == 0 else "**%d**" % r["bad"]
    if r["allerrs"]:
        bad += " (+%d socket errors)" % r["allerrs"]
    s = srv(r)
    p("| %s | %d | %s | %d%s | %.2f | %.2f | %s | %d%% | %s | %s | %s | %d%% | %d%% |" % (
        r["store"], r["inst"], "via nginx" if r["path"] == "nginx" else "direct", r["rps"], allr,
        r["p50"], r["p99"], bad, r["hp"], "%d%%" % r["pg"] if r["store"] == "PostgreSQL" else "—",
        "%d%%" % r["ngx"] if r["path"] == "nginx" else "—",
        "%.0f" % (r["rps"] * 100 / s) if s else "?", r["wrk"], r["other"]))
p("")
def get(a):
    return rows.get(a)
def ratio_line(a, b, what):
    x, y = get(a), get(b)
    if not x or not y or not y["rps"]:
        return
    pc = lambda r: r["rps"] * 100 / srv(r) if srv(r) else float("nan")
    p("| %s | %.2fx | %.2fx | %.2fx |" % (what, x["rps"] / y["rps"], x["p99"] / y["p99"] if y["p99"] else float("nan"),
                                        pc(x) / pc(y)))
p("| comparison | requests/s | p99 | requests per server core-second |")
p("|---|---:|---:|---:|")
ratio_line("pg_direct", "sqlite_direct", "PostgreSQL / SQLite, 1 instance, direct")
ratio_line("pg_nginx", "sqlite_nginx", "PostgreSQL / SQLite, 1 instance, via nginx")
ratio_line("pg_two", "pg_nginx", "two / one instance (PostgreSQL, via nginx)")
ratio_line("sqlite_nginx", "sqlite_direct", "via nginx / direct (SQLite, 1 instance)")
ratio_line("pg_nginx", "pg_direct", "via nginx / direct (PostgreSQL, 1 instance)")
p("")
two = get("pg_two")
notes = []
notes.append("'homeport CPU', 'postgres CPU' (the postmaster, its backends and other children, live or reaped) and 'nginx CPU' (master and worker) "
             "are CPU time during the row in % of one core; 'requests per server core-second' divides requests/s "
             "by their sum, 'other CPU' is everything else the machine did meanwhile (other processes, the kernel's "
             "loopback work, steal).")
if E["R_PINNED"] == "1":
    notes.append("**With %s CPUs and the servers pinned to one of them, two instances share the core that one "
                 "instance had (with postgres and nginx on it too): the two-instance row cannot show more "
                 "throughput than one, only what the second instance costs.** Scaling out needs as many cores as "
                 "instances; run with BENCH_PIN=0 on a larger machine to see it." % E["R_NCPU"])
else:
    notes.append("No pinning: wrk and every server compete for %s CPUs." % E["R_NCPU"])
if two:
    h = two["hits"]
    notes.append("Two instances: nginx's round robin gave P1 %d and P2 %d notary hits in the best round." % (h[1], h[2]))
notes.append("Every row is a cache hit: the notary re-reads the stored response at most once a second per "
             "origin (one SELECT on the store: SQLite WAL file, or PostgreSQL over TCP with a pool of cp_min %s / "
             "cp_max %s) and otherwise answers with the cached countersigned copy. Notary misses during the rows: %d (warm-up misses S1/P1/P2: %s); answer %s bytes "
             "(headers+body)%s." % (E["R_CP_MIN"], E["R_CP_MAX"], sum(r["allmisses"] for r in rows.values()),
                                    E["R_WARM_MISSES"], E["R_ANSWER_SIZE"],
                                    ", identical from every instance (one signing key)" if E["R_SAME_BYTES"] == "yes" else ""))
if E["R_LAB_SKIPPED"]:
    notes.append("Lab names whose keys the notary could not fetch (an empty `server_keys`), so not used: %s "
                 "(the notary's client does not apply `dns.lab_well_known_port` / `lab_default_port`, so a name "
                 "delegated through .well-known is dialled on 443/8448)." % E["R_LAB_SKIPPED"])
notes.append("nginx: 1 worker, access log off, keepalive 64 to the upstreams, the client's X-Forwarded-For "
             "passed through; homeport's listeners have x_forwarded and trust 127.0.0.0/8, so every request's "
             "client is one of bench/notary.lua's addresses and the notary's 600-a-minute limit stays out of the way.")
if os.path.exists(E["R_NON2XX"]):
    notes.append("Non-2xx detail (homeport's counters): " + "; ".join(
        l.strip() for l in open(E["R_NON2XX"]) if l.strip()))
notes.append("Log lines during the run: homeport WARN/ERROR %s, nginx error.log warn+ %s, postgres WARNING/ERROR/FATAL %s."
             % (E["R_HP_LOG"], E["R_NGX_LOG"], E["R_PG_LOG"]))
bad = sum(r["bad"] for r in rows.values())
if bad:
    notes.append("**%d non-2xx answers: those rows did not measure cache hits only (rate limit? raise "
                 "BENCH_XFF_POOL, see the wrk output in the kept work dir).**" % bad)
for n in notes:
    p("- " + n)
text = "\n".join(o) + "\n"
open(E["R_OUT"], "w").write(text)
print(text, end="")
sys.exit(1 if bad else 0)
EOF
log "total $((SECONDS - bench_start))s (set-up and runs $((SECONDS - setup_start))s); results also in $OUT"
((rc == 0)) || die "some rows had non-2xx answers (see the table)"
