#!/usr/bin/env bash
# Resident memory of a coordinator holding 1,000,000 items, and of an agent
# replicating all of them.
#
#   scripts/bench/memory.sh [ITEMS]        (default 1000000)
#
# Starts a fresh release coordinator in a temp dir, creates ITEMS items in one
# location through shelfsync-loadgen's preload, and reads the coordinator's
# resident (VmRSS) and peak (VmHWM) memory; restarts it and reads them again
# once it is ready (the restart rebuilds the per-location digests from the
# ledger), and the coordinator's data directory on disk after those
# ITEMS writes (target: under 0.5 GB for 1,000,000). Then starts an agent replicating that location, waits until its
# bootstrap is complete (/readyz), and reads the agent's. Targets: coordinator
# under 1 GiB, agent under 512 MiB. Everything it started is stopped and
# removed on exit, Ctrl-C included.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ITEMS=${1:-1000000}
CONNECTIONS=16

build shelfsync-coordinator shelfsync-agent shelfsync-loadgen
WORK="$(mktemp -d /tmp/shelfsync-memory.XXXXXX)"
track_dir "$WORK"
start_coordinator "$WORK/c" "$CONNECTIONS"

log "preloading $ITEMS items"
started=$SECONDS
"$BIN/shelfsync-loadgen" run --coordinator "$COORD_LISTEN" --certs "$WORK/c" \
    --connections "$CONNECTIONS" --in-flight 16 --keys "$ITEMS" --preload \
    --workload delta --ops 1 --warmup 0s > /dev/null
log "preloaded in $((SECONDS - started))s"
read -r c_rss c_peak < <(rss_mib "$COORD_PID")
disk_mib() { du -sm "$1" | cut -f1; }
c_disk=$(disk_mib "$WORK/c/data")

log "restarting the coordinator"
kill -TERM "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true
restart_coordinator "$WORK/c"
read -r r_rss r_peak < <(rss_mib "$COORD_PID")
r_disk=$(disk_mib "$WORK/c/data")

log "starting an agent replicating all $ITEMS items"
started=$SECONDS
start_agent "$WORK/c" load-1 bench
log "agent bootstrapped in $((SECONDS - started))s"
count=$(curl -fsS "http://$AGENT_HTTP/v1/sync" | python3 -c 'import json,sys; print(json.load(sys.stdin)["item_count"])')
read -r a_rss a_peak < <(rss_mib "$AGENT_PID")

verdict() { if (($1 < $2)); then echo ok; else echo OVER; fi; }
printf '\n%-36s %9s %9s %9s %8s\n' "process ($(nproc) cores, $(uname -m))" "RSS MiB" "peak MiB" "target" "verdict"
printf '%-36s %9s %9s %9s %8s\n' "coordinator after loading $ITEMS" "$c_rss" "$c_peak" 1024 "$(verdict "$c_peak" 1024)"
printf '%-36s %9s %9s %9s %8s\n' "coordinator restarted with them" "$r_rss" "$r_peak" 1024 "$(verdict "$r_peak" 1024)"
printf '%-36s %9s %9s %9s %8s\n' "agent holding $count" "$a_rss" "$a_peak" 512 "$(verdict "$a_peak" 512)"
printf '\n%-36s %9s %9s %9s %8s\n' "coordinator data_dir" "MiB" "" "target" "verdict"
printf '%-36s %9s %9s %9s %8s\n' "after $ITEMS writes" "$c_disk" "" 512 "$(verdict "$c_disk" 512)"
printf '%-36s %9s %9s %9s %8s\n' "after the restart" "$r_disk" "" 512 "$(verdict "$r_disk" 512)"
