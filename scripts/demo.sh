#!/bin/sh
# Builds every binary and starts a local shelfsync demo cluster (see README.md):
# a coordinator, one agent per store, a seeded catalog and simulated register
# traffic, with a live status table. Ctrl-C stops it; running it again reuses
# demo/ (certificates, configs, logs, data). Arguments go to `shelfctl demo`,
# e.g. `scripts/demo.sh --stores 5`.
set -eu
cd "$(dirname "$0")/.."
cargo build --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/debug/shelfctl" demo "$@"
