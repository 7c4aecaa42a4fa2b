#!/usr/bin/env bash
# 100 real agent processes with push, one coordinator, on this machine: the
# end-to-end test `fleet::after_writes_stop_every_replica_is_verified_within_two_seconds`
# (tests/tests/e2e/fleet.rs) at full size. It writes through every agent,
# then waits until every replica is at the coordinator's head with its
# digest confirmed, and fails past 2 s; it prints how long that took.
#
#   scripts/bench/real-agents.sh [AGENTS]     (default 100)
#
# The coordinator, the agents and shelfctl are release builds, as a chain runs them
# (SHELFSYNC_BIN_DIR=target/release); the test itself is the usual debug
# build.
set -euo pipefail
cd "$(dirname "$0")/../.."
agents="${1:-100}"
if [[ "$(ulimit -n)" -lt 4096 ]]; then ulimit -n 4096 || true; fi
cargo build --release -q -p shelfsync-coordinator -p shelfsync-agent -p shelfctl
SHELFSYNC_BIN_DIR="$PWD/target/release" SHELFSYNC_E2E_FLEET_AGENTS="$agents" cargo test -p shelfsync-tests --test e2e -- \
    --nocapture fleet::after_writes_stop_every_replica_is_verified_within_two_seconds 2>&1 |
    grep -E "replicas verified|test result|panicked"
