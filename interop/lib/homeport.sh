# shellcheck shell=bash
# `homeport serve` instances for the interop scenarios, and their request log.
#
#   hp_keygen FILE                 a fresh signing key (Synapse's format) at FILE
#   hp_key_id FILE                 "ed25519:<version>" of the first key in FILE
#   hp_serve_config FILE NAME KEY CERT LISTENER... [-- YAML-LINE...]
#                                  write a homeport.yaml: server_name NAME,
#                                  signing_key_path KEY, one TLS certificate
#                                  CERT (CERT.crt + CERT.key) for every listener,
#                                  log.format json, database :memory:; each
#                                  LISTENER is IP:PORT (tls, resources
#                                  [federation]); lines after -- are appended
#                                  verbatim (well_known:, proxy:, ...)
#   hp_serve_start NAME CONFIG     run `homeport serve --config CONFIG` via
#                                  start_bg (log: $INTEROP_LOGS/hp-NAME.log, the
#                                  request log is its stderr) and wait until
#                                  every listener of CONFIG accepts TCP; sets
#                                  HP_SERVE_PID
#   hp_access NAME [PATH-PREFIX]   the request log of hp-NAME so far, one line
#                                  per request: listener sni host method path
#                                  status (tab-separated; sni "-" when the
#                                  client sent none)
#
# The log is read in JSON (log.format: json), one object per line, target
# homeport::access, fields listener, client, sni, host, method, path, status.
# Needs common.sh and ensure_homeport.

hp_keygen() {
  rm -f -- "$1"
  "$HOMEPORT_BIN" keygen -o "$1" 2>/dev/null || die "homeport keygen -o $1 failed"
}

hp_key_id() { awk 'NR == 1 { print $1 ":" $2 }' "$1"; }

hp_serve_config() {
  local file=$1 name=$2 key=$3 cert=$4 l ip port
  shift 4
  {
    printf 'server_name: "%s"\n' "$name"
    printf "signing_key_path: '%s'\n" "$key"
    printf "tls_certificate_path: '%s.crt'\n" "$cert"
    printf "tls_private_key_path: '%s.key'\n" "$cert"
    printf 'log:\n  format: json\n'
    printf "database:\n  name: sqlite3\n  args: {database: ':memory:'}\n"
    printf 'listeners:\n'
    while (($# > 0)) && [[ "$1" != -- ]]; do
      l=$1
      shift
      ip=${l%:*} port=${l##*:}
      printf "  - port: %s\n    bind_addresses: ['%s']\n    type: http\n    tls: true\n" "$port" "$ip"
      printf '    resources: [{names: [federation], compress: false}]\n'
    done
    [[ "${1:-}" == -- ]] && shift
    for l in "$@"; do
      printf '%s\n' "$l"
    done
  } >"$file"
  if ! "$HOMEPORT_BIN" serve --config "$file" --check-config >"$file.check" 2>&1; then
    sed 's/^/    /' "$file.check" >&2
    die "homeport serve --check-config refused $file"
  fi
}

# The IP:PORT of every listener in a config that hp_serve_config (or a
# hand-written file in the same layout) wrote.
_hp_listeners() {
  awk '
    /^  - port:/ { port = $3 }
    /^    bind_addresses:/ { gsub(/[][\x27,]/, "", $2); if (port != "") print $2 ":" port; port = "" }
  ' "$1"
}

hp_serve_start() {
  local name=$1 config=$2 pid l
  start_bg "hp-$name" "$HOMEPORT_BIN" serve --config "$config"
  pid=$INTEROP_LAST_PID
  for l in $(_hp_listeners "$config"); do
    if ! wait_port "${l%:*}" "${l##*:}" 20 "$pid"; then
      show_log "hp-$name" 20
      die "homeport serve $name did not listen on $l"
    fi
  done
  # shellcheck disable=SC2034
  HP_SERVE_PID=$pid
}

hp_access() {
  local file="$INTEROP_LOGS/hp-$1.log"
  python3 - "$file" "${2:-}" <<'EOF'
import json, sys
path, prefix = sys.argv[1], sys.argv[2]
for line in open(path, encoding="utf-8", errors="replace"):
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if o.get("target") != "homeport::access":
        continue
    f = o.get("fields", {})
    if prefix and not str(f.get("path", "")).startswith(prefix):
        continue
    print("\t".join(str(f.get(k, "")) for k in ("listener", "sni", "host", "method", "path", "status")))
EOF
}
