#!/usr/bin/env bash
# A short load-generator sweep against a fresh local coordinator.
#
#   scripts/bench/loadgen.sh [RESULTS_DIR]        (default: target/bench)
#
# Builds the release binaries, writes certificates for 64 stores and a
# coordinator config into a temp dir, starts the coordinator, waits for its
# /readyz, runs the sweep (1, 8, 32 and 64 connections, each on a UDP socket
# of its own as in compare.sh; optimistic adds over 10,000 uniformly drawn
# keys) and appends the results to
# RESULTS_DIR/loadgen.csv, redrawing RESULTS_DIR/loadgen.png from every run
# in that CSV. The coordinator is stopped and the temp dir removed on exit,
# Ctrl-C included.
#
# Environment: DURATION (default 5s) and WARMUP (default 1s) per connection
# count; LABEL names the series (default: the commit and the workload).
# Everything runs on loopback.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
results="$(realpath -m "${1:-$repo/target/bench}")"
duration="${DURATION:-5s}"
warmup="${WARMUP:-1s}"
label="${LABEL:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo local) optimistic uniform 10k}"
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

work=""
coordinator_pid=""

cleanup() {
    local status=$?
    if [[ -n "$coordinator_pid" ]] && kill -0 "$coordinator_pid" 2>/dev/null; then
        kill -TERM "$coordinator_pid" 2>/dev/null || true
        # Give it a bounded time to flush its ledger, then insist.
        for _ in $(seq 1 100); do
            kill -0 "$coordinator_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$coordinator_pid" 2>/dev/null || true
        wait "$coordinator_pid" 2>/dev/null || true
    fi
    if [[ -n "$work" ]]; then
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== building (release)" >&2
(cd "$repo" && cargo build --release -p shelfsync-loadgen -p shelfsync-coordinator)

work="$(mktemp -d "${TMPDIR:-/tmp}/shelfsync-loadgen.XXXXXX")"
echo "== setup in $work" >&2
"$bin/shelfsync-loadgen" setup --dir "$work" --stores 64 >"$work/setup.out"
listen="$(sed -n 's/^listen=//p' "$work/setup.out")"
http_listen="$(sed -n 's/^http_listen=//p' "$work/setup.out")"

echo "== starting the coordinator (QUIC $listen, HTTP $http_listen)" >&2
"$bin/shelfsync-coordinator" --config "$work/coordinator.toml" >"$work/coordinator.log" 2>&1 &
coordinator_pid=$!

ready=""
for _ in $(seq 1 300); do
    if curl -fsS --max-time 1 "http://$http_listen/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    if ! kill -0 "$coordinator_pid" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [[ -z "$ready" ]]; then
    echo "error: the coordinator did not become ready within 30 s; its log:" >&2
    tail -n 40 "$work/coordinator.log" >&2 || true
    exit 1
fi

echo "== sweep: connections 1,8,32,64; $duration each after $warmup warmup" >&2
mkdir -p "$results"
"$bin/shelfsync-loadgen" run \
    --coordinator "$listen" \
    --certs "$work" \
    --connections 1,8,32,64 \
    --sockets 64 \
    --keys 10000 \
    --distribution uniform \
    --workload optimistic \
    --duration "$duration" \
    --warmup "$warmup" \
    --preload \
    --label "$label" \
    --csv "$results/loadgen.csv" \
    --png "$results/loadgen.png"

echo "== results: $results/loadgen.csv and $results/loadgen.png" >&2
