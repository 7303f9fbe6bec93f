# shellcheck shell=bash
# An authoritative-only DNS server for *.test names: dnsmasq (Debian
# dnsmasq-base), on one loopback address, port 53, never forwarding anywhere.
#
#   dnsmasq_install               apt-get install dnsmasq-base when dnsmasq is
#                                 missing (apt-get update once first)
#   dnsmasq_start DIR IP LINE...  write DIR/dnsmasq.conf with the given
#                                 dnsmasq lines (host-record=..., srv-host=...)
#                                 and run it in the foreground (-k) via start_bg;
#                                 sets INTEROP_DNS_IP and INTEROP_DNS (IP:53)
#
# Unknown *.test names get NXDOMAIN (local=/test/), not REFUSED, which Synapse
# would treat as a hard failure. Needs common.sh.

dnsmasq_install() {
  apt_ensure dnsmasq:dnsmasq-base
}

dnsmasq_start() {
  local dir=$1 ip=$2 line user
  shift 2
  dnsmasq_install
  mkdir -p "$dir"
  # dnsmasq drops privileges to "dnsmasq" when that user exists (the Debian
  # dnsmasq package), else nobody; dnsmasq-base alone may have neither.
  user=nobody
  id dnsmasq >/dev/null 2>&1 && user=dnsmasq
  {
    printf '%s\n' \
      "port=53" \
      "listen-address=$ip" \
      "bind-interfaces" \
      "no-resolv" \
      "no-hosts" \
      "no-poll" \
      "local=/test/" \
      "user=$user" \
      "pid-file=" \
      "log-queries" \
      "log-facility=-"
    for line in "$@"; do
      printf '%s\n' "$line"
    done
  } >"$dir/dnsmasq.conf"
  dnsmasq --test --conf-file="$dir/dnsmasq.conf" >/dev/null 2>&1 ||
    die "bad dnsmasq config $dir/dnsmasq.conf: $(dnsmasq --test --conf-file="$dir/dnsmasq.conf" 2>&1)"
  start_bg dnsmasq dnsmasq -k --conf-file="$dir/dnsmasq.conf"
  local pid=$INTEROP_LAST_PID
  if ! wait_port "$ip" 53 10 "$pid"; then
    show_log dnsmasq
    die "dnsmasq did not start on $ip:53"
  fi
  INTEROP_DNS_IP=$ip
  INTEROP_DNS="$ip:53"
  export INTEROP_DNS_IP INTEROP_DNS
}
