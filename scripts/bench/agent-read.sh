#!/usr/bin/env bash
# An agent's local REST read of one item, measured with wrk.
#
#   scripts/bench/agent-read.sh [DURATION_S] [CONNECTIONS]   (default 10, 8)
#
# Starts a fresh release coordinator and one agent in a temp dir, creates an
# item through the agent, then runs wrk (Debian package `wrk`, installed with
# apt-get when missing) with 2 threads against GET /v1/items/bench/sku-1 and
# prints reads/s and the latency percentiles. Target: at least 20,000 reads/s
# with p99 under 1 ms. Refuses a busy machine; everything it started is
# stopped and removed on exit, Ctrl-C included.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${1:-10}
CONNECTIONS=${2:-8}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
build shelfsync-coordinator shelfsync-agent shelfsync-loadgen
WORK="$(mktemp -d /tmp/shelfsync-read.XXXXXX)"
track_dir "$WORK"
start_coordinator "$WORK/c" 1
AGENT_READY_S=60 start_agent "$WORK/c" load-1 bench

url="http://$AGENT_HTTP/v1/items/bench/sku-1"
curl -fsS -X PUT -H 'content-type: application/json' \
    -d '{"name":"Benchmark item","quantity":100}' "$url" >/dev/null
curl -fsS "$url" >/dev/null

require_idle
log "wrk: 2 threads, $CONNECTIONS connections, ${DURATION}s against $url"
wrk -t 2 -c "$CONNECTIONS" -d "${DURATION}s" --latency "$url" | tee "$WORK/wrk.txt"
reads=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$WORK/wrk.txt")
p99=$(awk '$1 == "99%" { print $2 }' "$WORK/wrk.txt")
errors=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$WORK/wrk.txt")
echo
echo "agent local read ($(nproc) cores, $(uname -m)): ${reads} reads/s, p99 ${p99}, non-2xx ${errors:-0}"
echo "targets: >= 20000 reads/s, p99 < 1ms"
