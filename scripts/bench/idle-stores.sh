#!/usr/bin/env bash
# What idle stores cost the coordinator: its CPU with 1, 10 and 100 stores
# that each sync a location nobody writes, under a steady write load
# elsewhere.
#
#   scripts/bench/idle-stores.sh [--stores 1,10,100] [--rate 3000]
#                                [--duration 10] [--warmup 3] [--interval 1s]
#                                [--connections 16] [--keys 10000] [--out DIR]
#
# For each store count N, one after the other, on a fresh release
# coordinator (certificates and config from `shelfsync-loadgen setup
# --fleet`, in a temp dir):
#   1. --keys items are created in location `bench`;
#   2. `shelfsync-loadgen fleet --stores N --interval 1s` starts N stores
#      (fleet-1 .. fleet-N), each a QUIC connection with a certificate of its
#      own, each syncing its own location idle-i (Changes after its cursor,
#      every interval, the way an agent does), which nobody writes;
#   3. `shelfsync-loadgen run --rate R` writes R writes/s (remove 1, uniform
#      over the keys, --connections stores with 4 writes outstanding each)
#      to `bench`;
#   4. after --warmup seconds, the coordinator's CPU time (user + system,
#      every thread, from /proc/<pid>/stat) is read over --duration seconds.
# It prints one row per N: the writes/s the load reached, the coordinator's
# CPU in % of one core, and the syncs/s the fleet made (with its failed
# syncs). N = 0 runs the write load alone, as a reference.
#
# A sync costs the coordinator what it reads to answer it: while it scans
# the whole change log after the cursor for each sync, an idle store's sync
# costs as much as the writes of the whole chain since its last one, and the
# CPU rises with N; with a per-location index it costs next to nothing, and
# the rows stay flat.
#
# COORD_BIN runs another coordinator binary (e.g. another build's) against
# the same load generator. Refuses a busy machine before each step (CPU use
# over BUSY_LIMIT %, default 20). Raw outputs and the table go to --out
# (default target/bench/idle-stores-<time>); everything it started is
# stopped and removed on exit, Ctrl-C included.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

COUNTS="1,10,100"
RATE=3000
DURATION=10
WARMUP=3
INTERVAL=1s
CONNECTIONS=16
KEYS=10000
OUT=""

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --stores) COUNTS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --interval) INTERVAL="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
done
[[ "$COUNTS" =~ ^[0-9]+(,[0-9]+)*$ ]] ||
    { echo "--stores must be a list of whole numbers like 1,10,100" >&2; exit 2; }
for value in "$DURATION" "$WARMUP" "$CONNECTIONS" "$KEYS"; do
    [[ "$value" =~ ^[0-9]+$ ]] ||
        { echo "--duration, --warmup, --connections and --keys must be whole numbers" >&2; exit 2; }
done
((DURATION > 0)) || { echo "--duration must be above 0" >&2; exit 2; }
IFS=, read -r -a STORE_COUNTS <<< "$COUNTS"
MAX_STORES=0
for n in "${STORE_COUNTS[@]}"; do
    if ((n > MAX_STORES)); then MAX_STORES=$n; fi
done
OUT="${OUT:-$REPO/target/bench/idle-stores-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

build shelfsync-coordinator shelfsync-loadgen
LOADGEN="$BIN/shelfsync-loadgen"
WORK="$(mktemp -d /tmp/shelfsync-idle.XXXXXX)"
track_dir "$WORK"
ROWS="$OUT/rows.tsv"
printf 'stores\twrites_per_s\tcoordinator_cpu_pct\tsyncs_per_s\tsync_errors\n' > "$ROWS"

# step N: one measurement with N idle stores; appends its row to ROWS. Its
# raw output goes to OUT/<step number>-n<N>-*.
STEP=0
step() {
    local n=$1 dir="$WORK/n$1" fleet_pid="" run_pid before after t0 t1 cpu writes syncs errors raw
    STEP=$((STEP + 1))
    raw="$OUT/$STEP-n$n"
    require_idle
    # Every step registers the largest fleet: only the active count differs.
    start_coordinator "$dir" "$CONNECTIONS" --fleet "$MAX_STORES"
    preload_items "$dir" "$KEYS"
    if ((n > 0)); then
        log "$n idle stores, each syncing its own location every $INTERVAL"
        # Its clock starts once every store is connected: long enough to
        # cover the write load's warmup and measurement.
        "$LOADGEN" fleet --coordinator "$COORD_LISTEN" --certs "$dir" --stores "$n" \
            --interval "$INTERVAL" --duration "$((WARMUP + DURATION + 2))s" --json \
            > "$raw-fleet.json" 2> "$raw-fleet.log" &
        fleet_pid=$!
        track "$fleet_pid"
        local deadline=$((SECONDS + 120))
        until grep -qs "connected and bootstrapped" "$raw-fleet.log"; do
            if ! kill -0 "$fleet_pid" 2>/dev/null || ((SECONDS >= deadline)); then
                cat "$raw-fleet.log" >&2
                echo "the fleet did not start" >&2
                exit 1
            fi
            sleep 0.2
        done
    fi
    log "write load: $RATE writes/s to location bench for ${WARMUP}s + ${DURATION}s"
    "$LOADGEN" run --coordinator "$COORD_LISTEN" --certs "$dir" --connections "$CONNECTIONS" \
        --in-flight 4 --keys "$KEYS" --workload delta --rate "$RATE" \
        --warmup "${WARMUP}s" --duration "${DURATION}s" --json \
        > "$raw-run.json" 2> "$raw-run.log" &
    run_pid=$!
    track "$run_pid"
    # The run connects first (a fraction of a second), then warms up.
    sleep "$WARMUP"
    before=$(cpu_ticks "$COORD_PID")
    t0=$(date +%s.%N)
    sleep "$DURATION"
    after=$(cpu_ticks "$COORD_PID")
    t1=$(date +%s.%N)
    if ! wait "$run_pid"; then
        cat "$raw-run.log" >&2
        echo "the write load failed" >&2
        exit 1
    fi
    cpu=$(cpu_percent "$before" "$after" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
    writes=$(python3 -c 'import json,sys; r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print("%.0f" % (r["accepted"] / r["duration_s"]))' \
        "$raw-run.json")
    syncs=0
    errors=0
    if [[ -n "$fleet_pid" ]]; then
        if ! wait "$fleet_pid"; then
            cat "$raw-fleet.log" >&2
            echo "the fleet failed" >&2
            exit 1
        fi
        read -r syncs errors < <(python3 -c 'import json,sys; r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(r["syncs_per_s"], r["errors"])' \
            "$raw-fleet.json")
    fi
    kill -TERM "$COORD_PID" 2>/dev/null || true
    wait "$COORD_PID" 2>/dev/null || true
    cp "$dir/coordinator.log" "$raw-coordinator.log" 2>/dev/null || true
    rm -rf "$dir"
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$writes" "$cpu" "$syncs" "$errors" >> "$ROWS"
    log "$n idle stores: $writes writes/s, coordinator CPU $cpu %, $syncs syncs/s"
}

for n in "${STORE_COUNTS[@]}"; do step "$n"; done

{
    echo "idle stores ($(nproc) cores, $(uname -m)): each syncs a location nobody writes every $INTERVAL;"
    echo "write load: $RATE writes/s asked (remove 1 over $KEYS keys of location bench, $CONNECTIONS connections);"
    echo "coordinator ${COORD_BIN:-$BIN/shelfsync-coordinator}: CPU in % of one core over ${DURATION}s after ${WARMUP}s of warmup"
    printf '%8s %10s %18s %9s %12s\n' stores writes/s "coordinator CPU %" syncs/s "sync errors"
    awk -F'\t' 'NR > 1 { printf "%8s %10s %18s %9s %12s\n", $1, $2, $3, $4, $5 }' "$ROWS"
} | tee "$OUT/table.txt"
log "results in $OUT"
