#!/usr/bin/env bash
# Scenario set: `homeport keys` against real Synapse.
#
# Starts dnsmasq on 127.0.0.60:53 (hs1.test -> 127.0.0.61, hs2.test ->
# 127.0.0.62, *.test otherwise NXDOMAIN) and two Synapses with test-CA
# certificates on 8448 of those addresses, then:
#   - checks the set-up itself with curl (each server's own keys, hs1 as a
#     notary for hs2) and `homeport resolve`, so these rows pass whether or not
#     `homeport keys` exists yet;
#   - runs `homeport keys` directly, through hs1 as notary, and two negative
#     cases (a name with no server, a CA that is not the servers').
#
# Run alone:   bash interop/synapse-keys.sh     (prints its own table)
# Needs root (apt-get, port 53, unshare -m), python3, curl, openssl; the first
# run installs dnsmasq-base and a cached Synapse venv (see lib/synapse.sh).
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

DNS_IP=127.0.0.60
HS1=hs1.test HS1_IP=127.0.0.61
HS2=hs2.test HS2_IP=127.0.0.62

ensure_homeport
make_workdir synapse-keys WORK
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS"

ca_init "$WORK/ca"
# A second CA that signed nothing the servers use, for the untrusted-CA row.
mkdir -p "$WORK/other-ca"
# (Another name too: a CA with the same name would fail as a bad signature.)
(ca_init "$WORK/other-ca" "untrusted CA")

dnsmasq_start "$WORK/dns" "$DNS_IP" \
  "host-record=$HS1,$HS1_IP" \
  "host-record=$HS2,$HS2_IP"

synapse_venv
synapse_init "$HS1" "$WORK/hs1" "$HS1_IP"
synapse_init "$HS2" "$WORK/hs2" "$HS2_IP"
synapse_start "$HS1" "$WORK/hs1"
synapse_start "$HS2" "$WORK/hs2"
log "Synapse $("$SYNAPSE_PY" -c 'import synapse; print(synapse.__version__)')"

keycheck() { "$SYNAPSE_PY" "$here/lib/keycheck.py" "$@"; }

# key id of the first key in a Synapse signing key file: "ed25519:<version>"
key_id() { awk 'NR == 1 { print $1 ":" $2 }' "$1"; }

# row NAME CMD...: run a check that prints its detail; pass when it exits 0.
row() {
  local name=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if ((rc == 0)); then
    scenario_result "$name" pass "$out"
  else
    scenario_result "$name" fail "$out"
  fi
}

# ---- the set-up, checked with curl -----------------------------------------
server_keys_row() {
  local name=$1 dir=$2 out="$WORK/$1.server.json"
  synapse_curl "$name" "$dir" /_matrix/key/v2/server -f --max-time 10 -o "$out" ||
    { echo "curl failed"; return 1; }
  keycheck server "$out" "$name" "$dir/$name.signing.key"
}
row "curl: $HS1 /_matrix/key/v2/server" server_keys_row "$HS1" "$WORK/hs1"
row "curl: $HS2 /_matrix/key/v2/server" server_keys_row "$HS2" "$WORK/hs2"

notary_post_row() {
  local out="$WORK/notary-post.json" kid
  kid=$(key_id "$WORK/hs2/$HS2.signing.key")
  synapse_curl "$HS1" "$WORK/hs1" /_matrix/key/v2/query -f --max-time 30 -o "$out" \
    -H 'Content-Type: application/json' -X POST \
    --data "{\"server_keys\":{\"$HS2\":{\"$kid\":{\"minimum_valid_until_ts\":0}}}}" ||
    { echo "curl failed"; return 1; }
  keycheck notary "$out" "$HS2" "$WORK/hs2/$HS2.signing.key" "$HS1" "$WORK/hs1/$HS1.signing.key"
}
row "curl: $HS1 as notary, POST key/v2/query for $HS2" notary_post_row

notary_get_row() {
  local out="$WORK/notary-get.json"
  synapse_curl "$HS1" "$WORK/hs1" "/_matrix/key/v2/query/$HS2" -f --max-time 30 -o "$out" ||
    { echo "curl failed"; return 1; }
  keycheck notary "$out" "$HS2" "$WORK/hs2/$HS2.signing.key" "$HS1" "$WORK/hs1/$HS1.signing.key"
}
row "curl: $HS1 as notary, GET key/v2/query/$HS2" notary_get_row

# With a key id Synapse really tries to fetch (without one it only answers
# from its cache): discovery fails with NXDOMAIN.
notary_unknown_row() {
  local out="$WORK/notary-unknown.json"
  synapse_curl "$HS1" "$WORK/hs1" /_matrix/key/v2/query -f --max-time 30 -o "$out" \
    -H 'Content-Type: application/json' -X POST \
    --data '{"server_keys":{"nosuch.test":{"ed25519:a_none":{"minimum_valid_until_ts":0}}}}' ||
    { echo "curl failed: $(head -c 300 "$out" 2>/dev/null)"; return 1; }
  keycheck empty "$out"
}
row "curl: $HS1 as notary for nosuch.test (no server)" notary_unknown_row

# ---- homeport ---------------------------------------------------------------
NET=(--dns "$INTEROP_DNS" --ca-file "$INTEROP_CA_DIR/ca.crt" --no-system-roots --timeout 20s)

# hp OUT CMD-ARGS...: run homeport, stdout to OUT, stderr to OUT.err; sets HP_RC
hp() {
  local out=$1
  shift
  HP_RC=0
  timeout 60 "$HOMEPORT_BIN" "$@" >"$out" 2>"$out.err" || HP_RC=$?
}

resolve_row() {
  local out="$WORK/resolve-hs1.json"
  hp "$out" resolve "$HS1" "${NET[@]}" --json
  ((HP_RC == 0)) || { echo "exit $HP_RC: $(head -c 300 "$out.err")"; return 1; }
  python3 - "$out" "$HS1" "$HS1_IP" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
name, ip = sys.argv[2], sys.argv[3]
want = [{"host": name, "port": 8448, "addrs": [ip]}]
got = [{k: t.get(k) for k in ("host", "port", "addrs")} for t in doc.get("targets", [])]
if got != want or doc.get("host_header") != name or doc.get("sni") != name:
    print(f"step {doc.get('step')}, targets {got}, host_header {doc.get('host_header')}, want {want}")
    sys.exit(1)
print(f"step {doc['step']}, {name}:8448 -> {ip}, host/SNI {name}")
EOF
}
row "homeport resolve $HS1" resolve_row

keys_missing=""
if ! homeport_has keys; then
  keys_missing="homeport has no 'keys' subcommand yet"
  log "$keys_missing: its rows fail until it lands"
fi

keys_row() { # keys_row NAME DIR VIA [NOTARY]
  local name=$1 dir=$2 via=$3 notary=${4:-} out
  out="$WORK/keys-$name-$via.json"
  if [[ -n "$notary" ]]; then
    hp "$out" keys "$name" --notary "$notary" "${NET[@]}" --json
  else
    hp "$out" keys "$name" "${NET[@]}" --json
  fi
  if [[ -n "$keys_missing" ]]; then
    echo "exit $HP_RC: $keys_missing"
    return 1
  fi
  if ((HP_RC != 0)); then
    echo "exit $HP_RC: $(head -c 300 "$out.err") $(head -c 300 "$out")"
    return 1
  fi
  keycheck homeport "$out" "$name" "$dir/$name.signing.key" "$via" ${notary:+"$notary"}
}
row "homeport keys $HS1 (direct)" keys_row "$HS1" "$WORK/hs1" direct
row "homeport keys $HS2 --notary $HS1" keys_row "$HS2" "$WORK/hs2" notary "$HS1"

# The first of `problems` in homeport's JSON, else the start of stderr.
first_problem() {
  python3 -c 'import json,sys; print((json.load(open(sys.argv[1])).get("problems") or [""])[0])' \
    "$1" 2>/dev/null || head -c 200 "$1.err"
}

keys_fail_row() { # keys_fail_row WHY ARGS...: expect exit 1
  local out="$WORK/keys-fail-$1.json"
  shift
  hp "$out" keys "$@"
  if ((HP_RC == 1)); then
    echo "exit 1: $(first_problem "$out")"
    return 0
  fi
  if [[ -n "$keys_missing" ]]; then
    echo "exit $HP_RC, want 1: $keys_missing"
  else
    echo "exit $HP_RC, want 1: $(head -c 200 "$out.err") $(head -c 200 "$out")"
  fi
  return 1
}
row "homeport keys nosuch.test (no server) exits 1" \
  keys_fail_row nxdomain nosuch.test "${NET[@]}" --json
row "homeport keys nosuch.test --notary $HS1 exits 1" \
  keys_fail_row notary-nxdomain nosuch.test --notary "$HS1" "${NET[@]}" --json
row "homeport keys $HS1, CA not trusted, exits 1" \
  keys_fail_row untrusted "$HS1" --dns "$INTEROP_DNS" --ca-file "$WORK/other-ca/ca.crt" \
  --no-system-roots --timeout 20s --json

finish_scenarios
