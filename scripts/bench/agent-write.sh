#!/usr/bin/env bash
# Writes through an agent's REST API, the path registers and web shops use,
# measured with wrk.
#
#   scripts/bench/agent-write.sh [DURATION_S] [CONNECTIONS] [KEYS]   (default 10, 64, 10000)
#
# Starts a fresh release coordinator and one agent in a temp dir, creates
# KEYS items (k000000...) with the load generator, then runs wrk (Debian
# package `wrk`, installed with apt-get when missing) with 2 threads and
# CONNECTIONS connections, each request a `remove 1` of a random key with an
# Idempotency-Key of its own, and prints writes/s, the latency percentiles
# the non-2xx count and the agent's CPU time per write. AGENT_BIN runs another agent binary against the
# same coordinator build (to compare two agents side by side). Refuses a
# busy machine; everything it started is stopped and removed on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${1:-10}
CONNECTIONS=${2:-64}
KEYS=${3:-10000}

need_wrk
build shelfsync-coordinator shelfsync-agent shelfsync-loadgen
WORK="$(mktemp -d /tmp/shelfsync-write.XXXXXX)"
track_dir "$WORK"
start_coordinator "$WORK/c" 1
preload_items "$WORK/c" "$KEYS"
[[ -n "${AGENT_BIN:-}" ]] && log "agent binary: $AGENT_BIN"
AGENT_READY_S=120 start_agent "$WORK/c" load-1 bench
write_remove_lua "$WORK/remove.lua" "$KEYS"

require_idle
url="http://$AGENT_HTTP"
log "wrk: 2 threads, $CONNECTIONS connections, ${DURATION}s of remove 1 over $KEYS keys at $url"
cpu_before=$(cpu_ticks "$AGENT_PID")
wrk -t 2 -c "$CONNECTIONS" -d "${DURATION}s" --latency -s "$WORK/remove.lua" "$url" | tee "$WORK/wrk.txt"
cpu_after=$(cpu_ticks "$AGENT_PID")
parse_wrk "$WORK/wrk.txt"
writes=$(awk -v r="$WRK_REQUESTS" -v s="$WRK_SECONDS" 'BEGIN { printf "%.0f", (s > 0 ? r / s : 0) }')
# The agent's CPU time (user + system, all threads) per request, in µs.
us_per_write=$(( (cpu_after - cpu_before) * 1000000 / $(getconf CLK_TCK) / (WRK_REQUESTS > 0 ? WRK_REQUESTS : 1) ))
echo
echo "agent write ($(nproc) cores, $(uname -m)): ${writes} writes/s, p99 ${WRK_P99_MS}ms, non-2xx ${WRK_NON2XX}, agent CPU ${us_per_write} µs/write"
