# shellcheck shell=bash
# Shared helpers for the interop scenario scripts. Source it (bash only):
#
#   source "$(dirname "$0")/lib/common.sh"
#
# It gives:
#   log MSG...                  a timestamped line on stderr
#   die MSG...                  log and exit 1 (the EXIT trap still cleans up)
#   start_bg NAME CMD...        run CMD in the background, output to
#                               $INTEROP_LOGS/NAME.log; records its PID
#   register_pid PID NAME       add a PID started some other way
#   stop_pid PID                stop one registered process now (TERM, then KILL)
#   make_workdir NAME VAR       make a temp dir, store its path in VAR; it is
#                               removed at exit (kept with HOMEPORT_INTEROP_KEEP=1)
#   wait_port HOST PORT TIMEOUT [PID]
#                               wait until HOST:PORT accepts TCP (fails early
#                               when PID dies)
#   scenario_result NAME pass|fail DETAIL
#   print_table                 the aligned table and the line
#                               "N passed, M failed"; returns 1 when M > 0
#   ensure_homeport             sets HOMEPORT_BIN, building it if missing
#   apt_ensure CMD:PACKAGE...   apt-get install the packages whose command is
#                               not on PATH (apt-get update first, once per
#                               interop/run); installed ones cost nothing
#
# At exit (normal, failure, Ctrl-C, SIGTERM) every registered process is sent
# SIGTERM, in reverse start order, then SIGKILL after a grace period; every
# work dir is removed. Processes are only ever stopped by their PID.

if [[ -n "${_INTEROP_COMMON_SOURCED:-}" ]]; then
  return 0
fi
_INTEROP_COMMON_SOURCED=1

INTEROP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
INTEROP_DIR="$INTEROP_ROOT/interop"
export INTEROP_ROOT INTEROP_DIR

_INTEROP_PIDS=()
_INTEROP_PID_NAMES=()
_INTEROP_DIRS=()

log() {
  printf '[interop %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

register_pid() {
  _INTEROP_PIDS+=("$1")
  _INTEROP_PID_NAMES+=("$2")
}

# Wait up to $2 tenths of a second for PID $1 to go away.
_wait_gone() {
  local pid=$1 tenths=$2 i
  for ((i = 0; i < tenths; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$pid" 2>/dev/null
}

stop_pid() {
  local pid=$1 i
  for i in "${!_INTEROP_PIDS[@]}"; do
    if [[ "${_INTEROP_PIDS[$i]}" == "$pid" ]]; then
      _INTEROP_PIDS[i]=""
    fi
  done
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! _wait_gone "$pid" 100; then
    log "pid $pid ignored SIGTERM for 10s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    _wait_gone "$pid" 50 || true
  fi
  wait "$pid" 2>/dev/null || true
}

_interop_cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM
  for ((i = ${#_INTEROP_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${_INTEROP_PIDS[$i]}
    [[ -n "$pid" ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping ${_INTEROP_PID_NAMES[$i]} (pid $pid)"
      stop_pid "$pid"
    fi
  done
  for i in "${_INTEROP_DIRS[@]}"; do
    [[ -n "$i" && -d "$i" ]] || continue
    if [[ "${HOMEPORT_INTEROP_KEEP:-0}" == 1 ]]; then
      log "kept $i (HOMEPORT_INTEROP_KEEP=1)"
    else
      rm -rf -- "$i"
    fi
  done
  exit "$rc"
}
trap _interop_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Not through $(...): the registration must happen in this shell.
make_workdir() {
  local _d
  _d=$(mktemp -d "${TMPDIR:-/tmp}/homeport-interop-$1.XXXXXX")
  _INTEROP_DIRS+=("$_d")
  printf -v "$2" '%s' "$_d"
}

# Logs of background processes; a scenario may point it into its work dir.
INTEROP_LOGS="${INTEROP_LOGS:-}"

start_bg() {
  local name=$1
  shift
  if [[ -z "$INTEROP_LOGS" ]]; then
    make_workdir logs INTEROP_LOGS
  fi
  "$@" >"$INTEROP_LOGS/$name.log" 2>&1 &
  local pid=$!
  register_pid "$pid" "$name"
  log "started $name (pid $pid, log $INTEROP_LOGS/$name.log)"
  # The PID of the last start_bg, for callers (no subshell needed).
  # shellcheck disable=SC2034
  INTEROP_LAST_PID=$pid
}

# Print the last lines of a background process's log to stderr.
show_log() {
  local f="$INTEROP_LOGS/$1.log"
  [[ -f "$f" ]] || return 0
  log "last lines of $f:"
  tail -n "${2:-30}" "$f" | sed 's/^/    /' >&2
}

wait_port() {
  local host=$1 port=$2 timeout=$3 pid=${4:-} deadline
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    # shellcheck disable=SC2016
    if timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
      return 0
    fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "pid $pid exited while waiting for $host:$port"
      return 1
    fi
    sleep 0.2
  done
  log "timed out after ${timeout}s waiting for $host:$port"
  return 1
}

# ---- scenario table -------------------------------------------------------
# Rows go to $INTEROP_RESULTS (tab-separated: name, result, detail). interop/run
# sets it (and INTEROP_AGGREGATE=1) so that it prints one table for all
# scripts; a script run alone gets its own file.
if [[ -z "${INTEROP_RESULTS:-}" ]]; then
  make_workdir results INTEROP_RESULTS
  INTEROP_RESULTS="$INTEROP_RESULTS/results.tsv"
  : >"$INTEROP_RESULTS"
fi

_one_line() {
  tr '\t\n\r' '   ' <<<"$*" | sed 's/  */ /g; s/ $//'
}

scenario_result() {
  local name result detail
  name=$(_one_line "$1")
  result=$2
  detail=$(_one_line "${3:-}")
  case "$result" in
    pass | fail) ;;
    *) die "scenario_result: result must be pass or fail, not '$result'" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$result" "$detail" >>"$INTEROP_RESULTS"
  log "$result: $name${detail:+ — $detail}"
}

print_table() {
  local file=$INTEROP_RESULTS passed=0 failed=0 w=8 name result detail
  while IFS=$'\t' read -r name result detail; do
    ((${#name} > w)) && w=${#name}
  done <"$file"
  printf '\n%-*s  %-6s  %s\n' "$w" SCENARIO RESULT DETAIL
  printf '%-*s  %-6s  %s\n' "$w" "$(printf '%*s' "$w" '' | tr ' ' -)" ------ ------
  while IFS=$'\t' read -r name result detail; do
    printf '%-*s  %-6s  %s\n' "$w" "$name" "$result" "$detail"
    if [[ "$result" == pass ]]; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
    fi
  done <"$file"
  printf '\n%d passed, %d failed\n' "$passed" "$failed"
  ((failed == 0))
}

# Scripts end with this: their own table when run alone, nothing when
# interop/run aggregates.
finish_scenarios() {
  if [[ "${INTEROP_AGGREGATE:-0}" == 1 ]]; then
    return 0
  fi
  print_table
}

# ---- the binary under test ------------------------------------------------
ensure_homeport() {
  if [[ -n "${HOMEPORT_BIN:-}" ]]; then
    [[ -x "$HOMEPORT_BIN" ]] || die "HOMEPORT_BIN=$HOMEPORT_BIN is not executable"
  else
    HOMEPORT_BIN="$INTEROP_ROOT/target/debug/homeport"
    if [[ ! -x "$HOMEPORT_BIN" ]]; then
      log "target/debug/homeport is missing: cargo build -p homeport"
      (cd "$INTEROP_ROOT" && cargo build -p homeport) || die "cargo build -p homeport failed"
    fi
  fi
  export HOMEPORT_BIN
}

# Does the homeport binary have this subcommand?
homeport_has() {
  "$HOMEPORT_BIN" help "$1" >/dev/null 2>&1
}

# ---- Debian packages ---------------------------------------------------------
# apt_install PACKAGE...: install them (one apt-get update per run), with no
# service started by their postinst.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $* and there is no apt-get"
  log "installing $* (apt-get)"
  # One apt-get update per interop/run (the stamp sits next to the shared
  # results file), or per script run alone.
  local stamp="${INTEROP_RESULTS:-/nonexistent}.apt-updated"
  if [[ -z "${_INTEROP_APT_UPDATED:-}" && ! -e "$stamp" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    : >"$stamp" 2>/dev/null || true
  fi
  _INTEROP_APT_UPDATED=1
  # The packages' postinst would start nginx/haproxy/caddy/postgresql as
  # system services (on 0.0.0.0:80 and so on): a policy-rc.d that says no,
  # for the install only.
  local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# homeport: no service starts during apt_install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || rc=$?
  ((made_policy == 0)) || rm -f "$policy"
  ((rc == 0)) || die "apt-get install $* failed"
}

# apt_ensure CMD:PACKAGE...: install the packages whose command is missing.
apt_ensure() {
  local missing=() item cmd pkg
  for item in "$@"; do
    cmd=${item%%:*} pkg=${item#*:}
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 ||
      missing+=("$pkg")
  done
  ((${#missing[@]} > 0)) || return 0
  apt_install "${missing[@]}"
  for item in "$@"; do
    cmd=${item%%:*}
    PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 ||
      die "${item#*:} installed but no $cmd on PATH"
  done
}
