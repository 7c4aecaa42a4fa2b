#!/usr/bin/env bash
# The fleet targets: what 1,000 stores cost one coordinator, and how fast a
# write reaches a store.
#
#   scripts/bench/fleet.sh [--stores 1000] [--interval 1s] [--duration 30]
#                          [--rate 2000] [--writers 2] [--only a|b] [--out DIR]
#
# Two measurements, each on a fresh release coordinator (certificates and
# config from `shelfsync-loadgen setup --fleet N`, in a temp dir):
#   a. `shelfsync-loadgen fleet --stores N --interval 1s`, no writes: N
#      stores (fleet-1 .. fleet-N, each a QUIC connection and UDP socket of
#      its own) each sync their own location every interval; the target is
#      coordinator CPU under 10 % of one core.
#   b. the same with `--push --rate R`: every store also holds a
#      subscription and pulls at once on a wake-up, while R writes/s (add 1,
#      as admin, over --writers connections) go round robin to the stores'
#      locations; the target is a propagation p99 (acknowledgement to
#      arrival in the owning store's replica) under 100 ms.
# The load generator reads the coordinator's CPU time and VmRSS from /proc
# (--coordinator-pid) at the start and the end of the --duration seconds,
# and reports syncs/s, UDP bytes per store per second, and propagation
# p50/p99/max. Each run appends a row to OUT/fleet.csv and redraws
# OUT/fleet.png; the table goes to OUT/table.txt.
#
# The load generator runs on the same machine as the coordinator (1,000
# connections' TLS and QUIC on its side too): on a 2-core machine both
# compete for the cores, so the figures are an upper bound of what the
# coordinator needs. Refuses a busy machine before each step (CPU use over
# BUSY_LIMIT %, default 20); raises the open-file limit to its hard limit.
# Everything it started is stopped and removed on exit, Ctrl-C included.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

STORES=1000
INTERVAL=1s
DURATION=30
RATE=2000
WRITERS=2
ONLY=""
OUT=""

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --stores) STORES="$2"; shift 2 ;;
        --interval) INTERVAL="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --writers) WRITERS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
done
for value in "$STORES" "$DURATION" "$RATE" "$WRITERS"; do
    [[ "$value" =~ ^[0-9]+$ ]] ||
        { echo "--stores, --duration, --rate and --writers must be whole numbers" >&2; exit 2; }
done
[[ -z "$ONLY" || "$ONLY" == a || "$ONLY" == b ]] || { echo "--only takes a or b" >&2; exit 2; }
OUT="${OUT:-$REPO/target/bench/fleet-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# One UDP socket per store, plus the coordinator's side of nothing (it
# serves every connection on one socket), plus the usual files.
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < STORES + 256)); then
    echo "the open-file limit $(ulimit -n) is too low for $STORES stores" >&2
    exit 1
fi

build shelfsync-coordinator shelfsync-loadgen
LOADGEN="$BIN/shelfsync-loadgen"
WORK="$(mktemp -d /tmp/shelfsync-fleet.XXXXXX)"
track_dir "$WORK"

# step NAME LOADGEN_FLAGS...: one fleet run on a fresh coordinator.
step() {
    local name=$1 dir="$WORK/$1" fleet_pid
    shift
    require_idle
    start_coordinator "$dir" 1 --fleet "$STORES"
    log "step $name: $STORES stores, interval $INTERVAL, ${DURATION}s: $*"
    "$LOADGEN" fleet --coordinator "$COORD_LISTEN" --certs "$dir" --stores "$STORES" \
        --interval "$INTERVAL" --duration "${DURATION}s" --timeout 30s --coordinator-pid "$COORD_PID" \
        --csv "$OUT/fleet.csv" --png "$OUT/fleet.png" --json "$@" \
        > "$OUT/$name.json" 2> "$OUT/$name.log" &
    fleet_pid=$!
    track "$fleet_pid"
    if ! wait "$fleet_pid"; then
        cat "$OUT/$name.log" >&2
        echo "the fleet failed" >&2
        exit 1
    fi
    kill -TERM "$COORD_PID" 2>/dev/null || true
    wait "$COORD_PID" 2>/dev/null || true
    cp "$dir/coordinator.log" "$OUT/$name-coordinator.log" 2>/dev/null || true
    rm -rf "$dir"
}

[[ "$ONLY" == b ]] || step a --label "a: poll, no writes"
[[ "$ONLY" == a ]] || step b --push --rate "$RATE" --writers "$WRITERS" --label "b: push, $RATE writes/s"

{
    echo "fleet ($(nproc) cores, $(uname -m)): $STORES stores, interval $INTERVAL, ${DURATION}s per step"
    python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print("%-26s %9s %8s %8s %10s %10s %9s %9s %9s %9s" % (
    "step", "writes/s", "CPU %", "RSS MiB", "syncs/s", "tx B/st/s", "rx B/st/s",
    "p50 ms", "p99 ms", "max ms"))
for name in ("a", "b"):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        continue
    r = json.loads(open(path).read().strip().splitlines()[-1])
    print("%-26s %9.0f %8s %8s %10.1f %10.0f %9.0f %9.1f %9.1f %9.1f" % (
        r["label"], r["writes_per_s"], r["coordinator_cpu_pct"], r["coordinator_rss_mib"],
        r["syncs_per_s"], r["tx_bytes_per_store_s"], r["rx_bytes_per_store_s"],
        r["propagation_p50_ms"], r["propagation_p99_ms"], r["propagation_max_ms"]))
    if r["errors"] or r["subscription_errors"] or r["not_propagated"] or r["writes"]["errors"]:
        print("   %s: %d failed syncs, %d subscriptions ended, %d write errors, %d writes not arrived"
              % (name, r["errors"], r["subscription_errors"], r["writes"]["errors"], r["not_propagated"]))
PY
} | tee "$OUT/table.txt"
log "results in $OUT"
