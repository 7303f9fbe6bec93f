#!/usr/bin/env bash
# Scenario set: real Synapse discovers homeport through every discovery step.
#
# One `homeport serve` per server name, each set up for one step of the
# Server-Server API's discovery (2, 3.1 with and without a port, 3.2, 3.3,
# 3.4, 3.5, 4, 5, 6) with dnsmasq records (127.0.0.100:53) and, where the
# step needs it, .well-known/matrix/server served by the same homeport serve
# on 443 of the server name. Synapse hs1.test (127.0.0.101) is asked, as a
# notary, for each name's key (POST /_matrix/key/v2/query with the key id), so
# it runs its whole discovery against homeport. Each row passes when:
#   - the key comes back signed by the name and by hs1.test, and
#   - homeport's request log (the homeport::access lines) shows Synapse's
#     /_matrix/key/v2/server request on the listener the step leads to, with
#     the SNI and Host header of the step table (docs/delegation.md): Host
#     has a port only in 2, 3.1 (when m.server has one) and 3.2; SNI is the
#     server name or the delegated name, never the SRV target, and absent for
#     IP literals.
# Then `homeport resolve` on each name must agree with what Synapse did
# (same address and port, Host and SNI).
#
# Run alone:   bash interop/synapse-discovers-homeport.sh
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

DNS_IP=127.0.0.100
HS1=hs1.test HS1_IP=127.0.0.101

ensure_homeport
make_workdir discovers WORK
INTEROP_LOGS="$WORK/logs"
mkdir -p "$INTEROP_LOGS"
ca_init "$WORK/ca"

# One line per domain, |-separated:
#   step | server name | DNS lines (;) | listeners (,) | m.server ("" = none,
#   "-" = nothing on 443) | certificate SANs (,) |
#   expected listener | expected SNI ("-" = none) | expected Host
DOMAINS=(
  "2|s2.test:8449|host-record=s2.test,127.0.0.102|127.0.0.102:8449|-|DNS:s2.test|127.0.0.102:8449|s2.test|s2.test:8449"
  "3.1|s31.test|host-record=s31.test,127.0.0.103|127.0.0.103:443,127.0.0.104:8450|127.0.0.104:8450|DNS:s31.test,IP:127.0.0.104|127.0.0.104:8450|-|127.0.0.104:8450"
  "3.1 (no port)|s31b.test|host-record=s31b.test,127.0.0.105|127.0.0.105:443,127.0.0.106:8448|127.0.0.106|DNS:s31b.test,IP:127.0.0.106|127.0.0.106:8448|-|127.0.0.106"
  "3.2|s32.test|host-record=s32.test,127.0.0.107;host-record=fed.s32.test,127.0.0.108|127.0.0.107:443,127.0.0.108:8451|fed.s32.test:8451|DNS:s32.test,DNS:fed.s32.test|127.0.0.108:8451|fed.s32.test|fed.s32.test:8451"
  "3.3|s33.test|host-record=s33.test,127.0.0.109;host-record=fed.s33.test,127.0.0.110;host-record=target.s33.test,127.0.0.111;srv-host=_matrix-fed._tcp.fed.s33.test,target.s33.test,8452,10,5|127.0.0.109:443,127.0.0.111:8452|fed.s33.test|DNS:s33.test,DNS:fed.s33.test|127.0.0.111:8452|fed.s33.test|fed.s33.test"
  "3.4|s34.test|host-record=s34.test,127.0.0.112;host-record=fed.s34.test,127.0.0.113;host-record=target.s34.test,127.0.0.114;srv-host=_matrix._tcp.fed.s34.test,target.s34.test,8453,10,5|127.0.0.112:443,127.0.0.114:8453|fed.s34.test|DNS:s34.test,DNS:fed.s34.test|127.0.0.114:8453|fed.s34.test|fed.s34.test"
  "3.5|s35.test|host-record=s35.test,127.0.0.115;host-record=fed.s35.test,127.0.0.116|127.0.0.115:443,127.0.0.116:8448|fed.s35.test|DNS:s35.test,DNS:fed.s35.test|127.0.0.116:8448|fed.s35.test|fed.s35.test"
  "4|s4.test|host-record=s4.test,127.0.0.117;host-record=target.s4.test,127.0.0.118;srv-host=_matrix-fed._tcp.s4.test,target.s4.test,8454,10,5|127.0.0.117:443,127.0.0.118:8454||DNS:s4.test|127.0.0.118:8454|s4.test|s4.test"
  "5|s5.test|host-record=s5.test,127.0.0.119;host-record=target.s5.test,127.0.0.120;srv-host=_matrix._tcp.s5.test,target.s5.test,8455,10,5|127.0.0.120:8455|-|DNS:s5.test|127.0.0.120:8455|s5.test|s5.test"
  "6|s6.test|host-record=s6.test,127.0.0.121|127.0.0.121:443,127.0.0.121:8448||DNS:s6.test|127.0.0.121:8448|s6.test|s6.test"
)

dns_lines=("host-record=$HS1,$HS1_IP")
for d in "${DOMAINS[@]}"; do
  IFS='|' read -r _ _ dns _ <<<"$d"
  IFS=';' read -ra more <<<"$dns"
  dns_lines+=("${more[@]}")
done
dnsmasq_start "$WORK/dns" "$DNS_IP" "${dns_lines[@]}"

# tag for files: s2.test:8449 -> s2.test_8449
tag_of() { tr ':' '_' <<<"$1"; }

for d in "${DOMAINS[@]}"; do
  IFS='|' read -r step name _ listeners wk sans _ <<<"$d"
  tag=$(tag_of "$name")
  mkdir -p "$WORK/$tag"
  hp_keygen "$WORK/$tag/signing.key"
  IFS=',' read -ra san_list <<<"$sans"
  ca_leaf "$WORK/ca" "$tag" "${san_list[@]}"
  IFS=',' read -ra l_list <<<"$listeners"
  extra=()
  if [[ -n "$wk" && "$wk" != - ]]; then
    extra=("well_known:" "  server: \"$wk\"")
  fi
  hp_serve_config "$WORK/$tag/homeport.yaml" "$name" "$WORK/$tag/signing.key" \
    "$WORK/ca/$tag" "${l_list[@]}" -- "${extra[@]}"
  hp_serve_start "$tag" "$WORK/$tag/homeport.yaml"
done

synapse_venv
synapse_init "$HS1" "$WORK/hs1" "$HS1_IP"
synapse_start "$HS1" "$WORK/hs1"

keycheck() { "$SYNAPSE_PY" "$here/lib/keycheck.py" "$@"; }

# What homeport resolve says, for the cross-check rows: "listener sni host".
resolve_summary() {
  python3 - "$1" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
t = (doc.get("targets") or [{}])[0]
addrs = t.get("addrs") or ["?"]
a = addrs[0]
if ":" in a:
    a = f"[{a}]"
print(f"step={doc.get('step')} {a}:{t.get('port')} sni={doc.get('sni') or '-'} host={doc.get('host_header')}")
EOF
}

for d in "${DOMAINS[@]}"; do
  IFS='|' read -r step name _ _ wk _ want_l want_sni want_host <<<"$d"
  tag=$(tag_of "$name")
  kid=$(hp_key_id "$WORK/$tag/signing.key")
  row="Synapse discovers homeport: step $step ($name)"
  out="$WORK/$tag/notary.json"
  code=$(synapse_key_query "$HS1" "$WORK/hs1" "$name" "$kid" 0 "$out" 2>"$out.err") || code="curl failed: $(head -c 200 "$out.err")"
  problems=()
  keys=""
  if [[ "$code" != 200 ]]; then
    problems+=("notary POST: HTTP $code $(head -c 200 "$out" 2>/dev/null)")
  elif ! keys=$(keycheck notary "$out" "$name" "$WORK/$tag/signing.key" "$HS1" "$WORK/hs1/$HS1.signing.key"); then
    problems+=("key fetch: $keys")
  fi
  # Synapse's requests for the key, as homeport logged them.
  mapfile -t seen < <(hp_access "$tag" /_matrix/key/v2/server)
  got=""
  for line in "${seen[@]}"; do
    IFS=$'\t' read -r l sni host _ _ status <<<"$line"
    got+="${got:+; }$l sni=$sni host=$host $status"
  done
  if ((${#seen[@]} == 0)); then
    problems+=("no /_matrix/key/v2/server request in homeport's log")
  else
    for line in "${seen[@]}"; do
      IFS=$'\t' read -r l sni host _ _ status <<<"$line"
      if [[ "$l" != "$want_l" || "$sni" != "$want_sni" || "$host" != "$want_host" ]]; then
        problems+=("Synapse sent $l sni=$sni host=$host, the step table says $want_l sni=$want_sni host=$want_host")
      fi
    done
  fi
  # The .well-known fetch (steps 3.x: must be there; 4 and 6: a 404).
  wkn=""
  while IFS=$'\t' read -r l sni host _ _ status; do
    wkn+="${wkn:+; }$l sni=$sni host=$host $status"
  done < <(hp_access "$tag" /.well-known/matrix/server)
  if [[ "$step" == 3* && -z "$wkn" ]]; then
    problems+=("no .well-known request in homeport's log")
  fi
  if ((${#problems[@]} == 0)); then
    scenario_result "$row" pass "key $kid fetched, signed by $name and $HS1; Synapse's key/v2/server request: $got; its .well-known request: ${wkn:-none}"
  else
    log "Synapse log, last lines mentioning $name:"
    grep -F "$name" "$(synapse_logfile "$HS1" "$WORK/hs1")" 2>/dev/null | tail -n 8 | sed 's/^/    /' >&2 || true
    scenario_result "$row" fail "$(IFS='|'; printf '%s' "${problems[*]}") — seen: ${got:-nothing}; .well-known: ${wkn:-none}"
  fi
done

# homeport's own discovery must do what Synapse did.
for d in "${DOMAINS[@]}"; do
  IFS='|' read -r step name _ _ _ _ want_l want_sni want_host <<<"$d"
  tag=$(tag_of "$name")
  out="$WORK/$tag/resolve.json"
  rc=0
  timeout 60 "$HOMEPORT_BIN" resolve "$name" --dns "$INTEROP_DNS" --ca-file "$INTEROP_CA_DIR/ca.crt" \
    --no-system-roots --timeout 20s --json >"$out" 2>"$out.err" || rc=$?
  row="homeport resolve $name = Synapse's step $step"
  if ((rc != 0)); then
    scenario_result "$row" fail "exit $rc: $(head -c 300 "$out.err")"
    continue
  fi
  got=$(resolve_summary "$out")
  want="step=${step%% *} $want_l sni=$want_sni host=$want_host"
  # Its .well-known request (the last one logged) next to Synapse's (the first).
  mapfile -t wk_lines < <(hp_access "$tag" /.well-known/matrix/server |
    awk -F'\t' '{ print $1 " sni=" $2 " host=" $3 " " $6 }')
  wk_note=""
  if ((${#wk_lines[@]} >= 2)) && [[ "${wk_lines[0]}" != "${wk_lines[-1]}" ]]; then
    wk_note="; .well-known request differs: Synapse ${wk_lines[0]}, homeport ${wk_lines[-1]}"
  elif ((${#wk_lines[@]} >= 2)); then
    wk_note="; .well-known request as Synapse's"
  fi
  if [[ "$got" == "$want" && "$wk_note" != *differs* ]]; then
    scenario_result "$row" pass "$got$wk_note"
  else
    scenario_result "$row" fail "homeport: $got; Synapse: $want$wk_note"
  fi
done

finish_scenarios
