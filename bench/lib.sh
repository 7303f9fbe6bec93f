# Helpers bench/serve.sh and bench/scaling.sh share (after sourcing
# interop/lib/common.sh for log/die/apt_ensure). Needs QUIET_WAIT set.
# shellcheck shell=bash

CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # utime+stime of PIDs (every thread of each)
  local t=0 p s f
  for p in "$@"; do
    s=$(<"/proc/$p/stat") || continue
    read -ra f <<<"${s##*) }"
    t=$((t + f[11] + f[12]))
  done
  printf '%s\n' "$t"
}

to_ms() { # "612.00us" / "2.05ms" / "1.10s" -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

busy_ticks() { # every CPU's non-idle time so far (user nice system irq softirq steal)
  awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# wait_quiet: before a row, wait until the machine is nearly idle (less than
# a third of one CPU busy over 1 s, our servers idle meanwhile), so that a row
# does not start in the middle of someone else's build: at most 10 s per row
# and $QUIET_WAIT s over the whole run, then it measures anyway.
quiet_left=${QUIET_WAIT:-0}
wait_quiet() {
  local deadline b0 b1 busy waited=0
  ((quiet_left > 0)) || return 0
  deadline=$((SECONDS + (quiet_left < 10 ? quiet_left : 10)))
  while :; do
    b0=$(busy_ticks)
    sleep 1
    waited=$((waited + 1))
    b1=$(busy_ticks)
    busy=$(((b1 - b0) * 100 / CLK_TCK))
    ((busy < 33)) && break
    if ((SECONDS >= deadline)); then
      log "machine still busy (${busy}% of one CPU used by others): measuring anyway"
      break
    fi
  done
  quiet_left=$((quiet_left - waited))
}
