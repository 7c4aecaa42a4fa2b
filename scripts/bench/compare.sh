#!/usr/bin/env bash
# Side-by-side write benchmark: shelfsync's coordinator against PostgreSQL and
# Redis, the same write at the same concurrency and key distributions, every
# write durable before its reply; optionally against an earlier build of
# shelfsync (--baseline).
#
#   scripts/bench/compare.sh [--duration SECONDS] [--clients N] [--keys K]
#                            [--rounds R] [--out DIR] [--only ENGINES]
#                            [--workloads LIST] [--lines L] [--baseline REV]
#
# What runs (per workload, on each engine, one engine after the other):
#   PostgreSQL 15 (fsync=on, synchronous_commit=on), driven by pgbench:
#     optimistic: one transaction reads the version, updates where the version
#                 still matches and inserts a change-log row (CTE);
#     delta:      UPDATE ... SET quantity = quantity - 1, version = version + 1
#                 WHERE ... AND quantity > 0, with its change-log insert;
#     hold-then-fulfil: two transactions per cart of --lines L distinct keys,
#                 each committed durably, as shelfsync commits each step of
#                 a hold: (1) SELECT ... ORDER BY sku FOR UPDATE on the L
#                 items counting those with quantity - reserved >= 1; if all
#                 have, UPDATE their reserved and version, INSERT L change-log
#                 rows and the hold row (owner, its skus, expiry), COMMIT,
#                 else ROLLBACK (a refusal); (2) lock the hold row (active,
#                 not expired) and, in sku order, its items, check reserved,
#                 UPDATE quantity, reserved and version, INSERT L change-log
#                 rows, mark the hold fulfilled, COMMIT. Not one transaction:
#                 a cart's hold and fulfil are two requests and two commits
#                 in shelfsync, with the client in between;
#     batch:      one transaction: the same locking count as the hold's, then
#                 UPDATE quantity - 1 and version on the L items and INSERT L
#                 change-log rows, COMMIT (or ROLLBACK: all or none).
#                 Locks are taken in sku order, so carts never deadlock.
#   Redis 7 (appendonly yes, appendfsync always), driven by
#     `shelfsync-loadgen redis`, one TCP connection per client; one Lua script
#     (crates/shelfsync-loadgen/src/redis.rs) checks, applies and XADDs to a
#     change stream in one call:
#     optimistic: HGET the item's version, then the script with that version
#                 as the expected one (two round trips; a version that moved
#                 in between is a conflict);
#     delta:      the script with `remove` and no version (one round trip);
#     no hold-then-fulfil or batch rows (no script of that shape).
#   shelfsync: a fresh release coordinator, driven by shelfsync-loadgen over
#     mutual-TLS QUIC, one connection per client, each a registered store
#     with a UDP socket of its own (--sockets = --clients: as pgbench's and
#     Redis's connections are a TCP socket each, and as stores are hosts of
#     their own; one shared socket made the kernel queue every client's
#     datagrams on one socket each way);
#     hold-then-fulfil: `--workload hold-then-fulfil --lines L` (a Hold
#     request creating a hold of 1 unit per line, then a Hold request
#     fulfilling it), batch: `--workload batch --lines L` (one Batch request
#     of L `remove 1` lines).
#   shelfsync-agent: a fresh release coordinator and one agent (store load-1,
#     replicating location bench), written through the agent's REST API, the
#     path registers use: wrk (Debian package `wrk`) with --clients
#     connections, each request `POST /v1/items/bench/<key>/remove` with
#     {"amount":1} and an Idempotency-Key of its own (agent-write.sh's load,
#     from lib.sh), over --keys uniformly drawn keys preloaded with
#     1,000,000,000 each. One row, uniform-rest-remove, run in the slot of
#     uniform-optimistic; its ratio is to PostgreSQL's uniform-optimistic
#     transaction of the same rounds, and its srv column is the agent's CPU
#     alone (the coordinator's behind it is in the row's raw output).
#   shelfsync@<rev> (with --baseline REV): the coordinator built from the git
#     revision REV, started, preloaded and driven exactly as the current
#     build (by the current load generator), in the same rounds, rotation
#     and workloads. REV is checked out in a git worktree under
#     target/bench/baseline-<short rev>/src and built there (release, its own
#     target dir beside it); a complete build is kept and reused. Its
#     coordinator.toml is written by REV's own `shelfsync-loadgen setup`
#     (the config format is its coordinator's) when REV has one, else by the
#     current one. Its rows' ratio column is current/baseline. Its hold and
#     batch rows need a REV whose coordinator has them (aa24476 or later).
#
# --only picks among postgres, redis, shelfsync and shelfsync-agent (all by
# default, comma-separated); the baseline runs whenever --baseline is given.
#
# Workloads: uniform-optimistic (10,000 keys), zipf-optimistic, hot-optimistic
# and hot-delta (one key), uniform-hold-then-fulfil and uniform-batch (carts
# and batches of --lines L distinct keys, default 3, drawn from the
# distribution; a key drawn twice moves on to the next one not in the cart,
# on every engine alike); for shelfsync (and the baseline) also
# uniform-optimistic opened at half the writes/s that build reached (--rate),
# for the latency at half of the peak. --workloads runs only the listed ones
# (comma-separated, DISTRIBUTION-WORKLOAD with distribution uniform, zipf or
# hot and workload optimistic, delta, hold-then-fulfil or batch); the agent
# row and the half-peak rows come with uniform-optimistic only. A cart or a
# batch is one op of its row: ok/s counts carts or batches, conflict % the
# refused ones, srv and cli µs are per cart or batch; the table's last lines
# give the item writes/s they make (2L per cart, L per batch).
#
# Rounds: the whole comparison runs --rounds times (default 3). A round
# starts every engine afresh (and preloads its keys), then runs each
# workload on every engine back to back, in an order rotated per round
# (round 1: PostgreSQL, Redis, shelfsync, [baseline,] agent; round 2: Redis,
# shelfsync, ..., PostgreSQL; ...), so the runs compared with each other lie seconds apart
# and a slow spell of a shared machine falls on every engine rather than on
# one. Before each run it waits (up to SETTLE_S, default 30 s) until the CPUs
# are quiet, so that what the previous engine still does after its run
# (checkpoints, vacuum, a ledger catching up) does not fall into it. The
# table gives, per engine and workload, the median of the rounds (each
# column on its own) and the range of ok writes/s; the ratios are of the
# medians. The srv and cli columns are CPU microseconds per answered write of
# the server (its processes, from /proc) and of the client (pgbench or the
# load generator): on a machine they share, what one spends the other
# cannot. It writes the table and every raw output under --out (default
# target/bench/compare-<time>).
#
# It refuses to report when the machine was busy before a round (CPU use over
# BUSY_LIMIT % in a sample), since the engines' figures would not be comparable.
# It also reads, per run, the share of CPU time the hypervisor gave to other
# guests (steal, from /proc/stat; the "steal" column): a round with a run
# over STEAL_LIMIT % (default 5) was measured on a machine busy with
# something else, and is run again, up to REDO_LIMIT times in all (default:
# --rounds). Its rows go to discarded.tsv; the table says how many rounds
# were run again, and when the limit is reached the last attempt is kept
# with a warning.
# Everything it starts lives in a temp dir and is stopped and removed on exit,
# also on Ctrl-C. Needs Debian's postgresql-15 and redis-server packages (the
# latter brings redis-cli); they are installed with apt-get when missing (as
# root).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
ROOT="$REPO"
DURATION=15
# Unmeasured seconds before each load generator measurement.
WARMUP=2
ROUNDS=3
CLIENTS=64
KEYS=10000
ZIPF=1.01            # pgbench's random_zipfian needs an exponent > 1
OUT=""
ONLY="postgres,redis,shelfsync,shelfsync-agent"
WORKLOADS_ARG="uniform-optimistic,zipf-optimistic,hot-optimistic,hot-delta,uniform-hold-then-fulfil,uniform-batch"
LINES=3
BASELINE=""
SETTLE_S=${SETTLE_S:-30}
STEAL_LIMIT=${STEAL_LIMIT:-5}

# The header comment above, without its leading "# ".
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --workloads) WORKLOADS_ARG="$2"; shift 2 ;;
        --lines) LINES="$2"; shift 2 ;;
        --baseline) BASELINE="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a whole number above 0" >&2; exit 2; }
REDO_LIMIT=${REDO_LIMIT:-$ROUNDS}
[[ "$REDO_LIMIT" =~ ^[0-9]+$ && "$STEAL_LIMIT" =~ ^[0-9]+$ ]] ||
    { echo "REDO_LIMIT and STEAL_LIMIT must be whole numbers" >&2; exit 2; }
for engine in ${ONLY//,/ }; do
    case "$engine" in
        postgres|redis|shelfsync|shelfsync-agent) ;;
        *) echo "--only: unknown engine $engine (known: postgres, redis, shelfsync, shelfsync-agent)" >&2
           exit 2 ;;
    esac
done
IFS=, read -r -a WORKLOADS <<< "$WORKLOADS_ARG"
[[ ${#WORKLOADS[@]} -gt 0 ]] || { echo "--workloads needs at least one workload" >&2; exit 2; }
for workload in "${WORKLOADS[@]}"; do
    [[ "$workload" =~ ^(uniform|zipf|hot)-(optimistic|delta|hold-then-fulfil|batch)$ ]] ||
        { echo "--workloads: unknown workload $workload (DISTRIBUTION-WORKLOAD, e.g. uniform-batch)" >&2
          exit 2; }
done
if ! [[ "$LINES" =~ ^[1-9][0-9]*$ ]] || ((LINES > 100 || LINES > KEYS)); then
    echo "--lines must be between 1 and 100, and at most --keys" >&2
    exit 2
fi
# has_workload NAME: whether NAME is among the workloads run.
has_workload() { [[ " ${WORKLOADS[*]} " == *" $1 "* ]]; }
# multi_key WORKLOAD: whether its ops are carts or batches of --lines keys.
multi_key() { [[ "$1" == *-hold-then-fulfil || "$1" == *-batch ]]; }
# The agent's row runs in uniform-optimistic's slot; Redis has single-key rows only.
if ! has_workload uniform-optimistic && [[ ",$ONLY," == *",shelfsync-agent,"* ]]; then
    echo "== --workloads without uniform-optimistic: no shelfsync-agent row" >&2
    ONLY=${ONLY//shelfsync-agent/}
fi
if [[ " ${WORKLOADS[*]} " != *-optimistic* && " ${WORKLOADS[*]} " != *-delta* &&
      ",$ONLY," == *",redis,"* ]]; then
    echo "== --workloads has no optimistic or delta workload: no Redis rows" >&2
    ONLY=${ONLY//redis/}
fi
# The baseline's engine name, shelfsync@<short rev>; empty without --baseline.
BASE_ENGINE=""
if [[ -n "$BASELINE" ]]; then
    BASE_REV=$(git -C "$ROOT" rev-parse --verify --quiet "$BASELINE^{commit}") ||
        { echo "--baseline: $BASELINE is not a revision of this repository" >&2; exit 2; }
    BASE_SHORT=$(git -C "$ROOT" rev-parse --short "$BASE_REV")
    BASE_ENGINE="shelfsync@$BASE_SHORT"
fi
OUT="${OUT:-$ROOT/target/bench/compare-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
wants() { [[ -n "$BASE_ENGINE" && "$1" == "$BASE_ENGINE" ]] || [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------- tools
PGBIN=/usr/lib/postgresql/15/bin
need_packages=()
wants postgres && [[ ! -x $PGBIN/postgres || ! -x $PGBIN/pgbench ]] && need_packages+=(postgresql-15)
wants redis && ! command -v redis-server >/dev/null && need_packages+=(redis-server)
if [[ ${#need_packages[@]} -gt 0 ]]; then
    log "installing ${need_packages[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi
wants shelfsync-agent && need_wrk
if wants shelfsync-agent; then
    build shelfsync-coordinator shelfsync-agent shelfsync-loadgen
elif wants shelfsync || [[ -n "$BASE_ENGINE" ]]; then
    build shelfsync-coordinator shelfsync-loadgen
elif wants redis; then
    build shelfsync-loadgen
fi
LOADGEN="$BIN/shelfsync-loadgen"

# build_baseline: the release binaries of BASE_REV, in a git worktree under
# target/bench/baseline-<short rev> with a target dir of its own; sets
# BASE_BIN (their dir) and BASE_SETUP (the load generator whose `setup`
# writes the baseline's config). A complete build (its rev in
# .../built) is reused.
build_baseline() {
    local dir="$ROOT/target/bench/baseline-$BASE_SHORT"
    local src="$dir/src" packages=(-p shelfsync-coordinator)
    BASE_BIN="$dir/target/release"
    if [[ -f "$dir/built" && "$(cat "$dir/built")" == "$BASE_REV" &&
          -x "$BASE_BIN/shelfsync-coordinator" ]]; then
        log "baseline $BASE_SHORT: reusing the build in $dir"
    else
        mkdir -p "$dir"
        rm -f "$dir/built"
        if [[ ! -e "$src/.git" ]]; then
            # A worktree whose dir was deleted by hand is still registered.
            git -C "$ROOT" worktree prune
            log "baseline $BASE_SHORT: git worktree in $src"
            git -C "$ROOT" worktree add --detach --force "$src" "$BASE_REV" >/dev/null ||
                { echo "cannot check out $BASE_REV in $src" >&2; exit 1; }
        fi
        git -C "$src" checkout --detach --force --quiet "$BASE_REV"
        [[ -d "$src/crates/shelfsync-loadgen" ]] && packages+=(-p shelfsync-loadgen)
        log "baseline $BASE_SHORT: building (release) in $src; the first time takes minutes"
        (cd "$src" && CARGO_TARGET_DIR="$dir/target" cargo build --release -q "${packages[@]}") ||
            { echo "the baseline $BASE_SHORT did not build" >&2; exit 1; }
        echo "$BASE_REV" > "$dir/built"
    fi
    if [[ -x "$BASE_BIN/shelfsync-loadgen" ]]; then
        BASE_SETUP="$BASE_BIN/shelfsync-loadgen"
    else
        log "baseline $BASE_SHORT has no load generator; its config is written by the current one"
        BASE_SETUP="$LOADGEN"
    fi
}
[[ -n "$BASE_ENGINE" ]] && build_baseline

# ---------------------------------------------------------------- cleanup
TMP="$(mktemp -d /tmp/shelfsync-compare.XXXXXX)"
chmod 755 "$TMP"
track_dir "$TMP"
PGDATA=""
# Called by lib.sh's exit trap before it stops tracked processes.
extra_cleanup() {
    if [[ -n "$PGDATA" && -f "$PGDATA/postmaster.pid" ]]; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    fi
}

# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

RESULTS="$OUT/results.tsv"
HEADER='round\tengine\tworkload\tok_per_s\tconflict_pct\tp50_ms\tp99_ms\tserver_us\tclient_us\tsteal_pct\n'
# shellcheck disable=SC2059 # the header is the format
printf "$HEADER" > "$RESULTS"
ROUND=1
# record ENGINE WORKLOAD OK/S CONFLICT% P50 P99 SERVER_US CLIENT_US STEAL%:
# one row of this round (SERVER_US, CLIENT_US: CPU microseconds per
# answered write; STEAL%: the hypervisor's share of the run's CPU time).
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$@" >> "$RESULTS"; }

# CPU used per write, by the server and by the client: on a machine they
# share, what one spends the other cannot use. The server's is read from
# /proc around the run (its process and its children, live or reaped); the
# client's from the rusage of its process.
CLK_TCK=$(getconf CLK_TCK)
SERVER_PID=""
# tree_ticks PID: CPU ticks PID and its children have used so far.
tree_ticks() {
    local ticks child
    ticks=$(awk '{ sub(/.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat")
    for child in $(pgrep -P "$1" || true); do
        ticks=$((ticks + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$child/stat" 2>/dev/null || echo 0)))
    done
    echo "$ticks"
}
# timed CMD...: runs CMD (its output where the caller sends it); its CPU
# seconds go to $TMP/client_cpu.
timed() {
    python3 -c 'import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%.3f\n" % (r.ru_utime + r.ru_stime))
sys.exit(code)' "$TMP/client_cpu" "$@"
}
# per_write SECONDS WRITES: microseconds per write.
per_write() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.0f", n ? s * 1e6 / n : 0 }'; }
SERVER_BEFORE=0
STEAL_BEFORE="0 0"
measure_start() {
    SERVER_BEFORE=$(tree_ticks "$SERVER_PID")
    STEAL_BEFORE=$(cpu_steal_ticks)
}
# measure_end: sets SERVER_S and CLIENT_S, the seconds used since
# measure_start, and STEAL_PCT, the hypervisor's share of that time.
measure_end() {
    SERVER_S=$(awk -v a="$SERVER_BEFORE" -v b="$(tree_ticks "$SERVER_PID")" -v t="$CLK_TCK" \
        'BEGIN { printf "%.3f", (b - a) / t }')
    CLIENT_S=$(cat "$TMP/client_cpu")
    # shellcheck disable=SC2086 # two numbers each
    STEAL_PCT=$(echo $STEAL_BEFORE $(cpu_steal_ticks) |
        awk '{ printf "%.1f", ($4 > $2) ? ($3 - $1) * 100 / ($4 - $2) : 0 }')
}

# Percentile (0..100) of the numbers in a file (one per line), to stdout.
percentile() {
    sort -n "$2" | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
        i = int(NR * p / 100 + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; print v[i] }'
}

# The flags of shelfsync-loadgen run for a workload: its --workload, and
# --lines for carts and batches.
workload_flags() {
    echo --workload "${1#*-}"
    if multi_key "$1"; then echo --lines "$LINES"; fi
}

# --distribution of shelfsync-loadgen for a workload.
distribution() {
    case "$1" in
        uniform-*) echo uniform ;;
        zipf-*) echo "zipf:$ZIPF" ;;
        hot-*) echo hot ;;
    esac
}

# record_loadgen ENGINE WORKLOAD FILE: one results row from the last JSON
# line shelfsync-loadgen wrote to FILE (ok/s = accepted / duration, conflict
# % = rejected / answered).
record_loadgen() {
    measure_end
    python3 - "$ROUND" "$@" "$SERVER_S" "$CLIENT_S" "$WARMUP" "$STEAL_PCT" >> "$RESULTS" <<'PY'
import json, sys
round_, engine, workload, path, server_s, client_s, warmup, steal = sys.argv[1:9]
row = json.loads(open(path).read().strip().splitlines()[-1])
rejected = sum(row["rejected"].values())
total = row["accepted"] + rejected
# The CPU covers the warm-up too, the writes only the measured part: the
# warm-up's share of the CPU is taken out pro rata.
measured = row["duration_s"] / (row["duration_s"] + float(warmup))
per = lambda s: float(s) * measured * 1e6 / total if total else 0.0
print("%s\t%s\t%s\t%.0f\t%.1f\t%.3f\t%.3f\t%.0f\t%.0f\t%s" % (
    round_, engine, workload, row["accepted"] / row["duration_s"],
    100.0 * rejected / total if total else 0.0, row["p50_ms"], row["p99_ms"],
    per(server_s), per(client_s), steal))
PY
}

# loadgen_row ENGINE ROW PID ARGS...: one measured run of the load generator
# (ARGS: its mode and options) against ENGINE's server PID, recorded as the
# row ROW; its JSON stays in r<round>-ENGINE-ROW.json.
loadgen_row() {
    local engine=$1 row=$2 file
    SERVER_PID=$3
    shift 3
    file="$OUT/r$ROUND-$engine-$row.json"
    measure_start
    timed "$LOADGEN" "$@" --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --label "$engine $row" > "$file"
    record_loadgen "$engine" "$row" "$file"
}

# ---------------------------------------------------------------- PostgreSQL
PG_PORT=""
pg_psql() { "$PGBIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U bench -d postgres -v ON_ERROR_STOP=1 "$@"; }

start_postgres() {
    PGDATA="$TMP/pg-r$ROUND"
    mkdir -p "$PGDATA" "$TMP/pgsock"
    chown -R postgres: "$PGDATA" "$TMP/pgsock" 2>/dev/null || true
    PG_PORT=$(free_port)
    log "PostgreSQL: initdb and start on 127.0.0.1:$PG_PORT (fsync on, synchronous_commit on)"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U bench --auth=trust >"$OUT/r$ROUND-postgres-initdb.log" 2>&1
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start -o \
        "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$TMP/pgsock \
         -c fsync=on -c synchronous_commit=on -c max_connections=$((CLIENTS + 20)) \
         -c shared_buffers=256MB" >/dev/null
    pg_psql <<SQL
CREATE TABLE items (
    location text NOT NULL, sku text NOT NULL, name text NOT NULL,
    quantity bigint NOT NULL, reserved bigint NOT NULL, version bigint NOT NULL,
    PRIMARY KEY (location, sku));
CREATE TABLE changes (
    seq bigserial PRIMARY KEY, location text NOT NULL, sku text NOT NULL, op text NOT NULL,
    quantity bigint NOT NULL, reserved bigint NOT NULL, version bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
CREATE TABLE holds (
    id bigserial PRIMARY KEY, owner text NOT NULL, lines text[] NOT NULL,
    expires_at timestamptz NOT NULL, state text NOT NULL DEFAULT 'active');
INSERT INTO items
    SELECT 'bench', 'k' || lpad(i::text, 6, '0'), 'Item ' || i, 1000000000, 0, 1
    FROM generate_series(0, $KEYS - 1) AS i;
VACUUM ANALYZE items;
SQL
}

# pg_keys WORKLOAD N: pgbench lines drawing the keys k1 .. kN of one op
# from WORKLOAD's distribution, each distinct: a key drawn again moves on to
# the next one (mod KEYS) not taken yet, as the load generator draws a cart.
# Line j is checked j - 1 times, enough for j - 1 taken keys in a row.
pg_keys() {
    local draw j i cond
    case "$1" in
        uniform-*) draw="random(0, $((KEYS - 1)))" ;;
        zipf-*) draw="random_zipfian(0, $((KEYS - 1)), $ZIPF)" ;;
        hot-*) draw=0 ;;
    esac
    for ((j = 1; j <= $2; j++)); do
        echo "\\set k$j $draw"
        cond=""
        for ((i = 1; i < j; i++)); do cond+="${cond:+ or }:k$j = :k$i"; done
        for ((i = 1; i < j; i++)); do
            echo "\\set k$j case when $cond then (:k$j + 1) % $KEYS else :k$j end"
        done
    done
}

# pg_skus N: the SQL list of the skus of keys k1 .. kN.
pg_skus() {
    local j list=""
    for ((j = 1; j <= $1; j++)); do list+="${list:+, }'k' || lpad(:k$j::text, 6, '0')"; done
    echo "$list"
}

# pg_script WORKLOAD: the pgbench script of WORKLOAD, to stdout.
pg_script() {
    local workload=$1
    local sku="'k' || lpad(:k1::text, 6, '0')" skus
    skus=$(pg_skus "$LINES")
    # Every line of a cart or batch locked in sku order, counting the ones
    # with a unit available: LINES when the op may go on.
    local lock_lines="SELECT count(*) AS ok FROM (SELECT quantity, reserved FROM items
    WHERE location = 'bench' AND sku IN ($skus) ORDER BY sku FOR UPDATE) AS l
    WHERE quantity - reserved >= 1 \\gset"
    case "$workload" in
        *-optimistic|*-delta) pg_keys "$workload" 1 ;;
        *) pg_keys "$workload" "$LINES" ;;
    esac
    case "$workload" in
        *-optimistic) cat <<SQL
BEGIN;
SELECT version AS v FROM items WHERE location = 'bench' AND sku = $sku \\gset
WITH u AS (UPDATE items SET quantity = quantity + 1, version = version + 1
           WHERE location = 'bench' AND sku = $sku AND version = :v
           RETURNING location, sku, quantity, reserved, version)
INSERT INTO changes (location, sku, op, quantity, reserved, version)
SELECT location, sku, 'add', quantity, reserved, version FROM u;
COMMIT;
SQL
        ;;
        *-delta) cat <<SQL
WITH u AS (UPDATE items SET quantity = quantity - 1, version = version + 1
           WHERE location = 'bench' AND sku = $sku AND quantity > 0
           RETURNING location, sku, quantity, reserved, version)
INSERT INTO changes (location, sku, op, quantity, reserved, version)
SELECT location, sku, 'remove', quantity, reserved, version FROM u;
SQL
        ;;
        *-hold-then-fulfil) cat <<SQL
BEGIN;
$lock_lines
\\if :ok = $LINES
WITH u AS (UPDATE items SET reserved = reserved + 1, version = version + 1
           WHERE location = 'bench' AND sku IN ($skus)
           RETURNING location, sku, quantity, reserved, version)
INSERT INTO changes (location, sku, op, quantity, reserved, version)
SELECT location, sku, 'hold', quantity, reserved, version FROM u;
INSERT INTO holds (owner, lines, expires_at)
    VALUES ('cart-' || :client_id, ARRAY[$skus], now() + interval '10 minutes')
    RETURNING id AS h \\gset
COMMIT;
BEGIN;
SELECT count(*) AS live FROM (SELECT 1 FROM holds
    WHERE id = :h AND state = 'active' AND expires_at > now() FOR UPDATE) AS active_hold \\gset
SELECT count(*) AS ok FROM (SELECT reserved FROM items
    WHERE location = 'bench' AND sku IN (SELECT unnest(lines) FROM holds WHERE id = :h)
    ORDER BY sku FOR UPDATE OF items) AS l
    WHERE reserved >= 1 \\gset
\\if :live = 1 and :ok = $LINES
WITH u AS (UPDATE items SET quantity = quantity - 1, reserved = reserved - 1,
                            version = version + 1
           WHERE location = 'bench'
             AND sku IN (SELECT unnest(lines) FROM holds WHERE id = :h)
           RETURNING location, sku, quantity, reserved, version)
INSERT INTO changes (location, sku, op, quantity, reserved, version)
SELECT location, sku, 'fulfil', quantity, reserved, version FROM u;
UPDATE holds SET state = 'fulfilled' WHERE id = :h;
COMMIT;
\\else
ROLLBACK;
\\endif
\\else
ROLLBACK;
\\endif
SQL
        ;;
        *-batch) cat <<SQL
BEGIN;
$lock_lines
\\if :ok = $LINES
WITH u AS (UPDATE items SET quantity = quantity - 1, version = version + 1
           WHERE location = 'bench' AND sku IN ($skus)
           RETURNING location, sku, quantity, reserved, version)
INSERT INTO changes (location, sku, op, quantity, reserved, version)
SELECT location, sku, 'remove', quantity, reserved, version FROM u;
COMMIT;
\\else
ROLLBACK;
\\endif
SQL
        ;;
    esac
}

# pg_done WORKLOAD: the SQL counting WORKLOAD's accepted ops so far: change
# rows for single writes and batches (LINES per batch), fulfilled holds.
pg_done() {
    case "$1" in
        *-hold-then-fulfil) echo "SELECT count(*) FROM holds WHERE state = 'fulfilled'" ;;
        *-batch) echo "SELECT count(*) / $LINES FROM changes" ;;
        *) echo "SELECT count(*) FROM changes" ;;
    esac
}

run_postgres() {
    local workload=$1
    local script="$TMP/$workload.sql"
    pg_script "$workload" > "$script"
    local before after
    before=$(pg_psql -tAc "$(pg_done "$workload")")
    log "PostgreSQL $workload: pgbench, $CLIENTS clients, ${DURATION}s"
    rm -f "$TMP"/pgbench_log.*
    SERVER_PID=$(head -n 1 "$PGDATA/postmaster.pid")
    measure_start
    (cd "$TMP" && timed "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PG_PORT" -U bench -c "$CLIENTS" -j 2 \
        -T "$DURATION" -f "$script" -l postgres) > "$OUT/r$ROUND-postgres-$workload.txt" 2>&1
    measure_end
    after=$(pg_psql -tAc "$(pg_done "$workload")")
    # pgbench log: client, transaction no, latency (us), script, epoch s, us.
    awk '{ print $3 / 1000 }' "$TMP"/pgbench_log.* > "$TMP/lat.txt"
    local total ok
    total=$(wc -l < "$TMP/lat.txt")
    ok=$((after - before))
    record postgres "$workload" \
        "$(awk -v n="$ok" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')" \
        "$(awk -v t="$total" -v n="$ok" 'BEGIN { printf "%.1f", t ? (t - n) * 100 / t : 0 }')" \
        "$(percentile 50 "$TMP/lat.txt")" "$(percentile 99 "$TMP/lat.txt")" \
        "$(per_write "$SERVER_S" "$total")" "$(per_write "$CLIENT_S" "$total")" "$STEAL_PCT"
}

stop_postgres() {
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null
    rm -rf "$PGDATA"
    PGDATA=""
}

# ---------------------------------------------------------------- Redis
REDIS_PORT=""
REDIS_PID=""

start_redis() {
    REDIS_PORT=$(free_port)
    rm -rf "$TMP/redis"
    mkdir -p "$TMP/redis"
    log "Redis: start on 127.0.0.1:$REDIS_PORT (appendonly yes, appendfsync always)"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$TMP/redis" --appendonly yes \
        --appendfsync always --save "" --daemonize no --logfile "$TMP/redis/redis.log" &
    REDIS_PID=$!
    track "$REDIS_PID"
    wait_for 30 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
    REDIS_COMMON=(--addr "127.0.0.1:$REDIS_PORT" --clients "$CLIENTS" --keys "$KEYS" --json)
    log "Redis: preloading $KEYS keys"
    "$LOADGEN" redis "${REDIS_COMMON[@]}" --preload --workload delta --ops 1 --warmup 0s > /dev/null
}

run_redis() {
    local workload=$1
    log "Redis $workload: shelfsync-loadgen redis, $CLIENTS clients, ${DURATION}s"
    loadgen_row redis "$workload" "$REDIS_PID" redis "${REDIS_COMMON[@]}" \
        --distribution "$(distribution "$workload")" --workload "${workload#*-}"
}

stop_redis() {
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    wait "$REDIS_PID" 2>/dev/null || true
}

# ---------------------------------------------------------------- shelfsync
# The current build is the engine `shelfsync`; with --baseline, REV's build
# is the engine $BASE_ENGINE, started and driven the same way. Per engine:
# its dir, coordinator PID and QUIC address.
declare -A SS_DIR=() SS_PID=() SS_LISTEN=()

# shelfsync_common ENGINE: sets SHELFSYNC_COMMON, the load generator's flags
# for ENGINE's coordinator.
shelfsync_common() {
    SHELFSYNC_COMMON=(--coordinator "${SS_LISTEN[$1]}" --certs "${SS_DIR[$1]}"
                      --connections "$CLIENTS" --sockets "$CLIENTS" --keys "$KEYS" --json)
}

start_shelfsync() {
    local engine=$1 dir
    dir="$TMP/${engine//@/-}-r$ROUND"
    if [[ "$engine" == "$BASE_ENGINE" ]]; then
        COORD_BIN="$BASE_BIN/shelfsync-coordinator" SETUP_BIN="$BASE_SETUP" \
            start_coordinator "$dir" "$CLIENTS"
    else
        start_coordinator "$dir" "$CLIENTS"
    fi
    SS_DIR[$engine]=$dir
    SS_PID[$engine]=$COORD_PID
    SS_LISTEN[$engine]=$COORD_LISTEN
    shelfsync_common "$engine"
    log "$engine: preloading $KEYS keys"
    "$LOADGEN" run "${SHELFSYNC_COMMON[@]}" --preload --distribution uniform --workload delta \
        --ops 1 > /dev/null
}

run_shelfsync() {
    local engine=$1 workload=$2 flags
    log "$engine $workload: shelfsync-loadgen, $CLIENTS connections, ${DURATION}s"
    shelfsync_common "$engine"
    read -r -a flags <<< "$(workload_flags "$workload")"
    loadgen_row "$engine" "$workload" "${SS_PID[$engine]}" run "${SHELFSYNC_COMMON[@]}" \
        --distribution "$(distribution "$workload")" "${flags[@]}"
}

# The latency at half of the measured peak: the uniform shape again, opened
# at half the writes/s this round's uniform run of the same build reached.
run_shelfsync_half_peak() {
    local engine=$1 half
    half=$(python3 -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["writes_per_s"] / 2))' \
        "$OUT/r$ROUND-$engine-uniform-optimistic.json")
    log "$engine uniform-optimistic at half the peak: --rate $half"
    shelfsync_common "$engine"
    loadgen_row "$engine" uniform-at-half-peak "${SS_PID[$engine]}" run "${SHELFSYNC_COMMON[@]}" \
        --distribution uniform --workload optimistic --rate "$half"
}

stop_shelfsync() {
    local engine=$1
    kill -TERM "${SS_PID[$engine]}" 2>/dev/null || true
    wait "${SS_PID[$engine]}" 2>/dev/null || true
    rm -rf "${SS_DIR[$engine]}"
}

# ---------------------------------------------------------------- shelfsync-agent
# A coordinator of its own and one agent in front of it; wrk writes through
# the agent's REST API (lib.sh's write_remove_lua, as agent-write.sh).
AGENT_WORKLOAD=uniform-rest-remove
AG_DIR=""
AG_PID=""
AG_HTTP=""
AG_COORD_PID=""

start_agent_engine() {
    AG_DIR="$TMP/agent-r$ROUND"
    start_coordinator "$AG_DIR" 1
    AG_COORD_PID=$COORD_PID
    preload_items "$AG_DIR" "$KEYS"
    AGENT_READY_S=120 start_agent "$AG_DIR" load-1 bench
    AG_PID=$AGENT_PID
    AG_HTTP=$AGENT_HTTP
    write_remove_lua "$TMP/remove.lua" "$KEYS"
}

run_agent_engine() {
    local file="$OUT/r$ROUND-shelfsync-agent-$AGENT_WORKLOAD.txt" coord_before coord_s answered
    log "shelfsync-agent $AGENT_WORKLOAD: wrk, 2 threads, $CLIENTS connections, ${DURATION}s"
    SERVER_PID=$AG_PID
    coord_before=$(tree_ticks "$AG_COORD_PID")
    measure_start
    timed wrk -t 2 -c "$CLIENTS" -d "${DURATION}s" --latency -s "$TMP/remove.lua" \
        "http://$AG_HTTP" > "$file" 2>&1
    measure_end
    coord_s=$(awk -v a="$coord_before" -v b="$(tree_ticks "$AG_COORD_PID")" -v t="$CLK_TCK" \
        'BEGIN { printf "%.3f", (b - a) / t }')
    parse_wrk "$file"
    answered=$WRK_REQUESTS
    {
        echo
        echo "answered $answered, non-2xx $WRK_NON2XX, socket errors $WRK_SOCKET_ERRORS"
        echo "CPU us per answered write: agent $(per_write "$SERVER_S" "$answered")," \
            "coordinator $(per_write "$coord_s" "$answered"), wrk $(per_write "$CLIENT_S" "$answered")"
    } >> "$file"
    record shelfsync-agent "$AGENT_WORKLOAD" "$WRK_OK_PER_S" \
        "$(awk -v t="$answered" -v e="$WRK_NON2XX" 'BEGIN { printf "%.1f", t ? e * 100 / t : 0 }')" \
        "$WRK_P50_MS" "$WRK_P99_MS" "$(per_write "$SERVER_S" "$answered")" \
        "$(per_write "$CLIENT_S" "$answered")" "$STEAL_PCT"
}

stop_agent_engine() {
    local pid
    for pid in "$AG_PID" "$AG_COORD_PID"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$AG_DIR"
}

# ---------------------------------------------------------------- engines
start_engine() {
    case "$1" in
        postgres) start_postgres ;;
        redis) start_redis ;;
        shelfsync-agent) start_agent_engine ;;
        *) start_shelfsync "$1" ;;
    esac
}

run_engine() {
    case "$1" in
        postgres) run_postgres "$2" ;;
        redis) run_redis "$2" ;;
        shelfsync-agent) run_agent_engine ;;
        *) run_shelfsync "$1" "$2" ;;
    esac
}

stop_engine() {
    case "$1" in
        postgres) stop_postgres ;;
        redis) stop_redis ;;
        shelfsync-agent) stop_agent_engine ;;
        *) stop_shelfsync "$1" ;;
    esac
}

# ---------------------------------------------------------------- rounds
# Waits (up to SETTLE_S) until the CPUs are quiet again, so that what one
# engine still does after its run (PostgreSQL's checkpointer and autovacuum,
# the coordinator's ledger catching up) does not fall into the next run.
settle() {
    local deadline=$((SECONDS + SETTLE_S)) busy
    while busy=$(cpu_busy) && ((busy > BUSY_LIMIT)); do
        if ((SECONDS >= deadline)); then
            log "CPUs still ${busy}% busy after ${SETTLE_S}s; going on (see the range column)"
            return
        fi
    done
}

# discard_round: moves this round's rows to discarded.tsv and its raw
# output to discarded/<attempt>/, so that the round can run again.
DISCARDED="$OUT/discarded.tsv"
discard_round() {
    # shellcheck disable=SC2059 # the header is the format
    [[ -f "$DISCARDED" ]] || printf "$HEADER" > "$DISCARDED"
    awk -F'\t' -v r="$ROUND" 'NR > 1 && $1 == r' "$RESULTS" >> "$DISCARDED"
    awk -F'\t' -v r="$ROUND" 'NR == 1 || $1 != r' "$RESULTS" > "$TMP/results.tsv"
    cp "$TMP/results.tsv" "$RESULTS"
    mkdir -p "$OUT/discarded/$REDONE"
    mv "$OUT/r$ROUND"-* "$OUT/discarded/$REDONE/" 2>/dev/null || true
}

ENGINES=(postgres redis shelfsync)
[[ -n "$BASE_ENGINE" ]] && ENGINES+=("$BASE_ENGINE")
ENGINES+=(shelfsync-agent)
# The builds with a half-peak row (after their uniform-optimistic one).
HALF_PEAK=()
if has_workload uniform-optimistic; then
    wants shelfsync && HALF_PEAK+=(shelfsync)
    [[ -n "$BASE_ENGINE" ]] && HALF_PEAK+=("$BASE_ENGINE")
fi
REDONE=0
DISTURBED_KEPT=""
ROUND=1
while ((ROUND <= ROUNDS)); do
    require_idle
    for engine in "${ENGINES[@]}"; do
        if wants "$engine"; then start_engine "$engine"; fi
    done
    for workload in "${WORKLOADS[@]}"; do
        for ((i = 0; i < ${#ENGINES[@]}; i++)); do
            engine=${ENGINES[$(((i + ROUND - 1) % ${#ENGINES[@]}))]}
            wants "$engine" || continue
            # The agent has one row, run beside the uniform ones.
            [[ "$engine" == shelfsync-agent && "$workload" != uniform-optimistic ]] && continue
            # Redis has no script for carts and batches.
            [[ "$engine" == redis ]] && multi_key "$workload" && continue
            settle
            log "round $ROUND of $ROUNDS, $workload: $engine"
            run_engine "$engine" "$workload"
        done
    done
    for ((i = 0; i < ${#HALF_PEAK[@]}; i++)); do
        engine=${HALF_PEAK[$(((i + ROUND - 1) % ${#HALF_PEAK[@]}))]}
        settle
        run_shelfsync_half_peak "$engine"
    done
    for engine in "${ENGINES[@]}"; do
        if wants "$engine"; then stop_engine "$engine"; fi
    done
    # The run of this round with the most steal: "PERCENT ENGINE WORKLOAD".
    read -r steal worst_engine worst_workload < <(awk -F'\t' -v r="$ROUND" \
        'NR > 1 && $1 == r && $10 + 0 >= m { m = $10 + 0; w = $2 " " $3 } END { print m + 0, w }' \
        "$RESULTS")
    if awk -v s="$steal" -v l="$STEAL_LIMIT" 'BEGIN { exit !(s > l) }'; then
        what="the hypervisor took ${steal}% of the CPU time during $worst_engine $worst_workload (STEAL_LIMIT ${STEAL_LIMIT}%)"
        if ((REDONE < REDO_LIMIT)); then
            log "round $ROUND: $what; running the round again"
            discard_round
            REDONE=$((REDONE + 1))
            continue
        fi
        log "round $ROUND: $what; REDO_LIMIT ($REDO_LIMIT) reached, keeping it"
        DISTURBED_KEPT="$DISTURBED_KEPT $ROUND"
    fi
    ROUND=$((ROUND + 1))
done

# ---------------------------------------------------------------- report
python3 - "$RESULTS" "$ROUNDS" "$REDONE" "$DISTURBED_KEPT" "$STEAL_LIMIT" "$BASE_ENGINE" \
    "$AGENT_WORKLOAD" "$LINES" <<'PY' | tee "$OUT/table.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
groups = {}
for r in rows:
    groups.setdefault((r["engine"], r["workload"]), []).append(r)
def median(key, rs):
    return statistics.median(float(r[key]) for r in rs)
ours = {w: median("ok_per_s", rs) for (e, w), rs in groups.items() if e == "shelfsync"}
redone, kept, limit = int(sys.argv[3]), sys.argv[4].split(), sys.argv[5]
base, agent_workload = sys.argv[6], sys.argv[7]
AGENT = "shelfsync-agent"
# The agent's row is set against PostgreSQL's optimistic transaction.
AGENT_PEER = ("postgres", "uniform-optimistic")
def ratio_of(engine, workload, ok_of):
    """The ratio column of a row: (numerator, denominator) from ok_of(engine, workload)."""
    if engine == "shelfsync":
        return None
    if engine == AGENT:
        return ok_of(AGENT, workload), ok_of(*AGENT_PEER)
    return ok_of("shelfsync", workload), ok_of(engine, workload)
def fmt(pair):
    if pair is None or pair[0] is None or not pair[1]:
        return ""
    return "%.2fx" % (pair[0] / pair[1])
medians = {k: median("ok_per_s", rs) for k, rs in groups.items()}
print("median of %s round(s) per row; ratios are of the medians" % sys.argv[2])
if redone:
    print("%d round(s) run again: the hypervisor took over %s%% of the CPU time during a run"
          " (discarded.tsv)" % (redone, limit))
if kept:
    print("WARNING: round(s) %s kept with a run over %s%% steal (REDO_LIMIT reached):"
          " the machine was busy with something else" % (", ".join(kept), limit))
legend = "ratio: shelfsync/engine on the PostgreSQL and Redis rows"
if base:
    legend += "; current/baseline on the %s rows" % base
if any(e == AGENT for e, _ in groups):
    legend += ("; on the %s row, its ok/s over PostgreSQL's uniform-optimistic"
               " (srv: the agent's CPU)" % AGENT)
print(legend)
print("%-18s %-24s %10s %15s %9s %9s %9s %9s %9s %9s %6s" % (
    "engine", "workload", "ok/s", "ok/s range", "conflict", "p50 ms", "p99 ms", "ratio",
    "srv us/w", "cli us/w", "steal"))
for (engine, workload), rs in groups.items():
    ok = medians[(engine, workload)]
    spread = "%.0f-%.0f" % (min(float(r["ok_per_s"]) for r in rs),
                            max(float(r["ok_per_s"]) for r in rs))
    ratio = fmt(ratio_of(engine, workload, lambda e, w: medians.get((e, w))))
    print("%-18s %-24s %10.0f %15s %8.1f%% %9.3f %9.3f %9s %9.0f %9.0f %5.1f%%" % (
        engine, workload, ok, spread, median("conflict_pct", rs),
        median("p50_ms", rs), median("p99_ms", rs), ratio,
        median("server_us", rs), median("client_us", rs), median("steal_pct", rs)))
# The same ratios round by round: each pairs runs of one round.
by_round = {(r["engine"], r["workload"], r["round"]): float(r["ok_per_s"]) for r in rows}
lines = []
for (engine, workload), rs in groups.items():
    if engine == "shelfsync":
        continue
    ratios = []
    for r in rs:
        ratio = fmt(ratio_of(engine, workload, lambda e, w: by_round.get((e, w, r["round"]))))
        if ratio:
            ratios.append(ratio)
    if ratios:
        lines.append("  %-18s %-24s %s" % (engine, workload, " ".join(ratios)))
if lines:
    print("the ratio column round by round:")
    print("\n".join(lines))
# Carts and batches: one op is several item writes.
cart_lines = int(sys.argv[8])
def writes_per_op(workload):
    if workload.endswith("-hold-then-fulfil"):
        return 2 * cart_lines
    if workload.endswith("-batch"):
        return cart_lines
    return None
multi = [(e, w) for (e, w) in groups if writes_per_op(w)]
if multi:
    print("carts (hold, then fulfil: %d item writes, two commits) and batches (%d item"
          " writes, one commit) of %d lines: ok/s counts them, srv and cli us are per"
          " cart or batch; in item writes/s:" % (2 * cart_lines, cart_lines, cart_lines))
    for engine, workload in multi:
        print("  %-18s %-24s %10.0f" % (
            engine, workload, medians[(engine, workload)] * writes_per_op(workload)))
PY
log "results in $OUT"
