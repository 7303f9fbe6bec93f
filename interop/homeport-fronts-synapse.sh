#!/usr/bin/env bash
# Scenario set: homeport serve in front of a real Synapse.
#
# dnsmasq on 127.0.0.140:53. Synapse hsa.test has only a plain listener
# (127.0.0.143:8008, client + federation). `homeport serve` federates for it:
# server_name hsa.test, signing_key_path = Synapse's own key file,
# .well-known on hsa.test:443 (127.0.0.141) naming fed.hsa.test (step 3.5),
# TLS on fed.hsa.test:8448 (127.0.0.142), proxy.backend = the plain listener.
# A second, ordinary Synapse hsb.test (127.0.0.144, TLS on 8448) federates
# with hsa.test through it:
#   - keys: hsb.test as notary (POST key/v2/query) returns hsa.test's key,
#     the one in Synapse's key file, fetched from homeport on fed.hsa.test:8448;
#   - hsb.test -> hsa.test: a client on hsb.test asks for @alice:hsa.test's
#     profile (GET /_matrix/client/v3/profile/...), so hsb.test sends a signed
#     federation query through homeport to hsa.test's Synapse;
#   - hsa.test -> hsb.test: the other way (hsa.test's Synapse signs with the
#     key file homeport publishes; hsb.test must accept it).
#
# Run alone:   bash interop/homeport-fronts-synapse.sh
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

DNS_IP=127.0.0.140
HSA=hsa.test HSA_IP=127.0.0.141 FED=fed.hsa.test FED_IP=127.0.0.142 HSA_SYN_IP=127.0.0.143
HSB=hsb.test HSB_IP=127.0.0.144

ensure_homeport
make_workdir fronts WORK
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS" "$WORK/hp"
ca_init "$WORK/ca"

dnsmasq_start "$WORK/dns" "$DNS_IP" \
  "host-record=$HSA,$HSA_IP" \
  "host-record=$FED,$FED_IP" \
  "host-record=$HSB,$HSB_IP"

synapse_venv
SYNAPSE_PLAIN_PORT=8008 synapse_init "$HSA" "$WORK/hsa" "$HSA_SYN_IP"
synapse_init "$HSB" "$WORK/hsb" "$HSB_IP"

ca_leaf "$WORK/ca" hp-hsa "DNS:$HSA" "DNS:$FED"
hp_serve_config "$WORK/hp/homeport.yaml" "$HSA" "$WORK/hsa/$HSA.signing.key" "$WORK/ca/hp-hsa" \
  "$HSA_IP:443" "$FED_IP:8448" -- \
  "well_known:" "  server: $FED" \
  "proxy:" "  backend: http://$HSA_SYN_IP:8008" \
  "federation_custom_ca_list: ['$INTEROP_CA_DIR/ca.crt']" \
  "ip_range_blacklist: []" \
  "dns:" "  nameservers: ['$INTEROP_DNS']"
hp_serve_start hsa "$WORK/hp/homeport.yaml"

synapse_start "$HSA" "$WORK/hsa"
synapse_start "$HSB" "$WORK/hsb"
synapse_register "$HSA" "$WORK/hsa" alice "alice-password-$$"
synapse_register "$HSB" "$WORK/hsb" bob "bob-password-$$"

keycheck() { "$SYNAPSE_PY" "$here/lib/keycheck.py" "$@"; }
access() { # access PATH-PREFIX: homeport's log lines for it, one string
  hp_access hsa "$1" | awk -F'\t' '{ print $4 " " $5 " on " $1 " sni=" $2 " host=" $3 " -> " $6 }' |
    paste -sd';' -
}
syn_log_tail() { # syn_log_tail DIR PATTERN
  grep -E "$2" "$(synapse_logfile x "$1")" 2>/dev/null | tail -n 6 | sed 's/^/    /' >&2 || true
}

# ---- keys through homeport -------------------------------------------------
kid=$(hp_key_id "$WORK/hsa/$HSA.signing.key")
out="$WORK/notary-hsa.json"
code=$(synapse_key_query "$HSB" "$WORK/hsb" "$HSA" "$kid" 0 "$out" 2>"$out.err") || code="curl failed: $(head -c 200 "$out.err")"
row="homeport fronts Synapse: $HSB fetches $HSA's key through homeport"
detail=""
if [[ "$code" == 200 ]] && detail=$(keycheck notary "$out" "$HSA" "$WORK/hsa/$HSA.signing.key" "$HSB" "$WORK/hsb/$HSB.signing.key"); then
  seen=$(access /_matrix/key/v2/server)
  if [[ "$seen" == *"on $FED_IP:8448 sni=$FED host=$FED -> 200"* ]]; then
    scenario_result "$row" pass "$detail; homeport log: $seen"
  else
    scenario_result "$row" fail "the key came back but homeport did not log the fetch on $FED_IP:8448 sni=$FED host=$FED: ${seen:-nothing}"
  fi
else
  syn_log_tail "$WORK/hsb" "$HSA"
  scenario_result "$row" fail "HTTP $code: ${detail:-$(head -c 200 "$out")}; homeport log: $(access /)"
fi

# ---- hsb.test -> hsa.test: signed federation query through homeport ---------
out="$WORK/profile-alice.json"
code=$(synapse_client "$HSB" "$WORK/hsb" "/_matrix/client/v3/profile/@alice:$HSA" -o "$out" -w '%{http_code}' --max-time 60 2>"$out.err") || code="curl failed: $(head -c 200 "$out.err")"
row="homeport fronts Synapse: $HSB queries @alice:$HSA's profile (federation through homeport)"
seen=$(access /_matrix/federation/v1/query/profile)
if [[ "$code" == 200 ]] && grep -q '"displayname":"alice"' "$out" && [[ "$seen" == *"-> 200"* ]]; then
  scenario_result "$row" pass "200 $(head -c 100 "$out"); homeport log: $seen"
else
  syn_log_tail "$WORK/hsb" "$HSA|profile"
  syn_log_tail "$WORK/hsa" "profile|401|X-Matrix"
  scenario_result "$row" fail "HTTP $code $(head -c 200 "$out"); homeport log: ${seen:-no profile query}"
fi

# ---- hsa.test -> hsb.test: hsb.test checks hsa.test's signature --------------
out="$WORK/profile-bob.json"
code=$(synapse_client "$HSA" "$WORK/hsa" "/_matrix/client/v3/profile/@bob:$HSB" -o "$out" -w '%{http_code}' --max-time 60 2>"$out.err") || code="curl failed: $(head -c 200 "$out.err")"
row="homeport fronts Synapse: $HSA's Synapse queries @bob:$HSB (signature checked against homeport's keys)"
if [[ "$code" == 200 ]] && grep -q '"displayname":"bob"' "$out"; then
  scenario_result "$row" pass "200 $(head -c 100 "$out")"
else
  syn_log_tail "$WORK/hsb" "$HSA|401"
  scenario_result "$row" fail "HTTP $code $(head -c 200 "$out")"
fi

finish_scenarios
