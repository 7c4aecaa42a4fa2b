#!/usr/bin/env bash
# How long an agent takes to bootstrap one location of ITEMS items.
#
#   scripts/bench/bootstrap.sh [ITEMS] [ROUNDS]     (default 1000000 3)
#
# Starts a fresh release coordinator in a temp dir and creates ITEMS items in
# one location (shelfsync-loadgen's preload). Then, ROUNDS times, starts an
# agent with an empty data directory replicating that location and reads the
# time between its `bootstrapping the replica` and `bootstrap complete` log
# lines (target: under 5 s for 1,000,000 items); the agent is stopped and its
# data removed before the next one. With AGENT_BIN_B set to another agent
# binary, each round runs that one too (first in every other round), so the
# two are compared side by side against the same coordinator. Everything it
# started is stopped and removed on exit, Ctrl-C included; the agents' logs
# and the table are kept in target/bench/bootstrap-<time>.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ITEMS=${1:-1000000}
ROUNDS=${2:-3}
[[ "$ITEMS" =~ ^[0-9]+$ && "$ROUNDS" =~ ^[0-9]+$ ]] ||
    { echo "usage: $0 [ITEMS] [ROUNDS]" >&2; exit 2; }

build shelfsync-coordinator shelfsync-agent shelfsync-loadgen
OUT="$REPO/target/bench/bootstrap-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/shelfsync-bootstrap.XXXXXX)"
track_dir "$WORK"
start_coordinator "$WORK/c" 16

log "preloading $ITEMS items"
"$BIN/shelfsync-loadgen" run --coordinator "$COORD_LISTEN" --certs "$WORK/c" \
    --connections 16 --in-flight 16 --keys "$ITEMS" --preload \
    --workload delta --ops 1 --warmup 0s > /dev/null

# seconds LOG: the time between the bootstrap's first and last log lines.
seconds() {
    python3 - "$1" <<'PY'
import re, sys
from datetime import datetime
stamps = {}
for line in open(sys.argv[1]):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    for mark in ("bootstrapping the replica", "bootstrap complete"):
        if mark in line and mark not in stamps:
            stamp = re.match(r"\s*(\S+)", line).group(1)
            stamps[mark] = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
a, b = stamps["bootstrapping the replica"], stamps["bootstrap complete"]
print("%.2f" % (b - a).total_seconds())
PY
}

# one NAME BIN: bootstraps a fresh agent built as BIN, prints its seconds.
one() {
    local name=$1 bin=$2 dir="$WORK/c/agent-load-1" took
    rm -rf "$dir"
    AGENT_BIN="$bin" start_agent "$WORK/c" load-1 bench
    kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
    cp "$dir/agent.log" "$OUT/agent-$name-$round.log"
    took=$(seconds "$dir/agent.log")
    log "$name: $took s"
    printf '%-12s %s\n' "$name" "$took" >> "$OUT/times.txt"
}

for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    if [[ -n "${AGENT_BIN_B:-}" ]] && ((round % 2 == 0)); then
        one B "$AGENT_BIN_B"
        one current "$BIN/shelfsync-agent"
    else
        one current "$BIN/shelfsync-agent"
        [[ -z "${AGENT_BIN_B:-}" ]] || one B "$AGENT_BIN_B"
    fi
done

{
    echo "bootstrap of $ITEMS items, $(nproc) cores, $(uname -m); seconds per round:"
    awk '{ t[$1] = t[$1] " " $2 } END { for (n in t) printf "%-12s%s\n", n, t[n] }' "$OUT/times.txt" | sort
} | tee "$OUT/table.txt"
log "results in $OUT"
