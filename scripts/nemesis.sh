#!/usr/bin/env bash
# The fault suite as a long soak (docs/testing.md):
#
#   scripts/nemesis.sh [--duration 1h] [--seed N] [--round 5m] [--clients 9] [--agents 3] [--out DIR]
#
# Builds the binaries with failpoints compiled in (release, in a target dir
# of its own, so the benchmarks' binaries stay without them), then runs
# rounds of clients and random faults against a fresh cluster each, prints
# a summary per round and the totals, and exits 1 if any round found an
# anomaly (its seed and history directory are printed).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TARGET_DIR="${NEMESIS_TARGET_DIR:-$REPO/target/nemesis}"
echo "== building with failpoints (in $CARGO_TARGET_DIR)" >&2
cargo build --release -p shelfsync-coordinator -p shelfsync-agent -p shelfctl \
    --features shelfsync-coordinator/failpoints,shelfsync-agent/failpoints
cargo build --release -p shelfsync-tests --example nemesis
export SHELFSYNC_BIN_DIR="$CARGO_TARGET_DIR/release"
exec "$CARGO_TARGET_DIR/release/examples/nemesis" "$@"
