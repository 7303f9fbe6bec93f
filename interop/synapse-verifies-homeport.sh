#!/usr/bin/env bash
# Scenario set: real Synapse verifies homeport's signed requests.
#
# dnsmasq on 127.0.0.130:53; Synapse hs1.test on 127.0.0.131; orig.test ->
# 127.0.0.132, where `homeport serve` (server_name orig.test, a signing key
# made for this run) publishes its keys on 8448 (step 6; .well-known 404 on
# 443). `homeport request` signs federation requests as orig.test with that
# key; Synapse has never seen orig.test, so it discovers it, fetches its keys
# from homeport serve and must answer as for any valid peer:
#   - a profile query for a user hs1.test does not have: 404 M_NOT_FOUND
#     (not 401), after a key fetch that homeport serve logged;
#   - a profile query for a user it has: 200 with the display name;
#   - a request signed with a key orig.test does not publish: 401 (the
#     control: Synapse really checks the signature).
#
# Run alone:   bash interop/synapse-verifies-homeport.sh
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

DNS_IP=127.0.0.130
HS1=hs1.test HS1_IP=127.0.0.131
ORIG=orig.test ORIG_IP=127.0.0.132

ensure_homeport
make_workdir verifies WORK
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS" "$WORK/orig"
ca_init "$WORK/ca"

dnsmasq_start "$WORK/dns" "$DNS_IP" \
  "host-record=$HS1,$HS1_IP" \
  "host-record=$ORIG,$ORIG_IP"

hp_keygen "$WORK/orig/signing.key"
ca_leaf "$WORK/ca" "$ORIG" "DNS:$ORIG"
hp_serve_config "$WORK/orig/homeport.yaml" "$ORIG" "$WORK/orig/signing.key" "$WORK/ca/$ORIG" \
  "$ORIG_IP:443" "$ORIG_IP:8448"
hp_serve_start orig "$WORK/orig/homeport.yaml"

synapse_venv
synapse_init "$HS1" "$WORK/hs1" "$HS1_IP"
synapse_start "$HS1" "$WORK/hs1"
synapse_register "$HS1" "$WORK/hs1" alice "alice-password-$$"

NET=(--dns "$INTEROP_DNS" --ca-file "$INTEROP_CA_DIR/ca.crt" --no-system-roots --timeout 30s)

# hp_request OUT KEYFILE PATH: homeport request to hs1.test as orig.test;
# the response (JSON) in OUT, stderr in OUT.err; sets HP_RC.
hp_request() {
  local out=$1 key=$2 path=$3
  HP_RC=0
  timeout 60 "$HOMEPORT_BIN" request "$HS1" "$path" --signing-key "$key" --origin "$ORIG" \
    "${NET[@]}" --json >"$out" 2>"$out.err" || HP_RC=$?
}

# "status errcode body-start" from homeport request --json
response_summary() {
  python3 - "$1" <<'EOF'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except ValueError as e:
    print(f"? not JSON ({e}): {open(sys.argv[1]).read()[:200]!r}")
    sys.exit(0)
body = doc.get("body")
if isinstance(body, str):
    try:
        body = json.loads(body)
    except ValueError:
        pass
err = body.get("errcode", "-") if isinstance(body, dict) else "-"
print(doc.get("status"), err, json.dumps(body, separators=(",", ":"))[:160])
EOF
}

key_fetches() {
  hp_access orig /_matrix/key/v2/server | awk -F'\t' '{ print $1 " sni=" $2 " host=" $3 " " $6 }' | paste -sd';' -
}

# 1. unknown user: 404, and Synapse fetched orig.test's key from homeport serve.
out="$WORK/req-nobody.json"
hp_request "$out" "$WORK/orig/signing.key" "/_matrix/federation/v1/query/profile?user_id=@nobody:$HS1"
read -r status errcode body <<<"$(response_summary "$out")"
fetches=$(key_fetches)
row="Synapse verifies homeport request (fresh key $(hp_key_id "$WORK/orig/signing.key")): unknown user"
if [[ "$status" == 404 && "$errcode" == M_NOT_FOUND && -n "$fetches" ]]; then
  scenario_result "$row" pass "404 M_NOT_FOUND (homeport request exit $HP_RC); Synapse fetched the key: $fetches"
else
  grep -E "orig.test|X-Matrix|401" "$(synapse_logfile "$HS1" "$WORK/hs1")" | tail -n 8 | sed 's/^/    /' >&2 || true
  scenario_result "$row" fail "want 404 M_NOT_FOUND after a key fetch; got $status $errcode $body (exit $HP_RC, $(head -c 200 "$out.err")); key fetches: ${fetches:-none}"
fi

# 2. a user hs1.test has: 200 and her display name.
out="$WORK/req-alice.json"
hp_request "$out" "$WORK/orig/signing.key" "/_matrix/federation/v1/query/profile?user_id=@alice:$HS1"
read -r status errcode body <<<"$(response_summary "$out")"
row="Synapse verifies homeport request: existing user's profile"
if [[ "$status" == 200 && "$HP_RC" == 0 && "$body" == *'"displayname":"alice"'* ]]; then
  scenario_result "$row" pass "200 $body"
else
  scenario_result "$row" fail "want 200 with displayname alice; got $status $errcode $body (exit $HP_RC, $(head -c 200 "$out.err"))"
fi

# 3. the control: a key orig.test does not publish.
hp_keygen "$WORK/orig/unpublished.key"
out="$WORK/req-unpublished.json"
hp_request "$out" "$WORK/orig/unpublished.key" "/_matrix/federation/v1/query/profile?user_id=@alice:$HS1"
read -r status errcode body <<<"$(response_summary "$out")"
row="Synapse rejects homeport request signed with an unpublished key"
if [[ "$status" == 401 ]]; then
  scenario_result "$row" pass "401 $errcode (key $(hp_key_id "$WORK/orig/unpublished.key") is not in orig.test's key document)"
else
  scenario_result "$row" fail "want 401; got $status $errcode $body (exit $HP_RC)"
fi

finish_scenarios
