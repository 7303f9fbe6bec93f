#!/usr/bin/env bash
# Scenario set: the explicit-port failure, with real reverse proxies.
#
# dnsmasq on 127.0.0.150:53. ep.test -> 127.0.0.151, where a reverse proxy
# terminates TLS on 443 and 8448, answers /.well-known/matrix/server itself
# with {"m.server": "ep.test:8448"} (step 3.2: peers then send
# `Host: ep.test:8448`), and forwards /_matrix to Synapse ep.test (plain
# listener 127.0.0.152:8008). A second Synapse, hsq.test (127.0.0.153),
# federates with it: a notary key query for ep.test's key and a profile
# lookup of @alice:ep.test through hsq.test's client API. Before each
# variant hsq.test is restarted with an empty database, so it has seen
# nothing of ep.test (no cached keys, .well-known or connections).
#
# Variants, in the same place (same addresses, certificate, .well-known):
#   haproxy with `acl host_ok hdr(host) -i ep.test` (the exact match from
#     older Synapse docs): federation fails; `homeport check` reports
#     host_port_rejected_by_proxy, with a fix naming req.hdr(host),host_only;
#   nginx (server_name ep.test, a default_server answering 404 otherwise);
#   Caddy (site ep.test on :443 and :8448);
#   the same haproxy with m.server ep.test:443 (Host: ep.test:443);
#   haproxy with check's fix applied (the acl line rewritten as the fix says):
#     federation works and check reports no such error.
# Each variant also runs `homeport keys ep.test`, whose verdict must be
# Synapse's.
#
# Run alone:   bash interop/explicit-port.sh
# Needs root (apt-get, port 53, 443, 8448, unshare -m).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/common.sh
source "$here/lib/common.sh"
# shellcheck source=lib/ca.sh
source "$here/lib/ca.sh"
# shellcheck source=lib/dnsmasq.sh
source "$here/lib/dnsmasq.sh"
# shellcheck source=lib/synapse.sh
source "$here/lib/synapse.sh"
# shellcheck source=lib/homeport.sh
source "$here/lib/homeport.sh"
# shellcheck source=lib/proxies.sh
source "$here/lib/proxies.sh"

DNS_IP=127.0.0.150
EP=ep.test EP_IP=127.0.0.151 EP_SYN_IP=127.0.0.152
HSQ=hsq.test HSQ_IP=127.0.0.153
MSERVER=ep.test:8448
WELL_KNOWN="{\"m.server\":\"$MSERVER\"}"

ensure_homeport
proxies_install
make_workdir explicit-port WORK
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS" "$WORK/proxy"
ca_init "$WORK/ca"
ca_leaf "$WORK/ca" "$EP" "DNS:$EP"
cat "$WORK/ca/$EP.crt" "$WORK/ca/$EP.key" >"$WORK/proxy/$EP.pem"

dnsmasq_start "$WORK/dns" "$DNS_IP" \
  "host-record=$EP,$EP_IP" \
  "host-record=$HSQ,$HSQ_IP"

synapse_venv
SYNAPSE_PLAIN_PORT=8008 synapse_init "$EP" "$WORK/ep" "$EP_SYN_IP"
synapse_init "$HSQ" "$WORK/hsq" "$HSQ_IP"
synapse_start "$EP" "$WORK/ep"
synapse_register "$EP" "$WORK/ep" alice "alice-password-$$"
EP_KID=$(hp_key_id "$WORK/ep/$EP.signing.key")

keycheck() { "$SYNAPSE_PY" "$here/lib/keycheck.py" "$@"; }

# ---- proxy configurations ---------------------------------------------------
# haproxy_cfg FILE ACL-EXPRESSION
haproxy_cfg() {
  cat >"$1" <<EOF
global
    log stdout format raw local0
    maxconn 256
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend matrix
    bind $EP_IP:443 ssl crt $WORK/proxy/$EP.pem alpn h2,http/1.1
    bind $EP_IP:8448 ssl crt $WORK/proxy/$EP.pem alpn h2,http/1.1
    option forwardfor
    http-request capture req.hdr(host) len 100
    acl host_ok $2
    acl is_wk path /.well-known/matrix/server
    acl matrix_path path_beg /_matrix /_synapse/client
    http-request return status 200 content-type application/json string '$WELL_KNOWN' if host_ok is_wk
    use_backend synapse if host_ok matrix_path
    default_backend website
backend synapse
    server hs $EP_SYN_IP:8008
backend website
    http-request return status 404 content-type text/html string '<html><body>no such site</body></html>'
EOF
}

nginx_cfg() {
  cat >"$1" <<EOF
user root;
worker_processes 1;
pid $WORK/proxy/nginx/nginx.pid;
error_log $WORK/proxy/nginx/logs/error.log info;
events { worker_connections 64; }
http {
    log_format hosts '\$remote_addr "\$request" \$status host=\$http_host server=\$server_name';
    access_log $WORK/proxy/nginx/logs/access.log hosts;
    client_body_temp_path $WORK/proxy/nginx/tmp/body;
    proxy_temp_path $WORK/proxy/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/proxy/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/proxy/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/proxy/nginx/tmp/scgi;
    ssl_certificate     $WORK/ca/$EP.crt;
    ssl_certificate_key $WORK/ca/$EP.key;
    server {
        listen $EP_IP:443 ssl http2 default_server;
        listen $EP_IP:8448 ssl http2 default_server;
        server_name _;
        return 404;
    }
    server {
        listen $EP_IP:443 ssl http2;
        listen $EP_IP:8448 ssl http2;
        server_name $EP;
        location = /.well-known/matrix/server {
            default_type application/json;
            return 200 '$WELL_KNOWN';
        }
        location ~ ^(/_matrix|/_synapse/client) {
            proxy_pass http://$EP_SYN_IP:8008;
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            client_max_body_size 50M;
        }
    }
}
EOF
}

caddy_cfg() {
  cat >"$1" <<EOF
{
	admin off
	auto_https off
	storage file_system $WORK/proxy/caddy/data/caddy
	log {
		output file $WORK/proxy/caddy/caddy.log
		level INFO
	}
}
https://$EP:443, https://$EP:8448 {
	bind $EP_IP
	tls $WORK/ca/$EP.crt $WORK/ca/$EP.key
	log {
		output file $WORK/proxy/caddy/access.log
	}
	handle /.well-known/matrix/server {
		header Content-Type application/json
		respond \`$WELL_KNOWN\` 200
	}
	reverse_proxy /_matrix/* $EP_SYN_IP:8008
	reverse_proxy /_synapse/client/* $EP_SYN_IP:8008
}
EOF
}

# ---- one variant -------------------------------------------------------------
# hsq.test, fresh: no cached keys, .well-known, connections or backoff.
fresh_hsq() {
  synapse_stop "$HSQ" "$WORK/hsq"
  rm -f "$WORK/hsq/homeserver.db" "$WORK/hsq/homeserver.db-wal" "$WORK/hsq/homeserver.db-shm"
  # Its own log starts again too (kept per variant for the record).
  [[ -f "$WORK/hsq/homeserver.log" ]] && mv "$WORK/hsq/homeserver.log" "$WORK/hsq/homeserver.log.$((++HSQ_RUNS))"
  synapse_start "$HSQ" "$WORK/hsq"
}

# federation_try LABEL: sets FED_KEYS (ok/fail), FED_PROFILE (ok/fail), FED_DETAIL
federation_try() {
  local label=$1 out code
  out="$WORK/keys-$label.json"
  code=$(synapse_key_query "$HSQ" "$WORK/hsq" "$EP" "$EP_KID" 0 "$out" 2>"$out.err") || code="curl failed"
  if [[ "$code" == 200 ]] && keycheck notary "$out" "$EP" "$WORK/ep/$EP.signing.key" "$HSQ" "$WORK/hsq/$HSQ.signing.key" >/dev/null; then
    FED_KEYS=ok
    FED_DETAIL="keys: $EP_KID fetched"
  else
    FED_KEYS=fail
    FED_DETAIL="keys: HTTP $code $(head -c 80 "$out" 2>/dev/null)"
  fi
  out="$WORK/profile-$label.json"
  code=$(synapse_client "$HSQ" "$WORK/hsq" "/_matrix/client/v3/profile/@alice:$EP" -o "$out" -w '%{http_code}' --max-time 60 2>"$out.err") || code="curl failed"
  if [[ "$code" == 200 ]] && grep -q '"displayname":"alice"' "$out"; then
    FED_PROFILE=ok
    FED_DETAIL+="; profile @alice:$EP: 200 $(head -c 60 "$out")"
  else
    FED_PROFILE=fail
    FED_DETAIL+="; profile @alice:$EP: HTTP $code $(head -c 120 "$out" 2>/dev/null)"
  fi
  # What hsq.test's Synapse said about ep.test (the failing request, if any).
  FED_SYN=$(grep -F "$EP" "$(synapse_logfile "$HSQ" "$WORK/hsq")" 2>/dev/null |
    grep -E "WARNING|ERROR|Completed request|Failed|failed" | grep -vE " 200 OK" | tail -n 2 |
    sed -E 's/^[0-9-]+ [0-9:,]+ - //' | cut -c1-260 | paste -sd'|' -) || true
}

# check_run LABEL: homeport check ep.test --json; sets CHECK_RC, CHECK_IDS,
# CHECK_HPR (the host_port_rejected_by_proxy finding: "severity<TAB>fix", or "")
check_run() {
  local out="$WORK/check-$1.json"
  CHECK_RC=0
  timeout 90 "$HOMEPORT_BIN" check "$EP" --dns "$INTEROP_DNS" --ca-file "$INTEROP_CA_DIR/ca.crt" \
    --no-system-roots --timeout 30s --json >"$out" 2>"$out.err" || CHECK_RC=$?
  CHECK_IDS=$(python3 -c '
import json, sys
doc = json.load(open(sys.argv[1]))
print(",".join("%s(%s)" % (f.get("id"), f.get("severity")) for f in doc.get("findings", [])) or "none")
' "$out" 2>/dev/null) || CHECK_IDS="unreadable: $(head -c 200 "$out.err")"
  CHECK_HPR=$(python3 -c '
import json, sys
doc = json.load(open(sys.argv[1]))
for f in doc.get("findings", []):
    if f.get("id") == "host_port_rejected_by_proxy":
        print(f.get("severity"), f.get("fix", "").replace("\n", " "), sep="\t")
        break
' "$out" 2>/dev/null) || CHECK_HPR=""
}

# How the proxy saw hsq.test's requests (Host header), when it logs them.
proxy_hosts() {
  case "$1" in
    haproxy*) grep -F '"GET /_matrix/key/v2/server HTTP/1.1"' "$INTEROP_LOGS/$1.log" 2>/dev/null |
      awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\{/) print $(i - 7) " " $4 " host=" $i }' | tr -d '{}' |
      sort | uniq -c | sed 's/^ *//' | paste -sd';' - ;;
    nginx) grep -F /_matrix/key/v2/server "$WORK/proxy/nginx/logs/access.log" 2>/dev/null | grep -oE '[0-9]{3} host=[^ ]+' | sort | uniq -c | sed 's/^ *//' | paste -sd';' - ;;
    caddy) python3 - "$WORK/proxy/caddy/access.log" <<'EOF' 2>/dev/null || true
import json, sys, collections
c = collections.Counter()
for line in open(sys.argv[1]):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    r = o.get("request", {})
    if r.get("uri", "").startswith("/_matrix/key/v2/server"):
        c[f'{o.get("status")} host={r.get("host")}'] += 1
print(";".join(f"{n} {k}" for k, n in sorted(c.items())))
EOF
      ;;
  esac
}

# For haproxy (which logs the Host it matched on and the protocol): how it
# saw the key requests logged after line SKIP, e.g. homeport's own probes.
proxy_probe_note() {
  [[ "$1" == haproxy* && -f "$INTEROP_LOGS/$1.log" ]] || return 0
  local seen
  seen=$(tail -n +"$(($2 + 1))" "$INTEROP_LOGS/$1.log" | grep -F /_matrix/key/v2/server |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\{/) print $(i - 7) " " $4 " host=" $i " " $NF }' |
    tr -d '{}"' | sort | uniq -c | sed 's/^ *//' | paste -sd';' -)
  [[ -z "$seen" ]] || printf '; haproxy saw key requests: %s' "$seen"
}

variant() { # variant LABEL START-FUNCTION EXPECT(works|fails)
  local label=$1 start=$2 expect=$3 row result hosts
  log "--- variant $label"
  "$start"
  fresh_hsq
  federation_try "$label"
  hosts=$(proxy_hosts "$label")
  row="explicit port, $label: Synapse federates with $EP via m.server $MSERVER"
  if [[ "$expect" == works ]]; then
    row="$row (works)"
    if [[ "$FED_KEYS" == ok && "$FED_PROFILE" == ok ]]; then result=pass; else result=fail; fi
  else
    row="$row (fails)"
    if [[ "$FED_KEYS" == fail && "$FED_PROFILE" == fail ]]; then result=pass; else result=fail; fi
  fi
  scenario_result "$row" "$result" "$FED_DETAIL; proxy saw: ${hosts:-?}${FED_SYN:+; hsq.test log: $FED_SYN}"

  # homeport's own client must reach the same verdict as Synapse.
  local kout="$WORK/hp-keys-$label.json" krc=0 kverdict
  timeout 60 "$HOMEPORT_BIN" keys "$EP" --dns "$INTEROP_DNS" --ca-file "$INTEROP_CA_DIR/ca.crt" \
    --no-system-roots --timeout 30s --json >"$kout" 2>"$kout.err" || krc=$?
  if ((krc == 0)); then kverdict=ok; else kverdict=fail; fi
  row="explicit port, $label: homeport keys $EP agrees with Synapse ($FED_KEYS)"
  if [[ "$kverdict" == "$FED_KEYS" ]]; then
    scenario_result "$row" pass "homeport keys exit $krc"
  else
    scenario_result "$row" fail "homeport keys exit $krc ($kverdict), Synapse's key fetch: $FED_KEYS$(proxy_probe_note "$label" 0)"
  fi

  local before_check
  before_check=$(wc -l <"$INTEROP_LOGS/$label.log" 2>/dev/null || echo 0)
  check_run "$label"
  row="explicit port, $label: homeport check $EP"
  if [[ "$expect" == fails ]]; then
    row="$row reports host_port_rejected_by_proxy with the fix"
    local sev=${CHECK_HPR%%$'\t'*} fix=${CHECK_HPR#*$'\t'}
    if [[ -n "$CHECK_HPR" && "$sev" == error && "$CHECK_RC" == 1 && "$fix" == *'req.hdr(host),host_only'* ]]; then
      scenario_result "$row" pass "exit 1; findings $CHECK_IDS; fix: ${fix:0:200}"
    else
      scenario_result "$row" fail "exit $CHECK_RC; findings $CHECK_IDS; host_port_rejected_by_proxy: ${CHECK_HPR:-absent}$(proxy_probe_note "$label" "$before_check")"
    fi
    [[ -z "$fix" ]] || CHECK_FIX=$fix
  else
    row="$row reports no host_port_rejected_by_proxy"
    if [[ -z "$CHECK_HPR" && "$CHECK_RC" == 0 ]]; then
      scenario_result "$row" pass "exit 0; findings $CHECK_IDS"
    else
      scenario_result "$row" fail "exit $CHECK_RC; findings $CHECK_IDS"
    fi
  fi
  proxy_stop
}

start_haproxy_exact() {
  haproxy_cfg "$WORK/proxy/haproxy-exact.cfg" "hdr(host) -i $EP"
  haproxy_start haproxy-exact "$WORK/proxy/haproxy-exact.cfg" "$EP_IP:443" "$EP_IP:8448"
}
start_nginx() {
  mkdir -p "$WORK/proxy/nginx"
  nginx_cfg "$WORK/proxy/nginx/nginx.conf"
  nginx_start nginx "$WORK/proxy/nginx/nginx.conf" "$WORK/proxy/nginx" "$EP_IP:443" "$EP_IP:8448"
}
start_caddy() {
  mkdir -p "$WORK/proxy/caddy"
  caddy_cfg "$WORK/proxy/caddy/Caddyfile"
  caddy_start caddy "$WORK/proxy/caddy/Caddyfile" "$WORK/proxy/caddy" "$EP_IP:443" "$EP_IP:8448"
}
# The fix as check wrote it: the acl expression is taken from its text
# (`req.hdr(host),host_only -i <name>`), not from this script.
start_haproxy_fixed() {
  local expr
  expr=$(grep -oE 'req\.hdr\(host\),host_only -i [A-Za-z0-9.-]+' <<<"${CHECK_FIX:-}" | head -n 1) || true
  if [[ -z "$expr" ]]; then
    log "check's fix has no 'req.hdr(host),host_only -i NAME' to apply; using the documented form"
    expr="req.hdr(host),host_only -i $EP"
  fi
  # The fix names the proxy's own host (ep.test), as the acl did.
  expr=${expr% -i *}" -i $EP"
  log "applying check's haproxy fix: acl host_ok $expr"
  haproxy_cfg "$WORK/proxy/haproxy-fixed.cfg" "$expr"
  haproxy_start haproxy-fixed "$WORK/proxy/haproxy-fixed.cfg" "$EP_IP:443" "$EP_IP:8448"
}

HSQ_RUNS=0
synapse_start "$HSQ" "$WORK/hsq"
variant haproxy-exact start_haproxy_exact fails
# The same ACL with m.server ep.test:443, the form most often published.
# Synapse sends Host: ep.test:443 over HTTP/1.1 and is refused in the same way.
start_haproxy_exact_443() {
  haproxy_cfg "$WORK/proxy/haproxy-exact-443.cfg" "hdr(host) -i $EP"
  haproxy_start haproxy-exact-443 "$WORK/proxy/haproxy-exact-443.cfg" "$EP_IP:443" "$EP_IP:8448"
}
MSERVER=ep.test:443 WELL_KNOWN='{"m.server":"ep.test:443"}'
variant haproxy-exact-443 start_haproxy_exact_443 fails
MSERVER=ep.test:8448 WELL_KNOWN='{"m.server":"ep.test:8448"}'
variant nginx start_nginx works
variant caddy start_caddy works
variant haproxy-fixed start_haproxy_fixed works

finish_scenarios
