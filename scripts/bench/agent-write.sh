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

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
build shelfsync-coordinator shelfsync-agent shelfsync-loadgen
WORK="$(mktemp -d /tmp/shelfsync-write.XXXXXX)"
track_dir "$WORK"
start_coordinator "$WORK/c" 1
log "creating $KEYS items"
"$BIN/shelfsync-loadgen" run --coordinator "$COORD_LISTEN" --certs "$WORK/c" \
    --connections 1 --keys "$KEYS" --workload delta --ops 1 --warmup 0s --preload \
    > "$WORK/preload.txt"
[[ -n "${AGENT_BIN:-}" ]] && log "agent binary: $AGENT_BIN"
AGENT_READY_S=120 start_agent "$WORK/c" load-1 bench

cat > "$WORK/remove.lua" <<LUA
local counter = 0
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end
function request()
    counter = counter + 1
    local key = string.format("k%06d", math.random(0, $KEYS - 1))
    return wrk.format("POST", "/v1/items/bench/" .. key .. "/remove",
        { ["content-type"] = "application/json",
          ["idempotency-key"] = "wrk-" .. thread_id .. "-" .. counter },
        '{"amount":1}')
end
LUA

require_idle
url="http://$AGENT_HTTP"
log "wrk: 2 threads, $CONNECTIONS connections, ${DURATION}s of remove 1 over $KEYS keys at $url"
cpu_before=$(cpu_ticks "$AGENT_PID")
wrk -t 2 -c "$CONNECTIONS" -d "${DURATION}s" --latency -s "$WORK/remove.lua" "$url" | tee "$WORK/wrk.txt"
cpu_after=$(cpu_ticks "$AGENT_PID")
writes=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$WORK/wrk.txt")
requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")
# The agent's CPU time (user + system, all threads) per request, in µs.
us_per_write=$(( (cpu_after - cpu_before) * 1000000 / $(getconf CLK_TCK) / (requests > 0 ? requests : 1) ))
p99=$(awk '$1 == "99%" { print $2 }' "$WORK/wrk.txt")
errors=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$WORK/wrk.txt")
echo
echo "agent write ($(nproc) cores, $(uname -m)): ${writes} writes/s, p99 ${p99}, non-2xx ${errors:-0}, agent CPU ${us_per_write} µs/write"
