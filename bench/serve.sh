#!/usr/bin/env bash
# Benchmark: `homeport serve` vs nginx (static files) vs Synapse, with wrk.
#
#   bash bench/serve.sh
#
# In one run, on loopback only (127.0.0.170-172), nothing leaves the machine:
#   1. cargo build --release -p homeport (target/release/homeport);
#   2. a test CA and a leaf for hs.bench and fed.hs.bench (interop/lib/ca.sh);
#   3. dnsmasq on 127.0.0.170:53 for *.bench (hs.bench, fed.hs.bench,
#      syn.bench; anything else NXDOMAIN);
#   4. homeport serve for hs.bench on 127.0.0.171: TLS listeners on 8448 (the
#      one measured) and 443 (so Synapse's discovery finds .well-known), a TLS
#      listener on 8449 with x_forwarded (notary rows, see bench/notary.lua), a
#      plain listener on 8008, metrics on 9100; well_known.server
#      fed.hs.bench; notary on, ip_range_whitelist 127.0.0.0/8, the test CA as
#      federation_custom_ca_list, dns at the dnsmasq; SQLite store (WAL file);
#   5. nginx (Debian nginx-light) on 127.0.0.171:8450, TLS, the same
#      certificate, serving the bytes curl fetched from homeport's
#      /.well-known/matrix/server and /_matrix/key/v2/server as static files;
#   6. Synapse syn.bench on 127.0.0.172 (cached venv, interop/lib/synapse.sh):
#      TLS 8448 (so homeport's notary can fetch its keys) and plain 8008 with
#      the federation resource (what is measured: Synapse's own number);
#      each notary caches the other's keys before the notary rows;
#   7. wrk --latency (keep-alive; 2 threads, 50 connections, 10 s by default)
#      against every row of the table, wrk on one CPU and the servers on the
#      other (taskset), recording requests/s, p50/p99, non-2xx, and the CPU
#      time the server and wrk used; homeport's RSS at idle and under load.
#      Rows: .well-known and key/v2/server (homeport and nginx, TLS), Synapse's
#      key/v2/server and homeport's over plain HTTP, a notary cache hit on each
#      (POST, bench/notary.lua), then, once and for half the time, well-known
#      with a new TLS connection per request (homeport and nginx) and
#      homeport's notary from a single client address (its rate limit);
#   8. a markdown table and the ratios against the targets (>= 0.8x nginx's
#      requests/s, >= 10x Synapse's). A missed target is reported, never an
#      error: the script fails only when the set-up itself fails.
#
# The results also go to target/bench/serve.md (BENCH_OUT=FILE elsewhere).
#
# Environment:
#   BENCH_DURATION=10s    wrk -d per row (the last three rows use half)
#   BENCH_THREADS=2       wrk -t
#   BENCH_CONNECTIONS=50  wrk -c
#   BENCH_PIN=1           taskset: wrk on CPU 0, servers on CPU 1 (0: no pinning)
#   BENCH_NICE=-10        nice value of everything benchmarked (servers and
#                         wrk alike), so that other work on a shared machine
#                         disturbs less; 0 leaves it alone
#   BENCH_ROUNDS=2        run every row this many times, interleaved; the table
#                         shows the best round of each (least disturbed)
#   BENCH_QUIET_WAIT=60   seconds, over the whole run, that the rows may wait
#                         for the machine to be nearly idle (at most 10 s per
#                         row; 0: never wait)
#   BENCH_SKIP_BUILD=1    use target/release/homeport as it is
#   HOMEPORT_BIN=PATH     benchmark this binary (implies BENCH_SKIP_BUILD)
#   HOMEPORT_INTEROP_KEEP=1  keep the work directory (configs, logs, wrk output)
#
# Needs root (apt-get, port 53 and 443, unshare -m), python3, curl, openssl;
# installs wrk, nginx-light and dnsmasq-base when missing. The first run also
# builds the release binary (~6 min on 2 cores) and the Synapse venv.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=../interop/lib/common.sh
source "$root/interop/lib/common.sh"
# shellcheck source=../interop/lib/ca.sh
source "$root/interop/lib/ca.sh"
# shellcheck source=../interop/lib/dnsmasq.sh
source "$root/interop/lib/dnsmasq.sh"
# shellcheck source=../interop/lib/synapse.sh
source "$root/interop/lib/synapse.sh"

DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNECTIONS:-50}
PIN=${BENCH_PIN:-1}
NICE=${BENCH_NICE:--10}
ROUNDS=${BENCH_ROUNDS:-2}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
# shellcheck source=lib.sh
source "$here/lib.sh"
OUT=${BENCH_OUT:-$root/target/bench/serve.md}
XFF_POOL=4000

DNS_IP=127.0.0.170
HP_IP=127.0.0.171 HP_NAME=hs.bench HP_DELEGATED=fed.hs.bench
NGX_PORT=8450
SYN_IP=127.0.0.172 SYN_NAME=syn.bench

bench_start=$SECONDS

# ---- tools -------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
apt_ensure wrk:wrk nginx:nginx-light dnsmasq:dnsmasq-base
for c in curl openssl python3 unshare taskset; do
  command -v "$c" >/dev/null 2>&1 || die "$c is missing"
done
((EUID == 0)) || die "run as root (port 53 and 443, unshare -m, apt-get)"

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

# Nothing of ours may be listening already (another run, another helper).
for a in "$DNS_IP:53" "$HP_IP:8448" "$HP_IP:443" "$HP_IP:8449" "$HP_IP:8008" "$HP_IP:9100" \
  "$HP_IP:$NGX_PORT" "$SYN_IP:8448" "$SYN_IP:8008"; do
  if ss -Hltn "( sport = :${a##*:} )" 2>/dev/null | awk '{print $4}' | grep -qx -e "$a" -e "0.0.0.0:${a##*:}" -e "\*:${a##*:}"; then
    die "$a is already in use (another benchmark or test running?)"
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
# The machine is shared (other builds): every process started from here on
# (servers, wrk, curl) inherits a higher priority, the same for all of them.
if [[ "$NICE" != 0 ]]; then
  renice -n "$NICE" -p "$$" >/dev/null || die "renice $NICE"
fi

make_workdir bench-serve WORK
chmod 755 "$WORK" # nginx workers run as nobody/www-data and read www/ below it
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS"

# ---- 2. CA and certificates ------------------------------------------------------
ca_init "$WORK/ca" "bench CA"
ca_leaf "$WORK/ca" "$HP_NAME" "DNS:$HP_NAME" "DNS:$HP_DELEGATED" "IP:$HP_IP"
CA="$WORK/ca/ca.crt"
CURL=(curl -sS --noproxy '*' --cacert "$CA" --max-time 30
  --resolve "$HP_NAME:8448:$HP_IP" --resolve "$HP_NAME:8449:$HP_IP"
  --resolve "$HP_NAME:$NGX_PORT:$HP_IP" --resolve "$HP_NAME:8008:$HP_IP"
  --resolve "$SYN_NAME:8008:$SYN_IP" --resolve "$SYN_NAME:8448:$SYN_IP")

# ---- 3. DNS ------------------------------------------------------------------------
dnsmasq_start "$WORK/dns" "$DNS_IP" \
  "local=/bench/" \
  "host-record=$HP_NAME,$HP_IP" \
  "host-record=$HP_DELEGATED,$HP_IP" \
  "host-record=$SYN_NAME,$SYN_IP"

# wrk resolves through /etc/hosts in its own mount namespace (SNI and Host are
# then the names, as a federating server sends them), never the system DNS.
printf '127.0.0.1 localhost\n%s %s %s\n%s %s\n' "$HP_IP" "$HP_NAME" "$HP_DELEGATED" \
  "$SYN_IP" "$SYN_NAME" >"$WORK/wrk.hosts"
printf 'nameserver %s\n' "$DNS_IP" >"$WORK/wrk.resolv"

# ---- 4. homeport serve ----------------------------------------------------------------
mkdir -p "$WORK/hp"
"$HOMEPORT_BIN" keygen -o "$WORK/hp/$HP_NAME.signing.key" >/dev/null 2>&1 ||
  die "homeport keygen failed"
HP_KID=$(awk 'NR == 1 { print $1 ":" $2 }' "$WORK/hp/$HP_NAME.signing.key")
cat >"$WORK/hp/homeport.yaml" <<EOF
server_name: $HP_NAME
signing_key_path: $HP_NAME.signing.key
tls_certificate_path: '$WORK/ca/$HP_NAME.crt'
tls_private_key_path: '$WORK/ca/$HP_NAME.key'
well_known:
  server: $HP_DELEGATED
dns:
  nameservers: ['$DNS_IP:53']
federation_custom_ca_list: ['$CA']
ip_range_whitelist: ['127.0.0.0/8']
notary:
  enabled: true
database:
  name: sqlite3
  args: {database: homeport.db}
listeners:
  - port: 8448
    bind_addresses: ['$HP_IP']
    tls: true
    resources: [{names: [federation]}]
  - port: 443
    bind_addresses: ['$HP_IP']
    tls: true
    resources: [{names: [federation]}]
  - port: 8449
    bind_addresses: ['$HP_IP']
    tls: true
    x_forwarded: true
    resources: [{names: [federation]}]
  - port: 8008
    bind_addresses: ['$HP_IP']
    resources: [{names: [federation]}]
  - port: 9100
    bind_addresses: ['$HP_IP']
    type: metrics
EOF
if ! "$HOMEPORT_BIN" serve --config "$WORK/hp/homeport.yaml" --check-config >"$WORK/hp/check.log" 2>&1; then
  sed 's/^/    /' "$WORK/hp/check.log" >&2
  die "homeport serve --check-config refused the bench config"
fi
start_bg homeport "${PIN_SERVER[@]}" "$HOMEPORT_BIN" serve --config "$WORK/hp/homeport.yaml"
HP_PID=$INTEROP_LAST_PID
for p in 8448 443 8449 8008 9100; do
  wait_port "$HP_IP" "$p" 20 "$HP_PID" || { show_log homeport; die "homeport did not listen on $HP_IP:$p"; }
done

# ---- 5. nginx: the same bytes as static files ----------------------------------------------
mkdir -p "$WORK/www/.well-known/matrix" "$WORK/www/_matrix/key/v2" "$WORK/nginx"
"${CURL[@]}" -f -o "$WORK/www/.well-known/matrix/server" "https://$HP_NAME:8448/.well-known/matrix/server" ||
  die "cannot fetch homeport's .well-known/matrix/server"
"${CURL[@]}" -f -o "$WORK/www/_matrix/key/v2/server" "https://$HP_NAME:8448/_matrix/key/v2/server" ||
  die "cannot fetch homeport's /_matrix/key/v2/server"
chmod -R a+rX "$WORK/www"
nginx_user=nobody
id www-data >/dev/null 2>&1 && nginx_user=www-data
cat >"$WORK/nginx/nginx.conf" <<EOF
# bench/serve.sh: the static-file baseline. One worker (homeport gets one CPU
# too); keepalive_requests raised from its default 1000 so that, as with
# homeport, a wrk connection is never closed mid-run (a TLS handshake then).
user $nginx_user;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log $WORK/nginx/access.log;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 10000000;
    default_type application/json;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen $HP_IP:$NGX_PORT ssl;
        server_name $HP_NAME $HP_DELEGATED;
        ssl_certificate $WORK/ca/$HP_NAME.crt;
        ssl_certificate_key $WORK/ca/$HP_NAME.key;
        root $WORK/www;
        location = /.well-known/matrix/server {
            add_header Access-Control-Allow-Origin "*";
            add_header Cache-Control "max-age=86400";
        }
        location = /_matrix/key/v2/server { }
        location / { return 404; }
    }
}
EOF
nginx -t -q -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx/" 2>"$WORK/nginx/t.log" ||
  { sed 's/^/    /' "$WORK/nginx/t.log" >&2; die "nginx -t refused $WORK/nginx/nginx.conf"; }
start_bg nginx "${PIN_SERVER[@]}" nginx -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
  -p "$WORK/nginx/" -g 'daemon off;'
NGX_PID=$INTEROP_LAST_PID
wait_port "$HP_IP" "$NGX_PORT" 20 "$NGX_PID" || { show_log nginx; die "nginx did not start"; }
for path in /.well-known/matrix/server /_matrix/key/v2/server; do
  cmp -s <("${CURL[@]}" -f "https://$HP_NAME:$NGX_PORT$path") "$WORK/www$path" ||
    die "nginx does not serve homeport's bytes for $path"
done

# ---- 6. Synapse ----------------------------------------------------------------------------
synapse_venv
synapse_init "$SYN_NAME" "$WORK/syn" "$SYN_IP"
# Give the plain listener (8008) the federation resource too: Synapse's key
# server and notary measured over plain HTTP, as the issue asks.
"$SYNAPSE_PY" - "$WORK/syn/overrides.yaml" <<'EOF' || die "cannot edit Synapse's overrides.yaml"
import sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
plain = [l for l in cfg["listeners"] if not l.get("tls") and l["port"] == 8008]
if len(plain) != 1:
    sys.exit("no plain 8008 listener in " + path)
names = plain[0]["resources"][0]["names"]
if "federation" not in names:
    names.append("federation")
yaml.safe_dump(cfg, open(path, "w"), default_flow_style=False)
EOF
synapse_start "$SYN_NAME" "$WORK/syn"
SYN_PID=$(<"$WORK/syn/.pid")
if [[ "$PIN" == 1 ]]; then
  taskset -a -cp "$SERVER_CPU" "$SYN_PID" >/dev/null || die "taskset Synapse"
fi
SYN_VERSION=$("$SYNAPSE_PY" -c 'import synapse; print(synapse.__version__)')
SYN_KID=$(awk 'NR == 1 { print $1 ":" $2 }' "$WORK/syn/$SYN_NAME.signing.key")
"${CURL[@]}" -f -o /dev/null "http://$SYN_NAME:8008/_matrix/key/v2/server" ||
  die "Synapse's plain listener does not serve /_matrix/key/v2/server"

# ---- the notaries learn each other's keys ----------------------------------------------------
HP_QUERY="{\"server_keys\":{\"$SYN_NAME\":{\"$SYN_KID\":{\"minimum_valid_until_ts\":0}}}}"
SYN_QUERY="{\"server_keys\":{\"$HP_NAME\":{\"$HP_KID\":{\"minimum_valid_until_ts\":0}}}}"
notary_check() { # notary_check URL BODY SERVER KEY_ID: 200, and the key is in the answer
  local url=$1 body=$2 server=$3 kid=$4 out="$WORK/notary.$RANDOM.json" code
  code=$("${CURL[@]}" -o "$out" -w '%{http_code}' -H 'Content-Type: application/json' \
    -X POST --data "$body" "$url") || return 1
  [[ "$code" == 200 ]] || { log "$url: HTTP $code: $(head -c 300 "$out")"; return 1; }
  python3 - "$out" "$server" "$kid" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
keys = [k for k in doc.get("server_keys", []) if k.get("server_name") == sys.argv[2]]
if not keys or sys.argv[3] not in keys[0].get("verify_keys", {}):
    sys.exit("answer without %s %s: %s" % (sys.argv[2], sys.argv[3], json.dumps(doc)[:300]))
EOF
}
notary_check "https://$HP_NAME:8448/_matrix/key/v2/query" "$HP_QUERY" "$SYN_NAME" "$SYN_KID" ||
  { show_log homeport; die "homeport's notary cannot fetch $SYN_NAME's keys"; }
notary_check "http://$SYN_NAME:8008/_matrix/key/v2/query" "$SYN_QUERY" "$HP_NAME" "$HP_KID" ||
  { show_log "synapse-$SYN_NAME"; die "Synapse's notary cannot fetch $HP_NAME's keys"; }
# Both now answer from their caches.
for _ in 1 2; do
  notary_check "https://$HP_NAME:8449/_matrix/key/v2/query" "$HP_QUERY" "$SYN_NAME" "$SYN_KID" ||
    die "homeport's notary (8449) failed on a cache hit"
  notary_check "http://$SYN_NAME:8008/_matrix/key/v2/query" "$SYN_QUERY" "$HP_NAME" "$HP_KID" ||
    die "Synapse's notary failed on a cache hit"
done
log "set-up done in $((SECONDS - setup_start))s"

# ---- measuring helpers --------------------------------------------------------------------------
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
nginx_pids() { printf '%s\n' "$NGX_PID"; ps -o pid= --ppid "$NGX_PID" | tr -d ' '; }
metric() { # metric NAME{LABELS}: a counter from homeport's /metrics, 0 if absent
  "${CURL[@]}" "http://$HP_IP:9100/metrics" | awk -v m="$1" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'
}

HP_RSS_IDLE=$(rss_kb "$HP_PID")
HP_RSS_MAX=$HP_RSS_IDLE
NGX_RSS_IDLE=0
for p in $(nginx_pids); do NGX_RSS_IDLE=$((NGX_RSS_IDLE + $(rss_kb "$p"))); done
SYN_RSS_IDLE=$(rss_kb "$SYN_PID")


# run_row ID LABEL SERVER URL [WRK-ARGS...]: one wrk run; appends a line to
# $WORK/rows.tsv: id label server rps p50 p99 non2xx errors srv_cpu% wrk_cpu% other_cpu%
ROWS="$WORK/rows.tsv"
: >"$ROWS"
run_row() {
  local id=$1 label=$2 server=$3 url=$4 out pids t0 t1 wall wrk_u wrk_s sampler="" rps p50 p99 non2xx errs
  shift 4
  local dur=$DURATION
  if [[ "${1:-}" == --duration ]]; then dur=$2; shift 2; fi
  wait_quiet
  out="$WORK/wrk-$id.txt"
  case "$server" in
    homeport) pids=("$HP_PID") ;;
    nginx) mapfile -t pids < <(nginx_pids) ;;
    synapse) pids=("$SYN_PID") ;;
  esac
  if [[ "$server" == homeport ]]; then
    # shellcheck disable=SC2016
    start_bg "rss-$id" bash -c 'while kill -0 "$1" 2>/dev/null; do awk "/^VmRSS:/ { print \$2 }" "/proc/$1/status"; sleep 0.2; done' _ "$HP_PID"
    sampler=$INTEROP_LAST_PID
  fi
  local b0 b1
  b0=$(busy_ticks)
  t0=$(cpu_ticks "${pids[@]}")
  local start_ns end_ns
  start_ns=$(date +%s%N)
  TIMEFORMAT='%U %S'
  # shellcheck disable=SC2016
  { time unshare -m -- sh -c 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"' \
    sh "$WORK/wrk.hosts" "$WORK/wrk.resolv" "${PIN_CLIENT[@]}" \
    wrk --latency -t "$THREADS" -c "$CONNS" -d "$dur" "$@" "$url" >"$out" 2>&1; } 2>"$out.time" ||
    { cat "$out" >&2; die "wrk failed for $label"; }
  end_ns=$(date +%s%N)
  t1=$(cpu_ticks "${pids[@]}")
  b1=$(busy_ticks)
  if [[ -n "$sampler" ]]; then
    stop_pid "$sampler"
    local m
    m=$(sort -n "$INTEROP_LOGS/rss-$id.log" | tail -n 1)
    [[ -n "$m" ]] && ((m > HP_RSS_MAX)) && HP_RSS_MAX=$m
  fi
  wall=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  read -r wrk_u wrk_s <"$out.time"
  rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  errs=$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$out")
  local srv_cpu wrk_cpu other_cpu
  srv_cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v w="$wall" 'BEGIN { printf "%.0f", 100 * d / hz / w }')
  wrk_cpu=$(awk -v u="$wrk_u" -v s="$wrk_s" -v w="$wall" 'BEGIN { printf "%.0f", 100 * (u + s) / w }')
  # Everything else the machine ran meanwhile (other processes, the kernel's
  # softirq work for loopback, the hypervisor's steal), in % of one CPU.
  other_cpu=$(awk -v b=$((b1 - b0)) -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v u="$wrk_u" -v s="$wrk_s" -v w="$wall" \
    'BEGIN { x = 100 * ((b - d) / hz - u - s) / w; if (x < 0) x = 0; printf "%.0f", x }')
  [[ -n "$rps" ]] || { cat "$out" >&2; die "no Requests/sec in wrk's output for $label"; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$label" "$server" "$rps" "$p50" "$p99" \
    "${non2xx:-0}" "${errs:-0}" "$srv_cpu" "$wrk_cpu" "$other_cpu" >>"$ROWS"
  log "$label ($server): $rps req/s, p50 ${p50} ms, p99 ${p99} ms, non-2xx ${non2xx:-0}, CPU: server ${srv_cpu}%, wrk ${wrk_cpu}%, other ${other_cpu}%"
}

# Response sizes (headers + body), as curl sees them.
size_of() { "${CURL[@]}" -o /dev/null -w '%{size_header}+%{size_download}' "$@"; }
declare -A SIZE
SIZE[wk_hp]=$(size_of "https://$HP_NAME:8448/.well-known/matrix/server")
SIZE[wk_ngx]=$(size_of "https://$HP_NAME:$NGX_PORT/.well-known/matrix/server")
SIZE[key_hp]=$(size_of "https://$HP_NAME:8448/_matrix/key/v2/server")
SIZE[key_ngx]=$(size_of "https://$HP_NAME:$NGX_PORT/_matrix/key/v2/server")
SIZE[key_syn]=$(size_of "http://$SYN_NAME:8008/_matrix/key/v2/server")
SIZE[key_hp_plain]=$(size_of "http://$HP_NAME:8008/_matrix/key/v2/server")
SIZE[notary_hp]=$(size_of -X POST -H 'Content-Type: application/json' --data "$HP_QUERY" "https://$HP_NAME:8449/_matrix/key/v2/query")
SIZE[notary_syn]=$(size_of -X POST -H 'Content-Type: application/json' --data "$SYN_QUERY" "http://$SYN_NAME:8008/_matrix/key/v2/query")
SIZE[notary_hp_1ip]=${SIZE[notary_hp]}
SIZE[wk_hp_close]=${SIZE[wk_hp]}
SIZE[wk_ngx_close]=${SIZE[wk_ngx]}
tls_of() { # "TLSv1.3 TLS_AES_256_GCM_SHA384" as openssl (what wrk uses) negotiates it
  openssl s_client -connect "$1" -servername "$HP_NAME" </dev/null 2>/dev/null |
    awk '/^New, / { gsub(",", ""); print $2, $NF; exit }'
}
TLS_HP=$(tls_of "$HP_IP:8448")
TLS_NGX=$(tls_of "$HP_IP:$NGX_PORT")

# ---- 7. the runs ---------------------------------------------------------------------------------------
log "wrk: -t $THREADS -c $CONNS -d $DURATION per row; pinning: $([[ "$PIN" == 1 ]] && echo "wrk CPU $CLIENT_CPU, servers CPU $SERVER_CPU" || echo off)"
runs_start=$SECONDS
half=$(awk -v d="$DURATION" 'BEGIN { n = d + 0; u = d; sub(/^[0-9.]+/, "", u); if (u == "") u = "s"; printf "%d%s", (n / 2 < 1 ? 1 : n / 2), u }')
notary_hits=0 notary_misses=0
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r of $ROUNDS"
  run_row "wk_hp.$r" "well-known" homeport "https://$HP_NAME:8448/.well-known/matrix/server"
  run_row "wk_ngx.$r" "well-known" nginx "https://$HP_NAME:$NGX_PORT/.well-known/matrix/server"
  run_row "key_hp.$r" "key/v2/server" homeport "https://$HP_NAME:8448/_matrix/key/v2/server"
  run_row "key_ngx.$r" "key/v2/server" nginx "https://$HP_NAME:$NGX_PORT/_matrix/key/v2/server"
  run_row "key_syn.$r" "key/v2/server" synapse "http://$SYN_NAME:8008/_matrix/key/v2/server"
  run_row "key_hp_plain.$r" "key/v2/server" homeport "http://$HP_NAME:8008/_matrix/key/v2/server"
  h0=$(metric 'homeport_notary_requests_total{result="hit"}')
  m0=$(metric 'homeport_notary_requests_total{result="miss"}')
  BENCH_BODY=$HP_QUERY BENCH_XFF_POOL=$XFF_POOL run_row "notary_hp.$r" "notary cache hit" homeport \
    "https://$HP_NAME:8449/_matrix/key/v2/query" -s "$here/notary.lua"
  notary_hits=$((notary_hits + $(metric 'homeport_notary_requests_total{result="hit"}') - h0))
  notary_misses=$((notary_misses + $(metric 'homeport_notary_requests_total{result="miss"}') - m0))
  BENCH_BODY=$SYN_QUERY run_row "notary_syn.$r" "notary cache hit" synapse \
    "http://$SYN_NAME:8008/_matrix/key/v2/query" -s "$here/notary.lua"
done
# A new TLS connection (full handshake, no resumption) for every request.
run_row wk_hp_close.1 "well-known, new TLS connection per request" homeport \
  "https://$HP_NAME:8448/.well-known/matrix/server" --duration "$half" -H 'Connection: close'
run_row wk_ngx_close.1 "well-known, new TLS connection per request" nginx \
  "https://$HP_NAME:$NGX_PORT/.well-known/matrix/server" --duration "$half" -H 'Connection: close'
# The notary as configured, all requests from one address: the per-client
# limit (600 a minute) answers nearly everything with 429.
BENCH_BODY=$HP_QUERY run_row notary_hp_1ip.1 "notary, one client address" homeport \
  "https://$HP_NAME:8448/_matrix/key/v2/query" --duration "$half" -s "$here/notary.lua"
runs_time=$((SECONDS - runs_start))
HP_RSS_AFTER=$(rss_kb "$HP_PID")
HP_HWM=$(hwm_kb "$HP_PID")
NGX_RSS_AFTER=0
for p in $(nginx_pids); do NGX_RSS_AFTER=$((NGX_RSS_AFTER + $(rss_kb "$p"))); done
SYN_RSS_AFTER=$(rss_kb "$SYN_PID")
SYN_HWM=$(hwm_kb "$SYN_PID")

# ---- 8. the report ---------------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
for k in "${!SIZE[@]}"; do printf '%s\t%s\n' "$k" "${SIZE[$k]}"; done >"$WORK/sizes.tsv"
export R_ROWS=$ROWS R_SIZES="$WORK/sizes.tsv" R_OUT=$OUT R_THREADS=$THREADS R_CONNS=$CONNS \
  R_DURATION=$DURATION R_HALF=$half R_ROUNDS=$ROUNDS R_RUNS_TIME=$runs_time R_XFF_POOL=$XFF_POOL \
  R_NICE=$NICE R_HITS=$notary_hits R_MISSES=$notary_misses \
  R_HP_RSS_IDLE=$HP_RSS_IDLE R_HP_RSS_MAX=$HP_RSS_MAX R_HP_RSS_AFTER=$HP_RSS_AFTER R_HP_HWM=$HP_HWM \
  R_NGX_RSS_IDLE=$NGX_RSS_IDLE R_NGX_RSS_AFTER=$NGX_RSS_AFTER \
  R_SYN_RSS_IDLE=$SYN_RSS_IDLE R_SYN_RSS_AFTER=$SYN_RSS_AFTER R_SYN_HWM=$SYN_HWM \
  R_TLS_HP="$TLS_HP" R_TLS_NGX="$TLS_NGX"
R_PIN=$([[ "$PIN" == 1 ]] && echo "wrk pinned to CPU $CLIENT_CPU, every server to CPU $SERVER_CPU (taskset)" ||
  echo "no pinning: wrk and the servers share every CPU")
R_MACHINE="$(nproc) vCPUs ($(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
R_VERSIONS="homeport $("$HOMEPORT_BIN" --version 2>/dev/null | awk '{ print $NF }') (release build of $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')), $(nginx -v 2>&1 | sed 's/^nginx version: //') (1 worker, access log on), Synapse $SYN_VERSION (Python $("$SYNAPSE_PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])'), SQLite, generated logging config), wrk $({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }')"
export R_PIN R_MACHINE R_VERSIONS
python3 - <<'EOF'
import collections, math, os
E = os.environ
rows = collections.OrderedDict()
for line in open(E["R_ROWS"]):
    f = line.rstrip("\n").split("\t")
    rid = f[0].rsplit(".", 1)[0]
    r = dict(id=rid, label=f[1], server=f[2], rps=int(f[3]), p50=float(f[4]), p99=float(f[5]),
             non2xx=int(f[6]), errs=int(f[7]), srv=int(f[8]), wrk=int(f[9]), other=int(f[10]))
    prev = rows.get(rid)
    r["all"] = (prev["all"] if prev else []) + [r["rps"]]
    # Several rounds: show the best (least disturbed) one, list them all.
    if prev is None or r["rps"] > prev["rps"]:
        rows[rid] = r
    else:
        prev["all"] = r["all"]
sizes = dict(l.rstrip("\n").split("\t") for l in open(E["R_SIZES"]))
transport = dict(wk_hp="TLS", wk_ngx="TLS", key_hp="TLS", key_ngx="TLS", key_syn="plain HTTP",
                 key_hp_plain="plain HTTP", notary_hp="TLS", notary_syn="plain HTTP",
                 notary_hp_1ip="TLS", wk_hp_close="TLS", wk_ngx_close="TLS")
o = []
p = o.append
p("Command: `bash bench/serve.sh` — wrk -t %s -c %s -d %s --latency (keep-alive, HTTP/1.1), "
  "%s round(s) of every row, interleaved; the best round is shown. Runs took %ss."
  % (E["R_THREADS"], E["R_CONNS"], E["R_DURATION"], E["R_ROUNDS"], E["R_RUNS_TIME"]))
p("")
p("Machine: %s. %s; nice %s for all of them. wrk runs on the same machine as the servers, "
  "so absolute numbers are low: 'server CPU' is the server's CPU time during the row in %% of one core "
  "(100%% = its core saturated), 'wrk CPU' the same for wrk, 'other CPU' everything else the machine did "
  "meanwhile (other processes, the kernel's loopback work, steal)." % (E["R_MACHINE"], E["R_PIN"], E["R_NICE"]))
p("")
p("Versions: %s. TLS (as openssl negotiates it): homeport %s, nginx %s."
  % (E["R_VERSIONS"], E["R_TLS_HP"] or "?", E["R_TLS_NGX"] or "?"))
p("")
p("| route | server | transport | requests/s | p50 ms | p99 ms | non-2xx | server CPU | requests per server core-second | wrk CPU | other CPU | response bytes (headers+body) |")
p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in rows.values():
    allr = "" if len(r["all"]) == 1 else " (%s)" % " / ".join(str(x) for x in r["all"])
    bad = r["non2xx"] + r["errs"]
    p("| %s | %s | %s | %d%s | %.2f | %.2f | %s | %d%% | %s | %d%% | %d%% | %s |" % (
        r["label"], r["server"], transport[r["id"]], r["rps"], allr, r["p50"], r["p99"],
        ("%d" % r["non2xx"]) + ("" if not r["errs"] else " (+%d socket errors)" % r["errs"]),
        r["srv"], "%.0f" % (r["rps"] * 100 / r["srv"]) if r["srv"] else "?",
        r["wrk"], r["other"], sizes.get(r["id"], "?")))
p("")
def ratio(a, b):
    if a in rows and b in rows and rows[b]["rps"]:
        return rows[a]["rps"] / rows[b]["rps"]
    return float("nan")
def per_core(a):
    r = rows.get(a)
    return r["rps"] * 100 / r["srv"] if r and r["srv"] else float("nan")
p("| comparison | requests/s ratio | per server-core-second ratio | target | met |")
p("|---|---:|---:|---:|---|")
for a, b, what, target in [
        ("wk_hp", "wk_ngx", "well-known: homeport / nginx (both TLS)", 0.8),
        ("key_hp", "key_ngx", "key/v2/server: homeport / nginx (both TLS)", 0.8),
        ("key_hp", "key_syn", "key/v2/server: homeport (TLS) / Synapse (plain)", 10),
        ("key_hp_plain", "key_syn", "key/v2/server: homeport / Synapse (both plain)", 10),
        ("notary_hp", "notary_syn", "notary cache hit: homeport (TLS) / Synapse (plain)", 10),
        ("wk_hp_close", "wk_ngx_close", "well-known, a TLS handshake per request: homeport / nginx", 0.8)]:
    x = ratio(a, b)
    y = per_core(a) / per_core(b)
    p("| %s | %.2fx | %.2fx | >= %gx | %s |" % (what, x, y, target,
      "yes" if x >= target else "**no**"))
p("")
p("'per server-core-second' divides each side's requests/s by its server CPU: what one core of "
  "the server would do; it removes the effect of a server that was not saturated. "
  "'met' judges the requests/s ratio.")
p("")
kib = lambda k: "%.1f MiB" % (int(E[k]) / 1024)
p("homeport serve RSS: %s idle (after start-up and the set-up requests), %s at most under load "
  "(VmRSS sampled every 0.2 s during homeport's rows), %s after the runs (VmHWM %s). "
  "nginx, master + worker: %s idle, %s after. Synapse: %s idle, %s after (VmHWM %s)." % (
    kib("R_HP_RSS_IDLE"), kib("R_HP_RSS_MAX"), kib("R_HP_RSS_AFTER"), kib("R_HP_HWM"),
    kib("R_NGX_RSS_IDLE"), kib("R_NGX_RSS_AFTER"), kib("R_SYN_RSS_IDLE"), kib("R_SYN_RSS_AFTER"),
    kib("R_SYN_HWM")))
p("")
p("homeport's notary rows go to a listener with `x_forwarded: true` and an X-Forwarded-For cycling "
  "over %s addresses (bench/notary.lua), because the notary allows 600 requests a minute per client "
  "address; its counters over those rows: %s hits, %s misses. The last row sends the same query from "
  "one address for %s to the ordinary TLS listener (8448): after the first 600, every answer is 429 (that row "
  "measures the rate limiter, not the notary)." % (E["R_XFF_POOL"], E["R_HITS"], E["R_MISSES"], E["R_HALF"]))
text = "\n".join(o) + "\n"
open(E["R_OUT"], "w").write(text)
print(text, end="")
EOF
log "total $((SECONDS - bench_start))s (set-up and runs $((SECONDS - setup_start))s); results also in $OUT"
