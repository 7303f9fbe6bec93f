# shellcheck shell=bash
# Real Synapse homeservers (PyPI matrix-synapse) on loopback addresses.
#
#   synapse_venv                   make or reuse the cached venv; sets SYNAPSE_PY
#   synapse_init NAME DIR IP [TRUSTED_KEY_SERVER...]
#                                  generate DIR/homeserver.yaml (+ signing key
#                                  DIR/NAME.signing.key) and DIR/overrides.yaml:
#                                  TLS federation listener IP:8448 with a test-CA
#                                  leaf for NAME, plain client listener IP:8008,
#                                  federation_custom_ca_list = the test CA,
#                                  ip_range_blacklist: [], trusted_key_servers
#                                  as given (none by default)
#   synapse_start NAME DIR         run it under `unshare -m` with /etc/resolv.conf
#                                  naming $INTEROP_DNS_IP and a minimal
#                                  /etc/hosts; wait until /_matrix/key/v2/server
#                                  answers on IP:8448
#   synapse_stop NAME DIR          stop it now (by PID)
#   synapse_curl NAME DIR PATH [CURL-ARGS...]
#                                  curl https://NAME:8448PATH, trusting only the
#                                  test CA, --resolve'd to the listener
#   synapse_client NAME DIR PATH [CURL-ARGS...]
#                                  curl the plain client listener (IP:8008)
#   synapse_fed NAME DIR PATH [CURL-ARGS...]
#                                  curl the federation listener (8448, or the
#                                  plain one with SYNAPSE_PLAIN_PORT)
#   synapse_key_query NAME DIR SERVER KEY_ID MIN_TS OUT
#                                  notary POST /_matrix/key/v2/query for one key
#                                  of SERVER; prints the HTTP status
#   synapse_register NAME DIR USER PASSWORD
#                                  a user, via the shared-secret registration API
#   synapse_logfile NAME DIR       the path of Synapse's own log file
#
# SYNAPSE_PLAIN_PORT=PORT synapse_init ... makes a Synapse for behind a proxy:
# one plain listener IP:PORT with client and federation, x_forwarded, no TLS.
#
# Needs common.sh and ca.sh (ca_init must have run: INTEROP_CA_DIR), and for
# synapse_start dnsmasq.sh's INTEROP_DNS_IP. Synapse never sees the system
# resolver: its mount namespace has its own /etc/resolv.conf.
#
# The venv is cached outside the clone, keyed by Synapse and Python version:
# $HOMEPORT_INTEROP_CACHE, else /var/cache/homeport-interop when writable,
# else ${XDG_CACHE_HOME:-$HOME/.cache}/homeport-interop. Delete the directory
# to force a fresh install. HOMEPORT_SYNAPSE_VERSION overrides the pin.

SYNAPSE_VERSION="${HOMEPORT_SYNAPSE_VERSION:-1.163.2}"
SYNAPSE_PYTHON="${HOMEPORT_SYNAPSE_PYTHON:-python3}"

_synapse_cache_root() {
  if [[ -n "${HOMEPORT_INTEROP_CACHE:-}" ]]; then
    printf '%s\n' "$HOMEPORT_INTEROP_CACHE"
  elif mkdir -p /var/cache/homeport-interop 2>/dev/null && [[ -w /var/cache/homeport-interop ]]; then
    printf '%s\n' /var/cache/homeport-interop
  else
    printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/homeport-interop"
  fi
}

synapse_venv() {
  local root pyver venv
  command -v "$SYNAPSE_PYTHON" >/dev/null 2>&1 || die "no $SYNAPSE_PYTHON for the Synapse venv"
  pyver=$("$SYNAPSE_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  root=$(_synapse_cache_root)
  mkdir -p "$root"
  venv="$root/synapse-$SYNAPSE_VERSION-py$pyver"
  # One installer at a time; a half-made venv (no .complete) is redone.
  exec {_synapse_lock}>"$root/.lock"
  flock "$_synapse_lock"
  if [[ -f "$venv/.complete" ]] && "$venv/bin/python" -c 'import synapse' 2>/dev/null; then
    log "reusing the Synapse $SYNAPSE_VERSION venv $venv"
  else
    log "installing matrix-synapse==$SYNAPSE_VERSION into $venv (one-time, ~1 min)"
    rm -rf -- "$venv"
    if ! "$SYNAPSE_PYTHON" -m venv "$venv" >&2 ||
      ! timeout 600 "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "matrix-synapse==$SYNAPSE_VERSION" signedjson >&2; then
      rm -rf -- "$venv"
      flock -u "$_synapse_lock"
      die "cannot install matrix-synapse==$SYNAPSE_VERSION"
    fi
    touch "$venv/.complete"
  fi
  flock -u "$_synapse_lock"
  exec {_synapse_lock}>&-
  SYNAPSE_PY="$venv/bin/python"
  export SYNAPSE_PY
}

synapse_init() {
  local name=$1 dir=$2 ip=$3 ca=${INTEROP_CA_DIR:?ca_init first} tks="[]" s
  shift 3
  [[ -n "${SYNAPSE_PY:-}" ]] || synapse_venv
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if (($# > 0)); then
    tks=""
    for s in "$@"; do
      tks+="${tks:+, }{server_name: '$s', accept_keys_insecurely: true}"
    done
    tks="[$tks]"
  fi
  [[ -f "$ca/$name.crt" ]] || ca_leaf "$ca" "$name" "DNS:$name" "IP:$ip"
  if ! (cd "$dir" && "$SYNAPSE_PY" -m synapse.app.homeserver --server-name "$name" \
    --config-path "$dir/homeserver.yaml" --data-directory "$dir" \
    --generate-config --report-stats=no) >"$dir/generate.log" 2>&1; then
    sed 's/^/    /' "$dir/generate.log" >&2
    die "synapse --generate-config failed for $name"
  fi
  [[ -f "$dir/$name.signing.key" ]] || die "no $dir/$name.signing.key after --generate-config"
  local listeners
  if [[ -n "${SYNAPSE_PLAIN_PORT:-}" ]]; then
    # Behind a proxy: one plain listener for everything, nothing on 8448.
    listeners="  - port: $SYNAPSE_PLAIN_PORT
    bind_addresses: ['$ip']
    type: http
    tls: false
    x_forwarded: true
    resources: [{names: [client, federation], compress: false}]"
    printf '%s\n' "$SYNAPSE_PLAIN_PORT" >"$dir/.plain"
  else
    listeners="  - port: 8448
    bind_addresses: ['$ip']
    type: http
    tls: true
    x_forwarded: false
    resources: [{names: [federation], compress: false}]
  - port: 8008
    bind_addresses: ['$ip']
    type: http
    tls: false
    x_forwarded: false
    resources: [{names: [client], compress: false}]"
    rm -f "$dir/.plain"
  fi
  cat >"$dir/overrides.yaml" <<EOF
# homeport interop overrides (later config files win, key by key)
listeners:
$listeners
tls_certificate_path: '$ca/$name.crt'
tls_private_key_path: '$ca/$name.key'
database: {name: sqlite3, args: {database: '$dir/homeserver.db'}}
report_stats: false
trusted_key_servers: $tks
suppress_key_server_warning: true
ip_range_blacklist: []
federation_verify_certificates: true
federation_custom_ca_list: ['$ca/ca.crt']
EOF
  printf '%s\n' "$ip" >"$dir/.bind"
}

synapse_start() {
  local name=$1 dir=$2 ip pid deadline
  dir=$(cd "$dir" && pwd)
  ip=$(<"$dir/.bind")
  [[ -n "${INTEROP_DNS_IP:-}" ]] || die "synapse_start $name: start dnsmasq first (INTEROP_DNS_IP)"
  printf 'nameserver %s\noptions timeout:2 attempts:2\n' "$INTEROP_DNS_IP" >"$dir/resolv.conf"
  # The machine's own hostname too: Synapse looks it up at start-up.
  printf '127.0.0.1 localhost %s\n::1 localhost ip6-localhost ip6-loopback\n' \
    "${HOSTNAME:-localhost}" >"$dir/hosts"
  # unshare -m makes a private mount namespace (propagation private), so the
  # bind mounts are seen by this Synapse only. sh execs: the PID is Synapse's.
  # shellcheck disable=SC2016
  start_bg "synapse-$name" unshare -m -- sh -c \
    'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && cd "$3" && shift 3 && exec "$@"' \
    sh "$dir/resolv.conf" "$dir/hosts" "$dir" \
    "$SYNAPSE_PY" -m synapse.app.homeserver -c "$dir/homeserver.yaml" -c "$dir/overrides.yaml"
  pid=$INTEROP_LAST_PID
  printf '%s\n' "$pid" >"$dir/.pid"
  deadline=$((SECONDS + ${HOMEPORT_SYNAPSE_START_TIMEOUT:-120}))
  until synapse_fed "$name" "$dir" /_matrix/key/v2/server -f -o /dev/null --max-time 3 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log "synapse-$name" 40
      die "Synapse $name exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      show_log "synapse-$name" 40
      die "Synapse $name did not answer /_matrix/key/v2/server on $ip"
    fi
    sleep 0.5
  done
  if [[ -f "$dir/.plain" ]]; then
    log "Synapse $name is up on http://$ip:$(<"$dir/.plain") (plain listener only)"
  else
    log "Synapse $name is up on https://$name:8448 ($ip)"
  fi
}

synapse_stop() {
  local dir=$2
  [[ -f "$dir/.pid" ]] || return 0
  stop_pid "$(<"$dir/.pid")"
  rm -f "$dir/.pid"
}

synapse_curl() {
  local name=$1 dir=$2 path=$3 ip
  shift 3
  ip=$(<"$dir/.bind")
  curl -sS --noproxy '*' --cacert "$INTEROP_CA_DIR/ca.crt" \
    --resolve "$name:8448:$ip" "$@" "https://$name:8448$path"
}

# curl Synapse's plain listener (client API; with SYNAPSE_PLAIN_PORT at init,
# also federation): http://IP:8008PATH, or http://IP:PORTPATH.
synapse_client() {
  local name=$1 dir=$2 path=$3 ip port=8008
  shift 3
  ip=$(<"$dir/.bind")
  [[ -f "$dir/.plain" ]] && port=$(<"$dir/.plain")
  curl -sS --noproxy '*' "$@" "http://$ip:$port$path"
}

# curl Synapse's federation listener: https://NAME:8448PATH (synapse_curl), or
# the plain listener of a Synapse made with SYNAPSE_PLAIN_PORT.
synapse_fed() {
  if [[ -f "$2/.plain" ]]; then
    synapse_client "$@"
  else
    synapse_curl "$@"
  fi
}

# synapse_key_query NAME DIR SERVER KEY_ID MIN_TS OUT [CURL-ARGS...]
# POST /_matrix/key/v2/query to Synapse NAME (as a notary) for SERVER's
# KEY_ID with minimum_valid_until_ts MIN_TS; the answer goes to OUT. A key id
# that is not cached, or a MIN_TS beyond the cached valid_until_ts, makes
# Synapse fetch the keys from SERVER (its whole discovery) before answering.
synapse_key_query() {
  local name=$1 dir=$2 server=$3 kid=$4 min=$5 out=$6
  shift 6
  synapse_fed "$name" "$dir" /_matrix/key/v2/query -o "$out" -w '%{http_code}' \
    -H 'Content-Type: application/json' -X POST --max-time 60 \
    --data "{\"server_keys\":{\"$server\":{\"$kid\":{\"minimum_valid_until_ts\":$min}}}}" "$@"
}

# synapse_register NAME DIR USER PASSWORD: a user made with the shared-secret
# registration API (register_new_matrix_user, the secret from --generate-config).
synapse_register() {
  local name=$1 dir=$2 user=$3 pass=$4 ip port=8008
  ip=$(<"$dir/.bind")
  [[ -f "$dir/.plain" ]] && port=$(<"$dir/.plain")
  "$(dirname "$SYNAPSE_PY")/register_new_matrix_user" -c "$dir/homeserver.yaml" \
    -u "$user" -p "$pass" --no-admin "http://$ip:$port" >&2 ||
    die "register_new_matrix_user $user on $name failed"
}

# The file Synapse logs to (the generated log config's handler).
synapse_logfile() {
  printf '%s\n' "$2/homeserver.log"
}
