#!/usr/bin/env bash
# Scenario set: certificates, with real Synapse.
#
# dnsmasq on 127.0.0.160:53; Synapse hs1.test on 127.0.0.161 (the peer).
#
# 1. A certificate valid only for the SRV target: srv.test has
#    `_matrix-fed._tcp.srv.test -> target.srv.test:8462` (step 4), and the
#    homeport serve there presents a certificate for target.srv.test only.
#    Synapse's key fetch must fail (the TLS name is srv.test), and
#    `homeport check srv.test` must report cert_valid_only_for_srv_target.
# 2. Reload under load: reload.test (step 6, 127.0.0.164:8448) is served by
#    homeport serve. While Synapse fetches its keys in a loop (every notary
#    query forces a fresh fetch: minimum_valid_until_ts far in the future),
#    the certificate files are replaced by a new pair and homeport serve gets
#    SIGHUP, several times. Every fetch must succeed, homeport must log no
#    refused reload, each new certificate must be the one served, and the last
#    key document Synapse fetched must carry the new certificate's
#    tls_fingerprints.
#
# Run alone:   bash interop/certificates.sh
# Needs root (port 53, 443, 8448, unshare -m).
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

DNS_IP=127.0.0.160
HS1=hs1.test HS1_IP=127.0.0.161
SRV=srv.test SRV_IP=127.0.0.162 TARGET=target.srv.test TARGET_IP=127.0.0.163 TARGET_PORT=8462
RL=reload.test RL_IP=127.0.0.164
SWAPS=${HOMEPORT_INTEROP_CERT_SWAPS:-5}
FETCHES=${HOMEPORT_INTEROP_CERT_FETCHES:-24}
FAR_FUTURE=4102444800000 # 2100-01-01: every query is a cache miss

ensure_homeport
make_workdir certificates WORK
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS" "$WORK/srv" "$WORK/rl"
ca_init "$WORK/ca"

dnsmasq_start "$WORK/dns" "$DNS_IP" \
  "host-record=$HS1,$HS1_IP" \
  "host-record=$SRV,$SRV_IP" \
  "host-record=$TARGET,$TARGET_IP" \
  "srv-host=_matrix-fed._tcp.$SRV,$TARGET,$TARGET_PORT,10,5" \
  "host-record=$RL,$RL_IP"

# srv.test: the certificate names the SRV target only.
hp_keygen "$WORK/srv/signing.key"
ca_leaf "$WORK/ca" srv-target-only "DNS:$TARGET"
hp_serve_config "$WORK/srv/homeport.yaml" "$SRV" "$WORK/srv/signing.key" "$WORK/ca/srv-target-only" \
  "$TARGET_IP:$TARGET_PORT"
hp_serve_start srv "$WORK/srv/homeport.yaml"

# reload.test: live files that the swaps replace.
hp_keygen "$WORK/rl/signing.key"
ca_leaf "$WORK/ca" rl-0 "DNS:$RL"
cp "$WORK/ca/rl-0.crt" "$WORK/rl/live.crt"
cp "$WORK/ca/rl-0.key" "$WORK/rl/live.key"
hp_serve_config "$WORK/rl/homeport.yaml" "$RL" "$WORK/rl/signing.key" "$WORK/rl/live" \
  "$RL_IP:443" "$RL_IP:8448"
hp_serve_start rl "$WORK/rl/homeport.yaml"
RL_PID=$HP_SERVE_PID

synapse_venv
synapse_init "$HS1" "$WORK/hs1" "$HS1_IP"
synapse_start "$HS1" "$WORK/hs1"
SYN_LOG=$(synapse_logfile "$HS1" "$WORK/hs1")

keycheck() { "$SYNAPSE_PY" "$here/lib/keycheck.py" "$@"; }

# ---- 1. certificate valid only for the SRV target ------------------------------
out="$WORK/srv/notary.json"
kid=$(hp_key_id "$WORK/srv/signing.key")
code=$(synapse_key_query "$HS1" "$WORK/hs1" "$SRV" "$kid" 0 "$out" 2>"$out.err") || code="curl failed: $(head -c 200 "$out.err")"
syn_said=$(grep -F "$SRV" "$SYN_LOG" | grep -E "WARNING|ERROR" | tail -n 1 | sed -E 's/^[0-9-]+ [0-9:,]+ - //' | cut -c1-300) || true
served=$(hp_access srv /_matrix/key/v2/server | wc -l)
row="certificates: Synapse rejects a certificate valid only for the SRV target ($TARGET)"
if [[ "$code" == 200 ]] && empty=$(keycheck empty "$out") && ((served == 0)); then
  scenario_result "$row" pass "$empty; no key request reached homeport; Synapse: ${syn_said:-?}"
else
  scenario_result "$row" fail "HTTP $code $(head -c 200 "$out"); key requests that reached homeport: $served; Synapse: ${syn_said:-?}"
fi

out="$WORK/srv/check.json"
rc=0
timeout 90 "$HOMEPORT_BIN" check "$SRV" --dns "$INTEROP_DNS" --ca-file "$INTEROP_CA_DIR/ca.crt" \
  --no-system-roots --timeout 30s --json >"$out" 2>"$out.err" || rc=$?
found=$(python3 - "$out" <<'EOF' 2>/dev/null
import json, sys
doc = json.load(open(sys.argv[1]))
ids = ",".join("%s(%s)" % (f.get("id"), f.get("severity")) for f in doc.get("findings", []))
hit = [f for f in doc.get("findings", []) if f.get("id") == "cert_valid_only_for_srv_target"]
ev = hit[0].get("evidence", "") if hit else ""
if isinstance(ev, dict):
    ev = json.dumps(ev, separators=(",", ":"))
print(("yes" if hit and hit[0].get("severity") == "error" else "no") + "\t" + ids + "\t" + str(ev)[:200])
EOF
) || found="no	unreadable: $(head -c 200 "$out.err")	"
IFS=$'\t' read -r hit ids evidence <<<"$found"
row="certificates: homeport check $SRV reports cert_valid_only_for_srv_target"
if [[ "$hit" == yes && "$rc" == 1 ]]; then
  scenario_result "$row" pass "exit 1; findings $ids; $evidence"
else
  scenario_result "$row" fail "exit $rc; findings $ids"
fi

# ---- 2. SIGHUP reload under Synapse key fetches ----------------------------------
RL_KID=$(hp_key_id "$WORK/rl/signing.key")
fingerprint_of() { openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2; }
served_fingerprint() {
  openssl s_client -connect "$RL_IP:8448" -servername "$RL" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2
}
# tls_fingerprints (base64 SHA-256) as homeport publishes them, from a PEM file
b64_fingerprint_of() {
  openssl x509 -in "$1" -outform der | openssl dgst -sha256 -binary | base64 | tr -d '=\n'
}

# One Synapse fetch per line: "i http-code homeport-200s-before after" (the
# answers are checked after the loop, to keep the loop tight).
key_200s() { grep -cF '"path":"/_matrix/key/v2/server","status":200' "$INTEROP_LOGS/hp-rl.log" || true; }
fetch_loop() {
  local i code before after
  for ((i = 1; i <= FETCHES; i++)); do
    before=$(key_200s)
    code=$(synapse_key_query "$HS1" "$WORK/hs1" "$RL" "$RL_KID" "$FAR_FUTURE" "$WORK/rl/fetch-$i.json" 2>/dev/null) || code=curl-failed
    after=$(key_200s)
    printf '%s %s %s %s\n' "$i" "$code" "$before" "$after"
    sleep 0.15
  done
}

fetch_loop >"$WORK/rl/fetches.txt" 2>"$WORK/rl/fetches.err" &
loop_pid=$!
register_pid "$loop_pid" fetch-loop
log "Synapse key fetch loop (pid $loop_pid): $FETCHES fetches; $SWAPS certificate swaps"

swap_notes=()
swap_fail=0
for ((n = 1; n <= SWAPS; n++)); do
  sleep 0.8
  ca_leaf "$WORK/ca" "rl-$n" "DNS:$RL"
  # Whole files, renamed into place (certificate, then key), then SIGHUP.
  cp "$WORK/ca/rl-$n.crt" "$WORK/rl/live.crt.new"
  cp "$WORK/ca/rl-$n.key" "$WORK/rl/live.key.new"
  mv -f "$WORK/rl/live.crt.new" "$WORK/rl/live.crt"
  mv -f "$WORK/rl/live.key.new" "$WORK/rl/live.key"
  kill -HUP "$RL_PID"
  want=$(fingerprint_of "$WORK/ca/rl-$n.crt")
  t0=$SECONDS
  got=""
  while ((SECONDS - t0 < 10)); do
    got=$(served_fingerprint)
    [[ "$got" == "$want" ]] && break
    sleep 0.1
  done
  if [[ "$got" == "$want" ]]; then
    swap_notes+=("#$n served")
  else
    swap_notes+=("#$n NOT served (still ${got:0:11}...)")
    swap_fail=1
  fi
done
rc=0
wait "$loop_pid" || rc=$?
stop_pid "$loop_pid"

# The fetches.
total=0 good=0 bad_lines=()
while read -r i code before after; do
  total=$((total + 1))
  krc=0
  keycheck notary "$WORK/rl/fetch-$i.json" "$RL" "$WORK/rl/signing.key" "$HS1" "$WORK/hs1/$HS1.signing.key" \
    >"$WORK/rl/fetch-$i.check" 2>&1 || krc=$?
  if [[ "$code" == 200 && "$krc" == 0 ]] && ((after > before)); then
    good=$((good + 1))
  else
    bad_lines+=("#$i HTTP $code keycheck=$krc homeport 200s $before->$after $(head -c 120 "$WORK/rl/fetch-$i.check")")
  fi
done <"$WORK/rl/fetches.txt"
refused=$(grep -c 'reload refused' "$INTEROP_LOGS/hp-rl.log") || true
reloaded=$(grep -c '"certificate reloaded"' "$INTEROP_LOGS/hp-rl.log") || true
syn_errors=$(grep -F "$RL" "$SYN_LOG" | grep -cE "WARNING|ERROR") || true
row="certificates: $SWAPS SIGHUP certificate swaps under $FETCHES Synapse key fetches, all fetches succeed"
if ((rc == 0 && total == FETCHES && good == FETCHES && refused == 0 && syn_errors == 0)); then
  scenario_result "$row" pass "$good/$FETCHES fetched by Synapse and served by homeport; $reloaded reloads logged, 0 refused; Synapse logged no warning for $RL"
else
  scenario_result "$row" fail "loop exit $rc; $good/$total ok (${bad_lines[*]:-}); reloads logged $reloaded, refused $refused; Synapse warnings for $RL: $syn_errors $(grep -F "$RL" "$SYN_LOG" | grep -E "WARNING|ERROR" | tail -n 1 | cut -c1-200)"
fi

# The new certificate: served after each swap, and in the key document
# Synapse fetched last.
out="$WORK/rl/final.json"
code=$(synapse_key_query "$HS1" "$WORK/hs1" "$RL" "$RL_KID" "$FAR_FUTURE" "$out" 2>/dev/null) || code=curl-failed
want_b64=$(b64_fingerprint_of "$WORK/ca/rl-$SWAPS.crt")
published=$(python3 -c '
import json, sys
doc = json.load(open(sys.argv[1]))
for e in doc.get("server_keys", []):
    print(",".join(f.get("sha256", "") for f in e.get("tls_fingerprints", [])))
' "$out" 2>/dev/null) || published=""
row="certificates: after each SIGHUP the new certificate is served"
if ((swap_fail == 0)) && [[ "$code" == 200 && "$published" == *"$want_b64"* ]]; then
  scenario_result "$row" pass "${swap_notes[*]}; the key document Synapse fetched last has tls_fingerprints $want_b64 (certificate #$SWAPS)"
else
  scenario_result "$row" fail "${swap_notes[*]}; Synapse's last fetch HTTP $code tls_fingerprints ${published:-none}, want $want_b64"
fi

finish_scenarios
