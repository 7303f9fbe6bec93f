#!/usr/bin/env bash
# Real-browser test of the tester page: `homeport serve` with the tester
# enabled, checking the domains of a `homeport lab --serve`, driven by Debian
# chromium through playwright-core (tester.test.mjs).
#
# Needs target/debug/homeport (built here if missing), /usr/bin/chromium and
# `npm ci` done in tests/browser (.ci/run does both). The screenshot lands in
# target/browser/tester.png.
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$self")/../.."

BIN=target/debug/homeport
if [[ ! -x "$BIN" ]]; then
  echo "building $BIN (missing; not counted in the time bound)"
  cargo build -p homeport
fi

if [[ -z "${HOMEPORT_BROWSER_TIMEOUT_CHILD:-}" ]]; then
  # Bound the whole run (120 s by default); the child does the work, the trap there cleans up.
  export HOMEPORT_BROWSER_TIMEOUT_CHILD=1
  limit=${HOMEPORT_BROWSER_TIMEOUT:-120}
  rc=0
  timeout --kill-after=10 "$limit" bash "$self" "$@" || rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then
    echo "FAIL browser test: timed out after ${limit}s" >&2
  elif [[ $rc != 0 ]]; then
    echo "FAIL browser test (exit $rc)" >&2
  fi
  exit "$rc"
fi

[[ -d tests/browser/node_modules/playwright-core ]] || {
  echo "tests/browser/node_modules missing: run 'npm ci' in tests/browser" >&2
  exit 1
}

tmp=$(mktemp -d)
lab_pid=""
serve_pid=""
cleanup() {
  local rc=$?
  [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  [[ -n "$lab_pid" ]] && kill "$lab_pid" 2>/dev/null && wait "$lab_pid" 2>/dev/null
  if [[ $rc -ne 0 ]]; then
    for f in lab.out lab.err serve.err; do
      [[ -s "$tmp/$f" ]] && { echo "--- $f (last 30 lines)"; tail -n 30 "$tmp/$f"; }
    done
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

# 1. The lab: its first line is `dns=IP:PORT ca=PATH`, its second
#    `well_known_port=N default_port=N`. Stdout goes to a file, not a pipe,
#    so the lab never blocks on a reader that went away.
NO_COLOR=1 "$BIN" lab --serve >"$tmp/lab.out" 2>"$tmp/lab.err" &
lab_pid=$!
for _ in $(seq 1 400); do
  [[ $(wc -l <"$tmp/lab.out") -ge 2 ]] && break
  kill -0 "$lab_pid" 2>/dev/null || { echo "homeport lab --serve exited early" >&2; exit 1; }
  sleep 0.05
done
first=$(sed -n 1p "$tmp/lab.out")
ports=$(sed -n 2p "$tmp/lab.out")
word() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -n 1; }
dns=$(word dns "$first")
ca=$(word ca "$first")
wk=$(word well_known_port "$ports")
def=$(word default_port "$ports")
if [[ -z "$dns" || -z "$ca" || -z "$wk" || -z "$def" ]]; then
  echo "could not parse the lab's first two lines:" >&2
  printf '  %s\n  %s\n' "$first" "$ports" >&2
  exit 1
fi
echo "lab: dns=$dns ca=$ca well_known_port=$wk default_port=$def ($(elapsed))"

# 2. A free port on a random 127.0.0.x (x in 100..249, clear of 127.0.0.1).
ip="127.0.0.$((100 + RANDOM % 150))"
port=$(node -e '
  const s = require("net").createServer();
  s.listen(0, process.argv[1], () => { console.log(s.address().port); s.close(); });
' "$ip")

"$BIN" keygen -o "$tmp/signing.key" 2>/dev/null
cat >"$tmp/homeport.yaml" <<YAML
server_name: tester.test
signing_key_path: $tmp/signing.key
tester: {enabled: true}
dns: {nameservers: ['$dns'], lab_well_known_port: $wk, lab_default_port: $def}
federation_custom_ca_list: ['$ca']
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
listeners:
  - port: $port
    bind_addresses: ['$ip']
    resources: [{names: [tester, metrics]}]
YAML

# 3. homeport serve, then wait for its port.
NO_COLOR=1 "$BIN" serve --config "$tmp/homeport.yaml" >/dev/null 2>"$tmp/serve.err" &
serve_pid=$!
up=0
for _ in $(seq 1 400); do
  kill -0 "$serve_pid" 2>/dev/null || { echo "homeport serve exited early" >&2; exit 1; }
  if (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; then up=1; break; fi
  sleep 0.05
done
[[ $up == 1 ]] || { echo "homeport serve did not listen on $ip:$port within 20s" >&2; exit 1; }
echo "serve: http://$ip:$port/ ($(elapsed))"

# 4. The browser test.
node tests/browser/tester.test.mjs "http://$ip:$port"
echo "browser test done ($(elapsed))"
