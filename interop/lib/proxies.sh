# shellcheck shell=bash
# Real reverse proxies (Debian haproxy, nginx-light, caddy) on loopback.
#
#   proxies_install                 apt-get install whichever is missing
#   haproxy_start NAME CFG WAIT...  haproxy -db -f CFG via start_bg (checked
#                                   with -c first); WAIT are IP:PORT to wait for
#   nginx_start NAME CFG DIR WAIT...
#                                   nginx in the foreground with prefix DIR
#                                   (-t first); the PID is the master's
#   caddy_start NAME CADDYFILE DIR WAIT...
#                                   caddy run with its data and config under DIR
#                                   (validate first)
#   proxy_stop                      stop the proxy started last (by PID)
#
# Each start sets PROXY_PID. Needs common.sh.

proxies_install() {
  apt_ensure haproxy:haproxy nginx:nginx-light caddy:caddy
}

_proxy_wait() {
  local name=$1 pid=$2 l
  shift 2
  for l in "$@"; do
    if ! wait_port "${l%:*}" "${l##*:}" 20 "$pid"; then
      show_log "$name" 30
      die "$name did not listen on $l"
    fi
  done
  PROXY_PID=$pid
}

haproxy_start() {
  local name=$1 cfg=$2 out
  shift 2
  out=$(haproxy -c -f "$cfg" 2>&1) || die "haproxy -c refused $cfg: $out"
  start_bg "$name" haproxy -db -f "$cfg"
  _proxy_wait "$name" "$INTEROP_LAST_PID" "$@"
}

nginx_start() {
  local name=$1 cfg=$2 dir=$3 out
  shift 3
  mkdir -p "$dir/logs" "$dir/tmp"
  out=$(nginx -t -q -e "$dir/logs/error.log" -p "$dir" -c "$cfg" 2>&1) || die "nginx -t refused $cfg: $out"
  start_bg "$name" nginx -e "$dir/logs/error.log" -p "$dir" -c "$cfg" -g 'daemon off; master_process on;'
  _proxy_wait "$name" "$INTEROP_LAST_PID" "$@"
}

caddy_start() {
  local name=$1 cfg=$2 dir=$3 out
  shift 3
  mkdir -p "$dir/data" "$dir/config"
  out=$(XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config" HOME="$dir" \
    caddy validate --config "$cfg" --adapter caddyfile 2>&1) || die "caddy validate refused $cfg: $out"
  start_bg "$name" env XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config" HOME="$dir" \
    caddy run --config "$cfg" --adapter caddyfile
  _proxy_wait "$name" "$INTEROP_LAST_PID" "$@"
}

proxy_stop() {
  [[ -n "${PROXY_PID:-}" ]] || return 0
  stop_pid "$PROXY_PID"
  PROXY_PID=""
}
