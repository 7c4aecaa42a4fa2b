# Shared pieces of the benchmark scripts; sourced, not run.
#
# Provides: REPO and BIN (release binaries), log, free_port, wait_for,
# cpu_busy / require_idle (refuse a busy machine), cpu_steal_ticks, a cleanup trap that stops
# every process registered with `track PID` and removes every dir registered
# with `track_dir DIR` (also on Ctrl-C), start_coordinator / start_agent
# over a `shelfsync-loadgen setup` directory, preload_items, and the REST
# write load of agent-write.sh and compare.sh's agent row (need_wrk,
# write_remove_lua, parse_wrk).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
BUSY_LIMIT=${BUSY_LIMIT:-20}

log() { echo "== $*" >&2; }

_TRACKED_PIDS=()
_TRACKED_DIRS=()
track() { _TRACKED_PIDS+=("$1"); }
track_dir() { _TRACKED_DIRS+=("$1"); }

# Stops tracked processes (SIGTERM, then SIGKILL after 10 s) and removes
# tracked dirs. Scripts with more to undo define `extra_cleanup`.
_cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if declare -F extra_cleanup >/dev/null; then extra_cleanup || true; fi
    local pid
    for pid in "${_TRACKED_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${_TRACKED_PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    local dir
    for dir in "${_TRACKED_DIRS[@]}"; do rm -rf "$dir"; done
    exit "$code"
}
trap _cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for SECONDS COMMAND...: until the command succeeds, or fail.
wait_for() {
    local limit=$1; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then echo "timed out after ${limit}s waiting for: $*" >&2; return 1; fi
        sleep 0.2
    done
}

# CPU busy share over 3 seconds, from /proc/stat, in percent.
cpu_busy() {
    local u n s i w x y z
    read -r _ u n s i w x y z _ < /proc/stat
    local busy1=$((u + n + s + x + y + z)) total1=$((u + n + s + i + w + x + y + z))
    sleep 3
    read -r _ u n s i w x y z _ < /proc/stat
    local busy2=$((u + n + s + x + y + z)) total2=$((u + n + s + i + w + x + y + z))
    echo $(( (busy2 - busy1) * 100 / (total2 - total1 + 1) ))
}

# "STEAL TOTAL": CPU ticks the hypervisor gave other guests (steal), and
# all ticks, since boot, from /proc/stat. Two readings give the share of a
# stretch of time the machine spent on something else than this guest.
cpu_steal_ticks() {
    local u n s i w x y z
    read -r _ u n s i w x y z _ < /proc/stat
    echo "$z $((u + n + s + i + w + x + y + z))"
}

# Exits 3 when the machine is busier than BUSY_LIMIT percent.
require_idle() {
    local busy; busy=$(cpu_busy)
    if ((busy > BUSY_LIMIT)); then
        echo "refusing to benchmark: the CPUs were ${busy}% busy before the run (limit ${BUSY_LIMIT}%)." >&2
        echo "Stop what else runs here (builds, tests) and try again; the figures would not be comparable." >&2
        exit 3
    fi
    log "machine idle enough (${busy}% busy); $(nproc) cores, $(uname -m), kernel $(uname -r)"
}

# build PACKAGE...: release build of the named workspace packages.
build() {
    local args=() p
    for p in "$@"; do args+=(-p "$p"); done
    log "building (release): $*"
    (cd "$REPO" && cargo build --release -q "${args[@]}")
}

# start_coordinator DIR STORES [SETUP_FLAGS...]: writes certs and config
# for STORES load stores into DIR (with `shelfsync-loadgen setup` and any
# further SETUP_FLAGS, e.g. --fleet 100), starts a coordinator there; sets
# COORD_LISTEN, COORD_HTTP and COORD_PID. COORD_BIN names another
# coordinator binary to run, SETUP_BIN another load generator to write its
# config with (an older build's, whose config format is its coordinator's).
start_coordinator() {
    local dir=$1 stores=$2
    shift 2
    COORD_LISTEN="127.0.0.1:$(free_port)"
    COORD_HTTP="127.0.0.1:$(free_port)"
    "${SETUP_BIN:-$BIN/shelfsync-loadgen}" setup --dir "$dir" --stores "$stores" \
        --listen "$COORD_LISTEN" --http-listen "$COORD_HTTP" "$@" > "$dir.setup.txt"
    restart_coordinator "$dir"
}

# restart_coordinator DIR: starts (again) the coordinator of DIR (COORD_BIN
# as for start_coordinator).
restart_coordinator() {
    local dir=$1
    log "coordinator${COORD_BIN:+ $COORD_BIN}: QUIC $COORD_LISTEN, HTTP $COORD_HTTP"
    (cd "$dir" && exec "${COORD_BIN:-$BIN/shelfsync-coordinator}" --config "$dir/coordinator.toml") \
        >> "$dir/coordinator.log" 2>&1 &
    COORD_PID=$!
    track "$COORD_PID"
    if ! wait_for 120 curl -fsS "http://$COORD_HTTP/readyz"; then
        tail -n 30 "$dir/coordinator.log" >&2
        exit 1
    fi
}

# start_agent DIR STORE LOCATION: an agent for store STORE (a load store of
# DIR) replicating LOCATION; waits up to AGENT_READY_S (default 600) for
# its /readyz; sets AGENT_HTTP and AGENT_PID. AGENT_BIN names another
# agent binary to run.
start_agent() {
    local dir=$1 store=$2 location=$3
    AGENT_HTTP="127.0.0.1:$(free_port)"
    mkdir -p "$dir/agent-$store"
    cat > "$dir/agent-$store/agent.toml" <<TOML
store_id = "$store"
coordinator = "$COORD_LISTEN"
server_name = "localhost"
data_dir = "$dir/agent-$store/data"
http_listen = "$AGENT_HTTP"
sync_interval = "1s"
locations = ["$location"]
[tls]
ca_cert = "$dir/ca.pem"
cert = "$dir/$store.pem"
key = "$dir/$store.key"
TOML
    log "agent $store: HTTP $AGENT_HTTP"
    "${AGENT_BIN:-$BIN/shelfsync-agent}" --config "$dir/agent-$store/agent.toml" \
        >> "$dir/agent-$store/agent.log" 2>&1 &
    AGENT_PID=$!
    track "$AGENT_PID"
    if ! wait_for "${AGENT_READY_S:-600}" curl -fsS "http://$AGENT_HTTP/readyz"; then
        tail -n 30 "$dir/agent-$store/agent.log" >&2
        exit 1
    fi
}

# rss_mib PID: resident and peak resident memory in MiB, "rss peak".
rss_mib() {
    awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { printf "%.0f %.0f\n", r / 1024, h / 1024 }' \
        "/proc/$1/status"
}

# cpu_ticks PID: the CPU time (user + system, every thread) PID has used,
# in clock ticks (getconf CLK_TCK per second).
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# cpu_percent TICKS_BEFORE TICKS_AFTER SECONDS: CPU use between two
# cpu_ticks readings, in % of one core.
cpu_percent() {
    awk -v a="$1" -v b="$2" -v s="$3" -v t="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.1f", (s > 0 ? (b - a) * 100 / t / s : 0) }'
}

# preload_items DIR KEYS: creates items k000000 .. (KEYS) in location
# `bench` of the coordinator at COORD_LISTEN, as store load-1 of DIR, each
# with quantity 1,000,000,000 (enough for any run of `remove 1`); items that
# exist are fine.
preload_items() {
    local dir=$1 keys=$2
    log "creating $keys items"
    "$BIN/shelfsync-loadgen" run --coordinator "$COORD_LISTEN" --certs "$dir" \
        --connections 1 --keys "$keys" --workload delta --ops 1 --warmup 0s --preload \
        > "$dir.preload.txt"
}

# need_wrk: installs Debian's wrk when it is missing.
need_wrk() {
    command -v wrk >/dev/null && return
    log "installing wrk"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}

# write_remove_lua FILE KEYS: a wrk script whose every request is
# `POST /v1/items/bench/<random key of KEYS>/remove` with {"amount":1} and an
# Idempotency-Key of its own (unique per run, wrk thread and request), the
# write a register makes through its agent.
write_remove_lua() {
    local file=$1 keys=$2 run_id
    run_id="$(date +%s%N)-$$"
    cat > "$file" <<LUA
local counter = 0
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end
function request()
    counter = counter + 1
    local key = string.format("k%06d", math.random(0, $keys - 1))
    return wrk.format("POST", "/v1/items/bench/" .. key .. "/remove",
        { ["content-type"] = "application/json",
          ["idempotency-key"] = "wrk-$run_id-" .. thread_id .. "-" .. counter },
        '{"amount":1}')
end
LUA
}

# parse_wrk FILE: reads the output of `wrk --latency` and sets
# WRK_REQUESTS (answered requests), WRK_SECONDS (the run's length),
# WRK_NON2XX (answers other than 2xx/3xx), WRK_SOCKET_ERRORS (connect, read,
# write errors and timeouts), WRK_OK_PER_S ((requests - non-2xx) / seconds),
# WRK_P50_MS and WRK_P99_MS (latency percentiles in ms).
parse_wrk() {
    local file=$1
    # "123456 requests in 10.00s, 12.3MB read"; wrk writes 1.00m past 60 s.
    read -r WRK_REQUESTS WRK_SECONDS < <(awk '/ requests in / {
        d = $4; sub(/,$/, "", d); n = d + 0
        if (d ~ /ms$/) n /= 1000; else if (d ~ /m$/) n *= 60; else if (d ~ /h$/) n *= 3600
        print $1, n }' "$file")
    WRK_NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$file")
    WRK_NON2XX=${WRK_NON2XX:-0}
    WRK_SOCKET_ERRORS=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$file")
    WRK_SOCKET_ERRORS=${WRK_SOCKET_ERRORS:-0}
    WRK_OK_PER_S=$(awk -v r="$WRK_REQUESTS" -v e="$WRK_NON2XX" -v s="$WRK_SECONDS" \
        'BEGIN { printf "%.0f", (s > 0 ? (r - e) / s : 0) }')
    WRK_P50_MS=$(_wrk_ms "$file" 50%)
    WRK_P99_MS=$(_wrk_ms "$file" 99%)
}

# _wrk_ms FILE PERCENT: a latency percentile of wrk's distribution, in ms.
_wrk_ms() {
    awk -v p="$2" '$1 == p && NF == 2 { v = $2; n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000
        else if (v ~ /s$/) n *= 1000
        printf "%.3f\n", n; exit }' "$1"
}
