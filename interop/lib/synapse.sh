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
  cat >"$dir/overrides.yaml" <<EOF
# homeport interop overrides (later config files win, key by key)
listeners:
  - port: 8448
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
    resources: [{names: [client], compress: false}]
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
  until synapse_curl "$name" "$dir" /_matrix/key/v2/server -f -o /dev/null --max-time 3 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log "synapse-$name" 40
      die "Synapse $name exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      show_log "synapse-$name" 40
      die "Synapse $name did not answer /_matrix/key/v2/server on $ip:8448"
    fi
    sleep 0.5
  done
  log "Synapse $name is up on https://$name:8448 ($ip)"
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
